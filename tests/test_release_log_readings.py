"""The release log's per-reading fingerprints (scheme READINGS, federation/query/releases.py
SubcellHasher) over the records a real SQLite store builds (node/storage/query_tables.py
readings_by_hour), and the high-water mark's digest. The attacks on live hubs are in
tests/privacy/test_privacy_release_log_runs.py."""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.query import releases
from node.storage.base import AggregateRequest, SensorRecord
from node.storage.sqlite import SqliteStore

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_546_300_800_000  # 2019-01-01T00:00Z
SENSORS = 4
PURPOSE = "environmental_monitoring"

Reading = tuple[int, int, float]  # (sensor number, time_ms, value)


@contextmanager
def _store() -> Iterator[SqliteStore]:
    """A real hub database with SENSORS sensors; sensors 2 and 3 belong to one subject, and
    every subject has consented to PURPOSE."""
    with tempfile.TemporaryDirectory(prefix="releaselog-readings-") as tmp:
        store = SqliteStore(Path(tmp) / "hub.sqlite")
        try:
            for n in range(SENSORS):
                subject = f"household,{min(n, 2)}"  # a comma: records must not be split on it
                store.add_sensor(SensorRecord(f"s{n}", "air_quality", ["pm25"], 58.9, 5.7, b"\0", 0, subject_id=subject))
                store.grant_consent(subject, PURPOSE, 0)
            yield store
        finally:
            store.close()


def _put(store: SqliteStore, readings: list[Reading]) -> None:
    refs = dict(store.conn.execute("SELECT sensor_id, ref FROM sensors").fetchall())
    store.conn.executemany("INSERT INTO readings (sensor_ref, metric, time_ms, value) VALUES (?, 'pm25', ?, ?)",
                           [(refs[f"s{n}"], t, v) for n, t, v in readings])


def _request(start: int, end: int, consent: bool = False) -> AggregateRequest:
    return AggregateRequest("air_quality", "pm25", start, end, "hour", PURPOSE if consent else None)


def _fingerprints(store: SqliteStore, extents: list[tuple[int, int]], consent: bool = False
                  ) -> dict[tuple[int, int], releases.SubcellReadings]:
    hasher = releases.SubcellHasher(extents)
    store.readings_by_hour(_request(extents[0][0], extents[-1][1], consent), hasher.add)
    return hasher.result()


values = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)
readings = st.lists(st.tuples(st.integers(0, SENSORS - 1), st.integers(0, 6 * HOUR - 1), values),
                    min_size=1, max_size=30, unique_by=lambda r: (r[0], r[1]))
EXTENTS = [(T0 + h * HOUR, T0 + (h + 2) * HOUR) for h in (0, 2, 4)]  # three sub-cells of two hours each


def _refill(store: SqliteStore, drawn: list[Reading]) -> None:
    store.conn.execute("DELETE FROM readings")
    _put(store, [(n, T0 + t, v) for n, t, v in drawn])


def test_the_records_give_every_reading_back_exactly():
    """The value of every record (18 significant digits from SQLite's printf) is the stored
    double, subnormal and extreme ones included; the time is the reading's within its hour."""
    with _store() as store:
        @settings(max_examples=60, deadline=None)
        @given(readings)
        def check(drawn: list[Reading]) -> None:
            _refill(store, drawn)
            got: list[tuple[int, int, float]] = []

            def keep(hour: int, records: list[str], contributors: list[str]) -> None:
                assert len(records) == len(contributors)
                for record in records:
                    _, within, value = record.split(" ")
                    got.append((hour, int(within), float(value)))

            store.readings_by_hour(_request(T0, T0 + 6 * HOUR), keep)
            assert sorted(got) == sorted((T0 + t - t % HOUR, t % HOUR, v) for _, t, v in drawn)

        check()


def test_a_fingerprint_depends_on_the_readings_not_on_the_order_they_are_stored_or_returned_in():
    with _store() as first, _store() as second:
        @settings(max_examples=40, deadline=None)
        @given(readings, st.randoms())
        def check(drawn: list[Reading], rng: random.Random) -> None:
            _refill(first, drawn)
            second.conn.execute("DELETE FROM readings")
            shuffled = list(drawn)
            rng.shuffle(shuffled)
            for n, t, v in shuffled:  # one by one, in another order
                _put(second, [(n, T0 + t, v)])
            assert _fingerprints(first, EXTENTS) == _fingerprints(second, EXTENTS)

            hasher = releases.SubcellHasher(EXTENTS)  # and the records of each hour fed in another order

            def shuffled_hour(hour: int, records: list[str], contributors: list[str]) -> None:
                rng.shuffle(records)
                hasher.add(hour, records, contributors)

            first.readings_by_hour(_request(T0, T0 + 6 * HOUR), shuffled_hour)
            assert hasher.result() == _fingerprints(first, EXTENTS)

        check()


def _changes(drawn: list[Reading], i: int) -> dict[str, tuple[list[Reading], list[Reading]]]:
    """(readings removed, readings added) for each kind of change to reading `i`."""
    n, t, v = drawn[i]
    taken = {(m, s) for m, s, _ in drawn}
    other = next((m for m in range(SENSORS) if (m, t) not in taken), None)
    moved = next((s for s in (t + HOUR, t - HOUR) if 0 <= s < 6 * HOUR and (n, s) not in taken
                  and s // (2 * HOUR) == t // (2 * HOUR)), None)
    later = t + 1 if t + 1 < 6 * HOUR and (n, t + 1) not in taken and (t + 1) // (2 * HOUR) == t // (2 * HOUR) else None
    out = {
        "removed": ([drawn[i]], []),
        "one ulp more": ([drawn[i]], [(n, t, math.nextafter(v, math.inf))]) if math.nextafter(v, math.inf) != math.inf else None,
        "late reading": ([], [(n, later, v)]) if later is not None else None,
        "a millisecond later": ([drawn[i]], [(n, later, v)]) if later is not None else None,
        "another contributor": ([drawn[i]], [(other, t, v)]) if other is not None else None,
        # the same ms into another hour of the same two-hour sub-cell: the hour's header tells them apart
        "another hour": ([drawn[i]], [(n, moved, v)]) if moved is not None else None,
    }
    return {what: change for what, change in out.items() if change is not None}


def test_any_change_of_one_reading_changes_its_subcell_and_no_other():
    """A late reading, an erased one, one value changed by a single ulp, moved by a millisecond
    or to the same minute of another hour of the sub-cell, or given to another contributor: the
    sub-cell's fingerprint changes; the other sub-cells keep theirs."""
    with _store() as before, _store() as after:
        @settings(max_examples=100, deadline=None)
        @given(readings, st.data())
        def check(drawn: list[Reading], data: st.DataObject) -> None:
            i = data.draw(st.integers(0, len(drawn) - 1))
            changes = _changes(drawn, i)
            what = data.draw(st.sampled_from(sorted(changes)))
            removed, added = changes[what]
            _refill(before, drawn)
            _refill(after, [r for r in drawn if r not in removed] + added)
            was, now = _fingerprints(before, EXTENTS), _fingerprints(after, EXTENTS)
            touched = T0 + drawn[i][1] - drawn[i][1] % (2 * HOUR)
            for extent in EXTENTS:
                if extent[0] == touched:
                    assert now[extent].fingerprint != was[extent].fingerprint, what
                else:
                    assert now[extent] == was[extent], what

        check()


def test_readings_and_contributors_per_subcell_are_the_aggregates():
    """The release log cross-checks each cell against its sub-cells (a reading that arrives
    between the two reads withholds the cell): the counts must agree exactly, with consent
    counting data subjects (sensors 2 and 3 are one household) and without it sensors."""
    with _store() as store:
        @settings(max_examples=40, deadline=None)
        @given(readings, st.booleans())
        def check(drawn: list[Reading], consent: bool) -> None:
            _refill(store, drawn)
            hours = [(T0 + h * HOUR, T0 + (h + 1) * HOUR) for h in range(6)]
            subcells = _fingerprints(store, hours, consent)
            cells = {c.bucket_start_ms: c for c in store.aggregate(_request(T0, T0 + 6 * HOUR, consent))}
            for (start, _), sub in subcells.items():
                cell = cells.get(start)
                assert (sub.readings, len(sub.contributors)) == ((cell.count, cell.contributors) if cell else (0, 0))
                if cell is None:
                    assert sub.fingerprint == releases.EMPTY_READINGS

        check()


def test_the_hasher_refuses_what_would_make_a_fingerprint_ambiguous():
    with pytest.raises(ValueError, match="disjoint"):
        releases.SubcellHasher([(0, 2 * HOUR), (HOUR, 3 * HOUR)])
    with pytest.raises(ValueError, match="whole hours"):
        releases.SubcellHasher([(0, HOUR + 1)])
    hasher = releases.SubcellHasher([(0, 2 * HOUR)])
    hasher.add(HOUR, ["r1 0 1.0"], ["r1"])
    with pytest.raises(ValueError, match="increasing order"):
        hasher.add(0, ["r1 0 1.0"], ["r1"])
    with pytest.raises(ValueError, match="increasing order"):
        hasher.add(HOUR, ["r1 5 1.0"], ["r1"])  # the same hour twice
    with _store() as store, pytest.raises(ValueError, match="as stored"):
        store.readings_by_hour(AggregateRequest("air_quality", "pm25", 0, HOUR, "hour", None, clamp=(0.0, 1.0)), hasher.add)


def test_a_run_digest_tells_apart_any_two_sequences_of_fingerprints():
    rng = random.Random(9)
    prints = [rng.randbytes(32) for _ in range(4)]
    digests = {releases.run_digest(prints), releases.run_digest(prints[::-1]), releases.run_digest(prints[:3]),
               releases.run_digest([*prints[:3], releases.EMPTY_READINGS]), releases.run_digest([])}
    assert len(digests) == 5
