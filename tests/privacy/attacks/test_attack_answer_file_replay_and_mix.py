"""Attack (an entry hub, or anyone holding answer files): mix partials of two queries, replay
an old answer as the answer to a new query, and pass an old answer file off as new.

Tried, with the same question asked twice (Q1, then Q2: same spec, new nonce and answer key):
1. Q1's signed partial of hub B put into Q2's answer file (alone, with its sealed bytes, and
   with the entry hub signing the summary again): HELD, every variant fails `query verify`
   ("answers another query" or the entry hub's signature).
2. The entry hub answers Q2 with Q1's sealed answer: HELD, the partner's client refuses it
   (Q1's partials do not open with Q2's answer key).
3. An answer file of Q1 shown after new readings arrived, as if it were current: BROKE.
   `query verify` prints the query and statuses but no time: neither when the asker signed
   the query (`issued_at_ms`, signed) nor when the entry hub merged (`merged_at_ms`, signed)
   nor when each provider computed (`computed_at_ms`, signed). The two files of Q1 and Q2
   (daily means 5.0, then 7.0 after a late station's readings) read alike but for their rows; nothing says
   which is older.
Smallest fix: federation/answers.py readable(): add the signed times ("asked_at" from the
query envelope, "answered_at" from the summary) and print them in node/app/cli/query.py verify.
FIXED (askerfix): the answer file (version 3) and `query verify` show the signed times:
asked_at_ms (issued_at_ms), answered_at_ms (merged_at_ms), each partial's computed_at_ms.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import pytest_asyncio
from attack_helpers import DAY, HOUR_MS, day_query, partial_of, region, resign, terms_toml
from query_helpers import add_sensor, deliver

from federation import answers, envelope, partials
from federation.query import asker
from node import senml

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def two_answers(tmp_path_factory):
    base = tmp_path_factory.mktemp("replay")
    async with region(base, terms_toml(), {0: [[5.0] * 24], 1: [[5.0] * 24]},
                      towns=(("stavanger", "1103"), ("bergen", "4601"))) as r:
        a, b = r.hubs
        query = day_query(bucket="window", hub_ids=[a.id, b.id])
        q1_sealed, q1_key = await r.ask_sealed(a, query)
        late = await add_sensor(b, base, "late-station", "air_quality", ["pm25"])
        # The late station reports the next day: a released day is never released again with
        # other content (the release log), so the second query asks both days as one window.
        await deliver(b, late, [senml.Reading("pm25", DAY + (24 + h) * HOUR_MS, 11.0) for h in range(24)])
        q2_sealed, q2_key = await r.ask_sealed(a, day_query(bucket="window", hub_ids=[a.id, b.id], end_ms=DAY + 48 * HOUR_MS))
        yield r, (q1_sealed, q1_key), (q2_sealed, q2_key)


def _b(answer, b_id):
    return next(p for p in answer.provenance if p.hub_id == b_id)


async def test_a_partial_of_another_query_fails_verification(two_answers):
    r, (q1, k1), (q2, k2) = two_answers
    a, b = r.hubs
    old, new = r.open(q1, k1), r.open(q2, k2)
    assert [row.value for row in old.rows] == [5.0] and [row.value for row in new.rows] == [7.0]
    for move_sealed, sign_again in ((False, False), (True, False), (True, True)):
        mixed = type(new)()
        mixed.CopyFrom(new)
        _b(mixed, b.id).partial.CopyFrom(_b(old, b.id).partial)
        if move_sealed:
            _b(mixed, b.id).sealed_partial = _b(old, b.id).sealed_partial
        if sign_again:
            mixed = resign(a, mixed)
        del mixed.rows[:]  # the rows merged again, as a forger would, so only the partial's origin can give it away
        mixed.rows.extend(partials.merge([partial_of(p) for p in mixed.provenance], envelope.parse(mixed.query).query))
        with pytest.raises(answers.AnswerError, match=r"another query|signature|differs"):
            answers.verify(answers.to_json(mixed))


async def test_an_old_sealed_answer_is_refused_as_the_answer_to_a_new_query(two_answers):
    r, (q1, _k1), (_q2, k2) = two_answers
    with pytest.raises(asker.AnswerRefused, match="does not open with this query's key"):
        r.open(q1, k2)


async def test_a_verified_answer_file_says_when_it_was_asked_and_answered(two_answers):
    r, (q1, k1), _ = two_answers
    old = r.open(q1, k1)
    verified = answers.verify(answers.to_json(old))
    shown = json.dumps(answers.readable(verified.answer)) + json.dumps(verified.query)
    issued_ms = envelope.parse(old.query).issued_at_ms
    iso = dt.datetime.fromtimestamp(issued_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M")
    assert str(issued_ms) in shown or iso in shown, "neither the signed query time nor the merge time is shown"
