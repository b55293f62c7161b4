"""Attack (anyone handling a saved answer file): add a field instead of editing one.

Tried: a verified answer file (`smartregion query --json`), edited by inserting a second
`"rows"` member with made-up values before the real one, and a second `"status"` inside a
provenance entry, leaving every original byte in place. JSON does not forbid duplicate
member names (RFC 8259 4: "SHOULD be unique"); parsers differ on which one they keep.

RESULT: BROKE. `answers.verify` (and so `smartregion query verify`) accepts the file: Python's
json keeps the LAST member, which is the signed one. A reader or tool that keeps the FIRST
member (a streaming parser, a person reading top-down) sees a daily mean of 999.0 where the
signed value is 5.0, and B's status as "denied" where it answered: 2 of 2 inserted fields
unreported.
Smallest fix: federation/answers.py verify: parse with
`json.loads(data, object_pairs_hook=...)` that raises AnswerError on a repeated member name.
FIXED (askerfix): answers.load parses with an object_pairs_hook that refuses a repeated
member name anywhere in the file.
"""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
from attack_helpers import day_query, region, terms_toml

from federation import answers

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def saved(tmp_path_factory):
    async with region(tmp_path_factory.mktemp("dupkeys"), terms_toml(), {0: [[5.0] * 24], 1: [[9.0] * 24]},
                      towns=(("stavanger", "1103"), ("bergen", "4601"))) as r:
        a, b = r.hubs
        answer = await r.ask(a, day_query(bucket="window", group_by="municipality", hub_ids=[a.id, b.id]))
        yield answers.to_json(answer)


def _first_wins(pairs):
    out: dict[str, object] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _inserted(data: bytes) -> bytes:
    text = data.decode()
    doc = json.loads(text)
    fake_rows = [dict(row, value=999.0) for row in doc["rows"]]
    assert text.startswith("{\n")
    text = "{\n" + f'  "rows": {json.dumps(fake_rows)},\n' + text[2:]  # a first "rows" before the signed one
    signed_status = '"status": "answered"'
    return text.replace(signed_status, '"status": "denied", ' + signed_status, 1).encode()


async def test_the_unedited_file_verifies(saved):
    answers.verify(saved)


async def test_a_file_with_a_repeated_member_fails_verification(saved):
    forged = _inserted(saved)
    first = json.loads(forged, object_pairs_hook=_first_wins)
    assert {r["value"] for r in first["rows"]} == {999.0} and first["provenance"][0]["status"] == "denied"  # what they see
    with pytest.raises(answers.AnswerError):
        answers.verify(forged)
