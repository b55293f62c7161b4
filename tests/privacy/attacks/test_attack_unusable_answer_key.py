"""Attack (partner, or a buggy client): a query whose answer key is 32 bytes but not a usable
X25519 key (the all-zero point, which gives an all-zero shared secret).

Tried against a live hub asked directly (Query.Run): the partner's signed query with
`answer_key = 32 x 0x00`. Issue 9 requires bad input to get "a precise status ... spends
nothing and releases nothing".
RESULT: BROKE (accounting, not confidentiality: nothing is released). The query passes the
shape check (only the key's length is checked), the provider charges the agreement's daily
quota, then fails to seal: the hub answers OK with the hub "unavailable" ("could not compute
its partial (see its log)") instead of INVALID_ARGUMENT, and 1 query of the quota is spent.
Smallest fix: federation/query/provider.py check_releasable: parse the key
(X25519PublicKey.from_public_bytes) and refuse the all-zero and other low-order points with
INVALID_ARGUMENT before anything is charged (or refund the quota too in compute when _release
fails).
FIXED (askerfix): provider.check_releasable refuses a low-order answer key
(INVALID_ARGUMENT) before anything is charged.
"""

from __future__ import annotations

import grpc
import pytest
from attack_helpers import day_query, region, terms_toml

from federation import envelope
from federation.query_service import RUN_METHOD
from node.clock import utc_day

pytestmark = pytest.mark.asyncio


async def test_an_unusable_answer_key_is_refused_and_charges_nothing(tmp_path):
    async with region(tmp_path, terms_toml(), {0: [[5.0] * 24]}, towns=(("stavanger", "1103"),)) as r:
        [a] = r.hubs
        aid = r.agreements[a.id]

        async def used() -> int:
            day = utc_day(a.live.hub.clock.now_ms())
            return (await a.live.hub.storage.read(lambda s: s.quota_used(aid, day)))[0]

        before = await used()
        request = envelope.make(r.partner.key, r.partner.partner_id, a.id, RUN_METHOD, query=day_query(answer_key=bytes(32)))
        try:
            answer = await a.query.Run(request, timeout=20)
            outcome = f"OK with statuses {[(p.status, p.reason) for p in answer.provenance]}"
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name
        charged = await used() - before
    assert (outcome, charged) == ("INVALID_ARGUMENT", 0), f"answered {outcome}; {charged} query of the quota charged"
