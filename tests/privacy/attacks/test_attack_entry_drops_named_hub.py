"""Attack (entry hub): drop a partial the asker asked for, and call the answer complete.

Tried: the partner asks entry hub A for the region-wide daily mean over hubs A, B and C
(`hub_ids = [A, B, C]`, signed by the partner). A's operator, holding A's key, removes B's
provenance entry (B's sealed partial with it), leaves `partial = false` and no missing hubs,
and signs the summary again. The partner's CLI opens and verifies the answer
(asker.open_answer), and `query verify` checks the saved file.

RESULT: BROKE. Both accept the answer as complete. The region-wide mean shown is that of A
and C only: 6.0 instead of the true 20.67 (stations 5, 50, 7), an error of 71 %, with nothing
flagged although the partner's own signed query names B. Dropping B as `timed_out` (or
`denied` with an invented reason) is flagged as partial, but the reason is only the entry
hub's word: providers sign no refusals.
Smallest fix: federation/query/asker.py merge_opened: when the signed query names `hub_ids`,
require the provenance to list exactly those hubs (and, with a `municipalities` filter, a
provenance entry for each named municipality), and require `partial` and `missing_hubs` to
be exactly the hubs whose status is not "answered"; otherwise AnswerRefused.
FIXED (askerfix): federation/query/asker.py _check_complete refuses an answer that does not
list exactly the signed `hub_ids` (a hub for each named municipality), or whose `partial` and
`missing_hubs` are not exactly the hubs not "answered" (docs/querying.md 7.4 step 6).
"""

from __future__ import annotations

import pytest
import pytest_asyncio
from attack_helpers import day_query, region, resign, terms_toml

from federation import answers
from federation.query import asker

pytestmark = pytest.mark.asyncio(loop_scope="module")
TRUE_MEAN = (5.0 + 50.0 + 7.0) / 3


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    async with region(tmp_path_factory.mktemp("drops"), terms_toml(aggregates=["mean", "count"]),
                      {0: [[5.0] * 24], 1: [[50.0] * 24], 2: [[7.0] * 24]}) as r:
        yield r


def _without(answer, hub_id: str, status: str | None):
    forged = type(answer)()
    forged.CopyFrom(answer)
    kept = [p for p in forged.provenance if p.hub_id != hub_id]
    if status is not None:  # keep it listed, but as not answered
        [dropped] = [p for p in forged.provenance if p.hub_id == hub_id]
        dropped.status, dropped.reason, dropped.agreement_id, dropped.sealed_partial = status, "no agreement with the asker", "", b""
        kept.append(dropped)
        forged.partial, forged.missing_hubs[:] = True, [hub_id]
    del forged.provenance[:]
    forged.provenance.extend(kept)
    return forged


async def test_the_honest_answer_covers_the_three_named_hubs(attacked):
    a, b, c = attacked.hubs
    sealed, key = await attacked.ask_sealed(a, day_query(bucket="window", hub_ids=[a.id, b.id, c.id]))
    [row] = attacked.open(sealed, key).rows
    assert abs(row.value - TRUE_MEAN) < 1e-9 and row.contributors == 3


async def test_a_hub_dropped_as_not_answering_is_flagged_partial(attacked):
    a, b, c = attacked.hubs
    sealed, key = await attacked.ask_sealed(a, day_query(bucket="window", hub_ids=[a.id, b.id, c.id]))
    opened = attacked.open(resign(a, _without(sealed, b.id, "denied")), key)
    assert opened.partial and list(opened.missing_hubs) == [b.id]  # flagged, though the reason is unattributable


async def test_a_hub_silently_dropped_by_the_entry_hub_is_detected(attacked):
    a, b, c = attacked.hubs
    sealed, key = await attacked.ask_sealed(a, day_query(bucket="window", hub_ids=[a.id, b.id, c.id]))
    forged = resign(a, _without(sealed, b.id, None))
    try:
        opened = attacked.open(forged, key)
    except asker.AnswerRefused:
        return  # held by the live client; the file check below is then moot
    [row] = opened.rows
    error = abs(row.value - TRUE_MEAN) / TRUE_MEAN
    verified_file = True
    try:
        answers.verify(answers.to_json(opened))
    except answers.AnswerError:
        verified_file = False
    assert opened.partial or not verified_file, (
        f"the answer without B verifies as complete: mean {row.value:g} instead of {TRUE_MEAN:.2f} (error {error:.0%})")


async def test_a_not_answering_hub_cannot_be_hidden_behind_a_complete_flag(attacked):
    a, b, c = attacked.hubs
    sealed, key = await attacked.ask_sealed(a, day_query(bucket="window", hub_ids=[a.id, b.id, c.id]))
    hidden = _without(sealed, b.id, "denied")
    hidden.partial = False
    del hidden.missing_hubs[:]
    try:
        opened = attacked.open(resign(a, hidden), key)
        answers.verify(answers.to_json(opened))
    except (asker.AnswerRefused, answers.AnswerError):
        return
    raise AssertionError(f"accepted as complete (partial={opened.partial}, missing={list(opened.missing_hubs)}) "
                         f"although hub {b.id} is listed as denied")
