"""Attack (neighbour hub C, a pinned peer of B with no agreement of its own): get B's data.

Tried against live hub B, which has an agreement with a partner but none with C:
1. C asks B (Query.Run) with its own hub identity, as if it were the partner;
2. C relays its own query to B on Query.Partial, and has entry hub A relay it;
3. C signs a query naming the partner as caller (with C's key);
4. the partner calls Query.Partial itself (to skip the entry hub's checks);
5. C fetches B's agreements (ExchangeAgreements) to read B's terms with the partner;
6. C calls B's admin API (ListSensors, RunQuery) to read B's sensors or ask as B.
RESULT: HELD. 1, 2 and 4: PERMISSION_DENIED ("no agreement with C", "only a peer hub may
relay"); 3 and 6: UNAUTHENTICATED; 5 returns no agreement document of B's with the partner
(0 of 1). No partial of B's data was computed for C (B's audit shows only refusals).
"""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio
from attack_helpers import day_query, region, terms_toml
from query_helpers import PARTIAL_METHOD, asked, relay, signed

from federation import envelope
from federation.outbox import EXCHANGE_METHOD
from node.api.v1 import admin_pb2, admin_pb2_grpc, agreement_pb2

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    async with region(tmp_path_factory.mktemp("neighbour"), terms_toml(), {1: [[9.0] * 24]}) as r:
        yield r


async def _refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == code, refused.value.details()
    return refused.value.details()


async def _partials_computed(node) -> list[dict]:
    return [e for e in await node.audit_after(0) if e["action"] == "query.partial" and e["outcome"] == "ok"]


async def test_a_hub_without_an_agreement_gets_nothing_of_its_neighbours_data(attacked):
    a, b, c = attacked.hubs
    mine = day_query(hub_ids=[b.id])
    details = await _refused(b.query.Run(asked(c.key, c.id, b, mine), timeout=10), grpc.StatusCode.PERMISSION_DENIED)
    assert f"no agreement with {c.id}" in details
    own = asked(c.key, c.id, c, mine)  # C as its own entry hub, relaying to B
    details = await _refused(b.query.Partial(relay(c, b, own), timeout=10), grpc.StatusCode.PERMISSION_DENIED)
    assert f"no agreement with {c.id}" in details
    # C asks entry hub A, which relays to B: B refuses C there too
    await _refused(a.query.Run(asked(c.key, c.id, a, mine), timeout=10), grpc.StatusCode.PERMISSION_DENIED)
    assert all(e["actor"] != c.id for e in await _partials_computed(b))


async def test_a_hub_cannot_ask_under_the_partners_name(attacked):
    _a, b, c = attacked.hubs
    forged = asked(c.key, attacked.partner.partner_id, b, day_query(hub_ids=[b.id]))
    details = await _refused(b.query.Run(forged, timeout=10), grpc.StatusCode.UNAUTHENTICATED)
    assert "signature does not verify" in details


async def test_a_partner_cannot_call_partial_itself(attacked):
    _a, b, _c = attacked.hubs
    partner = attacked.partner
    original = asked(partner.key, partner.partner_id, b, day_query())
    wrapped = signed(partner.key, partner.partner_id, b.id, PARTIAL_METHOD, relayed=original)
    details = await _refused(b.query.Partial(wrapped, timeout=10), grpc.StatusCode.PERMISSION_DENIED)
    assert "only a peer hub may relay" in details


async def test_a_hub_reads_none_of_its_neighbours_agreements_with_others(attacked):
    _a, b, c = attacked.hubs
    request = envelope.make(c.key, c.id, b.id, EXCHANGE_METHOD, agreement_exchange=agreement_pb2.AgreementExchange())
    response = await b.exchange(request)
    held = list(response.documents.documents)
    assert held == [], f"C read {len(held)} of B's agreements"
    assert attacked.agreements[b.id] in await b.stored()  # B does hold one, with the partner


async def test_a_hub_cannot_use_its_neighbours_admin_api(attacked):
    _a, b, c = attacked.hubs
    stub = admin_pb2_grpc.AdminStub(b.channel)  # the peer's pinned channel to B, no admin token
    await _refused(stub.ListSensors(admin_pb2.ListSensorsRequest(), timeout=10), grpc.StatusCode.UNAUTHENTICATED)
    await _refused(stub.RunQuery(day_query(), timeout=10), grpc.StatusCode.UNAUTHENTICATED)
    hub_token = (("authorization", f"Bearer {c.live.hub.config.hub_id}"),)  # anything C knows of itself
    await _refused(stub.ListSensors(admin_pb2.ListSensorsRequest(), metadata=hub_token, timeout=10), grpc.StatusCode.UNAUTHENTICATED)
