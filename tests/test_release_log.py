"""The release log's parts (federation/query/releases.py, node/storage/query_tables.py): the
sub-cell fingerprint, the decision, and the migration that carries the old per-agreement log
over. The attacks on live hubs are in tests/privacy/test_privacy_release_log.py."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.query import releases
from node.storage.base import Contribution, ReleasedSubcell, ReleaseLine
from node.storage.migrations import MIGRATIONS
from node.storage.sqlite import SqliteStore

DAY = 86_400_000

contributions = st.builds(
    Contribution, st.text(min_size=1, max_size=8), st.integers(1, 10_000),
    st.floats(-1e9, 1e9), st.floats(0, 1e12), st.floats(-1e6, 1e6), st.floats(-1e6, 1e6),
    st.integers(0, 10**9), st.integers(0, 10**12))
subcell_contents = st.lists(contributions, max_size=6, unique_by=lambda c: c.contributor)


@settings(max_examples=100, deadline=None)
@given(subcell_contents, st.randoms())
def test_a_fingerprint_depends_on_the_content_not_on_the_order(content, rng):
    shuffled = list(content)
    rng.shuffle(shuffled)
    assert releases.fingerprint(shuffled) == releases.fingerprint(content)
    assert len(releases.fingerprint(content)) == 32
    assert releases.fingerprint([]) == releases.EMPTY


def test_a_sum_of_squares_that_overflowed_still_has_a_fingerprint():
    big = Contribution("s", 2, 2e200, float("inf"), 1e200, 1e200, 1, 2)
    assert releases.fingerprint([big]) != releases.fingerprint([replace(big, sum_squares=1e308)])


CHANGES = {
    "readings": lambda c: replace(c, readings=c.readings + 1),
    "sum": lambda c: replace(c, sum=c.sum + max(1.0, abs(c.sum)) * 1e-10),
    "sum_squares": lambda c: replace(c, sum_squares=c.sum_squares + max(1.0, c.sum_squares) * 1e-10),
    "min": lambda c: replace(c, min=c.min - 0.5),
    "max": lambda c: replace(c, max=c.max + 0.5),
    "hour_sum": lambda c: replace(c, hour_sum=c.hour_sum + 1),
    "ms_in_hour_sum": lambda c: replace(c, ms_in_hour_sum=c.ms_in_hour_sum + 1),
    "contributor": lambda c: replace(c, contributor=c.contributor + "x"),
}


@settings(max_examples=100, deadline=None)
@given(subcell_contents.filter(bool), st.sampled_from(sorted(CHANGES)), st.data())
def test_any_change_of_one_contributor_changes_the_fingerprint(content, what, data):
    """A late reading, a withdrawn consent, an enrolled or revoked sensor, an erasure: each
    changes some contributor's record, or adds or removes one."""
    i = data.draw(st.integers(0, len(content) - 1))
    changed = [*content[:i], CHANGES[what](content[i]), *content[i + 1:]]
    if len({c.contributor for c in changed}) == len(changed):
        assert releases.fingerprint(changed) != releases.fingerprint(content)
    assert releases.fingerprint(content[:i] + content[i + 1:]) != releases.fingerprint(content)


def _row(start: int, end: int, fingerprint: bytes, scheme: int = releases.SUBCELL) -> ReleasedSubcell:
    return ReleasedSubcell(start, end, scheme, "day", fingerprint, 4, "urn:uuid:a", 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(1, 3), st.booleans(), st.booleans()), max_size=8),
       st.integers(0, 9), st.integers(1, 4))
def test_a_cell_is_released_only_if_every_overlapping_earlier_release_holds_the_same_content(logged, at, days):
    """Earlier rows (start day, length in days, still the same content?, computed by this
    query?) against one candidate cell of `days` days from day `at`."""
    earlier, current = [], {}
    for start, length, same, computed in logged:
        row = _row(start * DAY, (start + length) * DAY, bytes([start, length]))
        earlier.append(row)
        if computed:
            current[(row.scheme, row.start_ms, row.end_ms)] = row.fingerprint if same else b"other"
    subcells = tuple(_row(d * DAY, (d + 1) * DAY, b"new") for d in range(at, at + days))
    cell = releases.Candidate(at * DAY, at * DAY, (at + days) * DAY, subcells)
    withheld, rows = releases.decide([cell], current, earlier)
    overlapping = [r for r in earlier if r.start_ms < cell.end_ms and r.end_ms > cell.start_ms]
    verdicts = [current.get((r.scheme, r.start_ms, r.end_ms)) for r in overlapping]
    if all(v is not None and v == r.fingerprint for v, r in zip(verdicts, overlapping, strict=True)):
        assert withheld == {} and rows == list(subcells)
    else:
        assert rows == [] and set(withheld) == {cell.bucket_start_ms}
        first = next(v for v, r in zip(verdicts, overlapping, strict=True) if v != r.fingerprint)
        assert withheld[cell.bucket_start_ms] is (releases.Withholding.RACED if first is None else releases.Withholding.CHANGED)


def test_the_old_per_agreement_log_is_carried_over_to_its_line(tmp_path):
    """Rows of the release log before the line-and-sub-cell log are kept, as whole-cell rows of
    the agreement's consumer, and found by the overlap lookup."""
    mine = next(i for i, (_, script) in enumerate(MIGRATIONS) if "CREATE TABLE released_subcells" in script)
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for version, script in MIGRATIONS[:mine]:
        conn.executescript(f"BEGIN;\n{script};\nPRAGMA user_version = {version};\nCOMMIT;")
    conn.execute("INSERT INTO agreements (agreement_id, provider_id, consumer_id, version, valid_from_ms, valid_until_ms, document, "
                 "created_at_ms, updated_at_ms) VALUES ('urn:uuid:v1', 'hub-p', 'partner-q', 1, 0, 1, x'00', 0, 0)")
    for agreement, prints in (("urn:uuid:v1", b"A" * 16), ("urn:uuid:gone", b"B" * 16)):
        conn.execute("INSERT INTO release_log (agreement_id, dataset, metric, start_ms, end_ms, contributors, digest, fingerprints, "
                     "released_at_ms) VALUES (?, 'air_quality', 'pm25', ?, ?, 4, x'00', ?, 7)", (agreement, DAY, 2 * DAY, prints))
    conn.close()
    store = SqliteStore(path)
    try:
        [row] = store.released_overlapping(ReleaseLine("partner-q", "air_quality", "pm25"), 0, 3 * DAY)
        assert row == ReleasedSubcell(DAY, 2 * DAY, releases.LEGACY, "window", b"A" * 16, 4, "urn:uuid:v1", 7)
        assert len(store.released_overlapping(ReleaseLine("agreement:urn:uuid:gone", "air_quality", "pm25"), DAY, DAY + 1)) == 1
        assert store.released_overlapping(ReleaseLine("partner-q", "air_quality", "pm25"), 2 * DAY, 3 * DAY) == []  # no overlap
        assert store.conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'release_log'").fetchone() == (0,)
    finally:
        store.close()
