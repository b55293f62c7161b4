"""Attack (partner): count households that never consented to the agreement's purpose.

Tried, against a live hub with twenty household electricity meters (personal data), one
reading each per hour for three days: households c1-c10 consented to `research`, n1-n10 only
to `commercial_development`; the partner's agreement is for research (consent required, k = 2,
lifetime epsilon 10, at most 1 reading per household and cell). The partner asks the daily
count with epsilon 5 (3 cells: the query's noise is calibrated to all of them, count scale
3/3.75 = 0.8 a cell), then c1-c5 withdraw their research consent and the partner asks again
with the remaining epsilon 5.
RESULT: HELD. The released daily counts average about 10, then about 5 (the ten households of
another purpose are not counted; with consent ignored they average 20, then 20: the mutation
this test catches); a third question is refused (RESOURCE_EXHAUSTED: the lifetime budget is
spent). The test allows +- 3: the mean of three cells has a standard error of about 0.65, and
the wrong answers are 10 and 15 away. (Ten households per side, not one: telling one
household's presence apart is what the noise is for.)
"""

from __future__ import annotations

import statistics

import grpc
import pytest
from conftest import make_hub_dir, start_live_hub
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from query_helpers import HOUR_MS, spec, terms_toml

from federation import partners
from federation.partner_client import PartnerSession
from federation.query import asker
from node.api.v1 import admin_pb2, ingest_pb2
from node.clock import SystemClock
from node.senml import Reading

pytestmark = pytest.mark.asyncio
DAY_MS = 24 * HOUR_MS
TERMS = terms_toml(purpose="research", datasets=["electricity"], metrics=["energy"], aggregates=["count"],
                   smallest_bucket="hour", min_group_size=2, consent_required=True, dp_epsilon=10.0, dp_max_contributions=1)


async def test_only_households_consenting_to_the_purpose_are_counted(tmp_path):
    live = await start_live_hub(make_hub_dir(tmp_path / "bergen", "4601"))
    try:
        admin = live.admin_metadata
        start = (SystemClock().now_ms() // DAY_MS - 5) * DAY_MS  # recent: inside the dataset's retention
        for house in [f"c{i}" for i in range(1, 11)] + [f"n{i}" for i in range(1, 11)]:
            meter = await live.add_sensor(tmp_path, f"meter-{house}", dataset="electricity", metrics=["energy"], subject_id=house)
            frames = meter.seal([[Reading("energy", start + h * HOUR_MS, 0.5) for h in range(72)]])
            await live.ingest.SubmitBatch(ingest_pb2.SubmitBatchRequest(frames=[ingest_pb2.SealedFrame(frame=f) for f in frames]))
            purpose = "commercial_development" if house.startswith("n") else "research"
            await live.admin.GrantConsent(admin_pb2.ConsentRequest(subject_id=house, purpose_code=purpose), metadata=admin)
        partner = partners.PartnerKey(Ed25519PrivateKey.generate(), "Angriper AS")
        await live.admin.AddPartner(admin_pb2.AddPartnerRequest(name=partner.name, org_number="971564679",
                                                                public_key_file=partners.public_document(partner)), metadata=admin)
        hub_id, address = live.hub.config.hub_id, live.hub.endpoint.grpc_address
        proposal = await live.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(to=partner.partner_id, terms_toml=TERMS),
                                                     metadata=admin)
        query = spec(dataset="electricity", metric="energy", aggregate="count", bucket="day", group_by="municipality",
                     start_ms=start, end_ms=start + 3 * DAY_MS, purpose_code="research", epsilon=5.0, hub_ids=[hub_id])
        async with PartnerSession(partner, address, hub_id) as session:
            await session.accept(proposal.terms.agreement_id)

            async def mean_count() -> float:
                answer = await asker.ask(session.channel, partner.key, partner.partner_id, hub_id, query)
                released = [r.value for r in answer.rows if not r.suppressed]
                assert all(r.noisy for r in answer.rows if not r.suppressed) and len(released) >= 1, len(released)
                return statistics.fmean(released)

            assert abs(await mean_count() - 10.0) < 3.0  # n1-n10's readings (another purpose) are not counted
            for house in ("c1", "c2", "c3", "c4", "c5"):
                await live.admin.WithdrawConsent(admin_pb2.ConsentRequest(subject_id=house, purpose_code="research"), metadata=admin)
            assert abs(await mean_count() - 5.0) < 3.0  # the withdrawals take effect at once
            with pytest.raises(grpc.aio.AioRpcError) as spent:
                await asker.ask(session.channel, partner.key, partner.partner_id, hub_id, query)
            assert spent.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, spent.value.details()
    finally:
        await live.stop()
