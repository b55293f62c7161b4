"""Issue 9, attack 6: agreement lineage rolled back by one side, against a live hub process.

Tried: the hub grants the partner wide terms (v1: hourly means); both sign v2 superseding v1
with narrower terms (monthly means only); then the partner alone revokes v2, with its own key
over gRPC, and asks v1's hourly question. Before: v1 became active again and the hourly means
were answered. Now: v1 stays superseded on both sides, the revocation ends the line, and the
hourly question (and v2's monthly one) is refused: recovered nothing."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio

from federation import partners, peers
from federation.partner_client import PartnerSession
from federation.query import asker
from node.api.v1 import agreement_pb2, query_pb2
from node.senml import Reading
from tests.conftest import PASSPHRASE
from tests.query_helpers import DAY_MS, HOUR_MS, ms, terms_toml
from tests.region_helpers import enrol, offer_to_partner, send, start_region, stop_region

pytestmark = pytest.mark.asyncio(loop_scope="module")
JAN = ms(2019, 1, 1)
State = agreement_pb2.AgreementState


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("privacy-supersession")
    [hub] = await start_region(base, (("bergen", "4601"),))
    try:
        station = await enrol(hub, base, "station", "air_quality", ["pm25"])
        await send(station, [Reading("pm25", JAN + h * HOUR_MS, 5.0 + h % 7) for h in range(48)])
        yield hub, partners.keygen(base / "uis.key", "Universitetet i Stavanger", PASSPHRASE.encode())
    finally:
        await stop_region([hub])


async def test_revoking_the_newer_version_never_reactivates_the_older(world):
    hub, partner = world
    v1 = await offer_to_partner(hub, partner, terms_toml(smallest_bucket="hour"))
    v2 = await offer_to_partner(hub, partner, f'version = 2\nsupersedes = "{v1}"\n' + terms_toml(smallest_bucket="month"))
    assert await hub.state_of(v1) == State.AGREEMENT_STATE_SUPERSEDED

    async with PartnerSession(partner, hub.address, hub.hub_id) as session:
        outcome = await session.revoke(v2, "the partner alone")
        assert outcome.state == State.AGREEMENT_STATE_REVOKED, outcome
    assert (await hub.state_of(v1), await hub.state_of(v2)) == (State.AGREEMENT_STATE_SUPERSEDED, State.AGREEMENT_STATE_REVOKED)

    channel = peers.channel_to(hub.address, hub.hub_id, hub.hub_dir.tls_cert_pem())
    refusals = {}
    try:
        for bucket, end in (("hour", JAN + DAY_MS), ("month", ms(2019, 2, 1))):
            spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=JAN, end_ms=end, bucket=bucket,
                                       group_by="municipality", purpose_code="environmental_monitoring", hub_ids=[hub.hub_id])
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asker.ask(channel, partner.key, partner.partner_id, hub.hub_id, spec)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
            refusals[bucket] = refused.value.details()
    finally:
        await channel.close()
    assert f"{v1} is superseded" in refusals["hour"] and f"{v2} is revoked" in refusals["hour"], refusals["hour"]
    print(f"\nattack 6: after the partner alone revoked v2, v1's hourly means and v2's monthly means: 0 of 2 answered "
          f"({refusals['hour']})")


async def test_the_partners_own_view_shows_the_superseded_version_as_superseded(world):
    hub, partner = world
    v1 = await offer_to_partner(hub, partner, terms_toml(purpose="research", smallest_bucket="hour"))
    v2 = await offer_to_partner(hub, partner, f'version = 2\nsupersedes = "{v1}"\n' + terms_toml(purpose="research"))
    async with PartnerSession(partner, hub.address, hub.hub_id) as session:
        held = {h.evidence.agreement_id: h.state for h in await session.agreements()}
    assert await hub.state_of(v1) == State.AGREEMENT_STATE_SUPERSEDED
    assert (held[v1], held[v2]) == (State.AGREEMENT_STATE_SUPERSEDED, State.AGREEMENT_STATE_ACTIVE)
