"""Attack (partner): be answered under an agreement that is not in force: expired, not yet
valid, or revoked by the partner itself (to keep asking under terms it walked away from).

Tried against live hub B on a ManualClock (the partner signs on the same clock, so only the
agreement's validity decides): X valid one day (daily pm25 means), Y valid from day 2 for a
year (hourly pm10 means). At day 0 Y's hourly question (not yet valid); at day 2 X's daily
question (expired); then the partner alone revokes Y and asks Y's question again.
RESULT: HELD. Every question outside an agreement's life is PERMISSION_DENIED naming the
state ("is pending", "is expired", "is revoked"), no quota is charged for it, and exactly the
two questions inside a live agreement are answered.
"""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from attack_helpers import DAY, HOUR_MS, day_query, terms_toml
from conftest import make_hub_dir, start_live_hub
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from query_helpers import RUN_METHOD

from federation import envelope, partners, sealing
from federation.partner_client import PartnerSession
from federation.query import asker
from node import senml
from node.api.v1 import admin_pb2, ingest_pb2, query_service_pb2_grpc
from node.clock import ManualClock, SystemClock, utc_day

pytestmark = pytest.mark.asyncio


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).replace(microsecond=0).isoformat()


async def test_no_question_is_answered_outside_an_agreements_life(tmp_path):
    clock = ManualClock(SystemClock().now_ms())
    t0 = clock.now_ms()
    live = await start_live_hub(make_hub_dir(tmp_path / "bergen", "4601"), clock=clock)
    try:
        hub_id, address = live.hub.config.hub_id, live.hub.endpoint.grpc_address
        partner = partners.PartnerKey(Ed25519PrivateKey.generate(), "Angriper AS")
        await live.admin.AddPartner(admin_pb2.AddPartnerRequest(name=partner.name, org_number="971564679",
                                                                public_key_file=partners.public_document(partner)),
                                    metadata=live.admin_metadata)
        sensor = await live.add_sensor(tmp_path, "station", metrics=["pm25", "pm10"])
        frames = sensor.seal([[senml.Reading(m, DAY + h * HOUR_MS, 9.0) for h in range(24) for m in ("pm25", "pm10")]])
        await live.ingest.SubmitBatch(ingest_pb2.SubmitBatchRequest(frames=[ingest_pb2.SealedFrame(frame=f) for f in frames]))

        x_terms = terms_toml(until=dt.datetime.fromtimestamp((t0 + 86_400_000) / 1000, dt.UTC).replace(microsecond=0))
        y_terms = terms_toml(smallest_bucket="hour", metrics=["pm10"]).replace('from = "now"', f"from = {_iso(t0 + 2 * 86_400_000)}")
        ids = {}
        async with PartnerSession(partner, address, hub_id, clock=clock) as session:
            for name, terms in (("x", x_terms), ("y", y_terms)):
                proposal = await live.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(to=partner.partner_id, terms_toml=terms),
                                                             metadata=live.admin_metadata)
                ids[name] = proposal.terms.agreement_id
                await session.accept(ids[name])

            async def ask(**fields):
                key = sealing.new_answer_key()
                query = day_query(hub_ids=[hub_id], answer_key=sealing.public_raw(key), **fields)
                request = envelope.make(partner.key, partner.partner_id, hub_id, RUN_METHOD, clock=clock, query=query)
                answer = await query_service_pb2_grpc.QueryStub(session.channel).Run(request, timeout=20)
                return asker.open_answer(answer, key, partner.public_key)

            async def refused(state: str, **fields):
                used = await _used(live, ids.values())
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await ask(**fields)
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, denied.value.details()
                assert state in denied.value.details(), denied.value.details()
                assert await _used(live, ids.values()) == used

            assert [r.value for r in (await ask(bucket="day")).rows] == [9.0]  # X, in force
            await refused(f"{ids['y']} is pending", bucket="hour", metric="pm10")
            clock.advance(2 * 86_400 + 60)
            await refused(f"{ids['x']} is expired", bucket="day")
            assert len((await ask(bucket="hour", metric="pm10")).rows) == 24  # Y, in force
            await session.revoke(ids["y"], "the partner walks away")
            await refused(f"{ids['y']} is revoked", bucket="hour", metric="pm10")
    finally:
        await live.stop()


async def _used(live, agreement_ids) -> int:
    day = utc_day(live.hub.clock.now_ms())
    total = 0
    for aid in agreement_ids:
        total += (await live.hub.storage.read(lambda s, aid=aid: s.quota_used(aid, day)))[0]
    return total
