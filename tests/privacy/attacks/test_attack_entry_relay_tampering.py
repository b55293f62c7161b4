"""Attack (entry hub A, relaying a partner's signed query to provider B on Query.Partial):
alter the query in transit, replay it, keep it for later, or pass on a query the partner
addressed to another hub; each to get a fresh answer or to spend the partner's quota at B.

Tried, each against live hub B, counting B's quota for the partner's agreement:
1. the partner's query edited in transit, its signature kept: bucket day -> hour, the answer
   key swapped for A's own, the hub filter widened, epsilon set;
2. the same relayed query sent twice;
3. a query the partner signed six minutes ago (held back by A), and one dated ten minutes
   ahead;
4. a query the partner addressed to entry hub C, relayed by A;
5. the partner's own request sent straight to B's Query.Run by A (as if from the partner).
RESULT: HELD. 1, 3, 4 and 5 are UNAUTHENTICATED; 2 gets the first answer back byte for byte
(kept for retries: no fresh noise, no new release); B charged exactly one query (the first of
2), and no partial was computed for any other.
"""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio
from attack_helpers import day_query, region, terms_toml
from query_helpers import RUN_METHOD, relay

from federation import envelope, sealing
from node.api.v1 import envelope_pb2, query_service_pb2_grpc
from node.clock import ManualClock, SystemClock, utc_day

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    async with region(tmp_path_factory.mktemp("relay"), terms_toml(), {1: [[9.0] * 24]}) as r:
        yield r


async def _used(r, node) -> int:
    day = utc_day(node.live.hub.clock.now_ms())
    return (await node.live.hub.storage.read(lambda s: s.quota_used(r.agreements[node.id], day)))[0]


def _signed(r, audience: str, clock=None, **fields) -> envelope_pb2.SignedRequest:
    return envelope.make(r.partner.key, r.partner.partner_id, audience, RUN_METHOD, clock=clock or SystemClock(),
                         query=day_query(**fields))


def _edited(original: envelope_pb2.SignedRequest, edit) -> envelope_pb2.SignedRequest:
    request = envelope_pb2.Request.FromString(original.payload)
    edit(request.query)
    return envelope_pb2.SignedRequest(payload=request.SerializeToString(), signature=original.signature)


async def _refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == code, refused.value.details()
    return refused.value.details()


async def test_an_edited_query_is_refused_and_charges_nothing(attacked):
    a, b, _c = attacked.hubs
    edits = {
        "bucket": lambda q: setattr(q, "bucket", "hour"),
        "answer key": lambda q: setattr(q, "answer_key", sealing.public_raw(sealing.new_answer_key())),
        "hub filter": lambda q: q.hub_ids.append(b.id),
        "epsilon": lambda q: setattr(q, "epsilon", 1.0),
    }
    before = await _used(attacked, b)
    for name, edit in edits.items():
        original = _signed(attacked, a.id, hub_ids=[a.id])
        details = await _refused(b.query.Partial(relay(a, b, _edited(original, edit)), timeout=10), grpc.StatusCode.UNAUTHENTICATED)
        assert "signature does not verify" in details, (name, details)
    assert await _used(attacked, b) == before


async def test_a_relayed_query_is_answered_once(attacked):
    a, b, _c = attacked.hubs
    before = await _used(attacked, b)
    original = _signed(attacked, a.id)
    first = await b.query.Partial(relay(a, b, original), timeout=10)
    # Relayed again (a retry after a lost answer, or an entry hub hoping for fresh noise): the
    # provider hands back the answer it kept, byte for byte, and charges nothing more.
    again = await b.query.Partial(relay(a, b, original), timeout=10)
    assert again.SerializeToString() == first.SerializeToString()
    assert await _used(attacked, b) == before + 1


async def test_a_query_held_back_or_dated_ahead_is_refused(attacked):
    a, b, _c = attacked.hubs
    now = SystemClock().now_ms()
    before = await _used(attacked, b)
    for issued in (now - 6 * 60_000, now + 10 * 60_000):
        original = _signed(attacked, a.id, clock=ManualClock(issued))
        details = await _refused(b.query.Partial(relay(a, b, original), timeout=10), grpc.StatusCode.UNAUTHENTICATED)
        assert "more than 5 minutes" in details
    assert await _used(attacked, b) == before


async def test_a_query_addressed_to_another_entry_hub_is_refused(attacked):
    a, b, c = attacked.hubs
    before = await _used(attacked, b)
    original = _signed(attacked, c.id)  # the partner asked C, not A
    details = await _refused(b.query.Partial(relay(a, b, original), timeout=10), grpc.StatusCode.UNAUTHENTICATED)
    assert f"addressed to hub {c.id}" in details
    direct = query_service_pb2_grpc.QueryStub(b.channel).Run(_signed(attacked, a.id), timeout=10)  # A replays it to B's Run
    assert f"addressed to hub {a.id}" in await _refused(direct, grpc.StatusCode.UNAUTHENTICATED)
    assert await _used(attacked, b) == before
