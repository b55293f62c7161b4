"""Issue 9, quantiles and partial sizes: the independent attacker's three findings, as
regression tests (federation/partials.py `coarsen`, `padded_size`; federation/sealing.py).

* Quantile sweep (live hubs): per-municipality quantiles were the fine sketch's value, so 23
  daily quantile queries (q = (i + 0.5) / (n - 1)) gave 23 of 24 hourly readings to 1 %. Now a
  per-municipality quantile is read from the coarsened sketch: the sweep returns only its bins.
* Twin stations: two stations reading within 0.1 % shared every fine bin, so the coarse sketch
  left at level 0/1 and carried each reading to ~3 %. Now every bin is >= 2^MIN_LEVEL fine
  bins wide and holds >= MIN_BIN_READINGS readings.
* Sealed size: the sealed partial's length told the entry hub which cells were withheld and
  how large counts were. Now it is padded to a length fixed by the query."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation import partials, sealing
from federation.query.provider import check_releasable
from federation.query_spec import buckets
from node.api.v1 import query_pb2
from node.app.sensor_client import replay
from node.errors import Reason, Rejected
from node.senml import Reading
from node.sketch import bin_of, gamma
from node.storage.base import CellRow
from tests.conftest import sign_agreement, start_peered
from tests.query_helpers import DAY_MS as DAY
from tests.query_helpers import ms as _utc_ms
from tests.test_federation_region import TERMS


def ms(year: int, month: int) -> int:
    return _utc_ms(year, month, 1)


THREE_PER_CELL = TERMS.replace("min_group_size = 1", "min_group_size = 3").replace('smallest_bucket = "month"', 'smallest_bucket = "day"')

QUANTILE_ONLY = THREE_PER_CELL.replace('aggregates = ["mean", "count", "min", "max"]', 'aggregates = ["quantile", "mean"]')
HOUR = 3_600_000


def spec_for(provider_id: str, start_ms: int, end_ms: int, aggregate: str = "quantile", q: float = 0.5,
             group_by: str = "municipality") -> query_pb2.QuerySpec:
    return query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate=aggregate, quantile=q if aggregate == "quantile" else 0.0,
                               start_ms=start_ms, end_ms=end_ms, bucket="day", group_by=group_by,
                               purpose_code="environmental_monitoring", hub_ids=[provider_id])


async def test_a_quantile_sweep_returns_the_coarse_bins_not_the_readings(tmp_path):
    """Tried: the attacker's sweep, 23 daily quantiles of one municipality's day (4 stations,
    6 hourly readings each, k = 3), one per rank. Before: 23 of 24 readings recovered, worst
    error 2 %. Now every released value is read from the coarse sketch alone (interpolated by
    rank within its bin): the sweep yields exactly the quantiles of the sketch the rule allows
    (each bin >= 3 stations, >= 10 readings, >= 8 fine bins), nothing finer.
    Also: the sealed partials of a day with data, a day of only withheld readings and a day
    with none are all of one length (the entry hub cannot tell them apart); and on a day where
    two of the stations sit alone near 100, the bins follow k = 3 (a rule of two would give
    those two their own bin)."""
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        truth: list[float] = []
        stations: list[tuple[str, float]] = []
        day_3: list[tuple[str, float]] = []
        day = ms(2019, 1)
        for n in range(4):
            sensor = await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"])
            values = [3.0 + 7.3 * n + 1.1 * h for h in range(6)]
            truth += values
            stations += [(f"station{n}", v) for v in values]
            readings = [Reading("pm25", day + h * HOUR, v) for h, v in enumerate(values)]
            if n == 0:  # one station alone on the next day: a cell below k = 3
                readings.append(Reading("pm25", day + DAY + HOUR, 42.0))
            if n < 3:  # day 3: three stations near 10, and stations 0 and 1 alone near 100
                on_day_3 = [10.0 + 0.1 * h for h in range(8)] + ([100.0 + h for h in range(8)] if n < 2 else [])
                readings += [Reading("pm25", day + 3 * DAY + h * HOUR, v) for h, v in enumerate(on_day_3)]
                day_3 += [(f"station{n}", v) for v in on_day_3]
            await asyncio.to_thread(replay, sensor, readings)
        await sign_agreement(provider, consumer, QUANTILE_ONLY)
        provider_id = provider.hub.config.hub_id

        async def ask(spec: query_pb2.QuerySpec):
            return await consumer.admin.RunQuery(spec, metadata=consumer.admin_metadata)

        async def quantile(q: float) -> query_pb2.Row:
            [row] = (await ask(spec_for(provider_id, day, day + DAY, q=q))).rows
            return row

        n = (await quantile(0.5)).readings
        assert n == len(truth) == 24
        recovered = []
        for i in range(n - 1):
            row = await quantile((i + 0.5) / (n - 1))
            assert not row.suppressed
            recovered.append(row.value)
        truth.sort()
        close = sum(1 for got, true in zip(recovered, truth, strict=False) if abs(got - true) / true < 0.02)
        worst = max(abs(got - true) / true for got, true in zip(recovered, truth, strict=False))
        print(f"{n - 1} queries: {len(set(recovered))} distinct values, {close} readings within 2 %, worst error {worst:.2f}")
        allowed = partials.coarsen(bins_of(stations), partials.coarse_threshold(3))
        assert allowed is not None
        assert_every_bin_follows_the_rule(stations, allowed, 3)
        for i, got in enumerate(recovered):
            assert math.isclose(got, partials.coarse_quantile(allowed, (i + 0.5) / (n - 1)), rel_tol=1e-12), \
                "the sweep reads something other than the rule's coarse sketch (a fine sketch?)"

        # The entry hub's view: one length for a released day, a withheld one, an empty one.
        lengths = set()
        for start in (day, day + DAY, day + 2 * DAY):
            answer = await ask(spec_for(provider_id, start, start + DAY))
            [p] = answer.provenance
            assert p.status == "answered"
            lengths.add(len(p.sealed_partial))
            rows = [(r.suppressed, r.readings) for r in answer.rows]
            print(f"day {(start - day) // DAY}: rows {rows}, sealed {len(p.sealed_partial)} bytes")
        assert len(lengths) == 1, f"the sealed length tells released, withheld and empty days apart: {lengths}"

        # The rule is the agreement's k = 3, not two: two stations alone near 100 get no bin.
        by_k3, by_two = (partials.coarsen(bins_of(day_3), t) for t in (3, 2))
        assert by_k3 is not None and by_k3 != by_two
        [row] = (await ask(spec_for(provider_id, day + 3 * DAY, day + 4 * DAY, q=0.9))).rows
        assert math.isclose(row.value, partials.coarse_quantile(by_k3, 0.9), rel_tol=1e-12), "the bins ignore k"
    finally:
        await consumer.stop()
        await provider.stop()


ONE_PER_CELL_QUANTILES = TERMS.replace('smallest_bucket = "month"', 'smallest_bucket = "day"').replace(
    'aggregates = ["mean", "count", "min", "max"]', 'aggregates = ["quantile", "mean"]')


async def test_a_sweep_over_two_stations_does_not_single_out_a_station_alone_in_a_tail(tmp_path):
    """Tried: a day of two stations (k = 1, so every bin needs both): A reads 24 values near 10;
    B reads 12 near 10 and 12 near 80, alone up there. The asker sweeps q over every rank of
    the day's per-municipality quantile. The bins may not give B's tail its own bin (one
    contributor) nor fold it (12 readings): the bin holding B's high readings must also hold
    readings of A, and every released value is the rule's sketch read at that rank."""
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        day = ms(2019, 1)
        a = [9.0 + 0.1 * h for h in range(24)]
        b = [9.5 + 0.2 * h for h in range(12)] + [80.0 + h for h in range(12)]
        stations = [("A", v) for v in a] + [("B", v) for v in b]
        for name, values in (("A", a), ("B", b)):
            sensor = await provider.add_sensor(tmp_path, f"station-{name}", metrics=["pm25"])
            await asyncio.to_thread(replay, sensor, [Reading("pm25", day + h * HOUR, v) for h, v in enumerate(values)])
        await sign_agreement(provider, consumer, ONE_PER_CELL_QUANTILES)
        provider_id = provider.hub.config.hub_id
        n = len(stations)
        swept = []
        for i in range(n):
            answer = await consumer.admin.RunQuery(spec_for(provider_id, day, day + DAY, q=(i + 0.5) / n),
                                                   metadata=consumer.admin_metadata)
            [row] = answer.rows
            assert not row.suppressed and row.readings == n
            swept.append(row.value)
        allowed = partials.coarsen(bins_of(stations), partials.coarse_threshold(1))
        assert allowed is not None
        assert_every_bin_follows_the_rule(stations, allowed, 2)
        for i, got in enumerate(swept):
            assert math.isclose(got, partials.coarse_quantile(allowed, (i + 0.5) / n), rel_tol=1e-12), i
        [tail] = [d for d, _ in released_bins(allowed) if d.first <= partials.ordinal(*bin_of(80.0)) < d.end]
        assert any(tail.first <= partials.ordinal(*bin_of(v)) < tail.end for v in a), "B's tail has a bin of its own"
        high = sorted(b)[12:]
        near = sum(1 for true in high if any(abs(got - true) / true < 0.02 for got in swept))
        print(f"{n} queries: B's tail lies in a bin {gamma() ** (1 << tail.level):.1f}x wide shared with A; "
              f"{near} of B's 12 high readings within 2 % of some released value")
    finally:
        await consumer.stop()
        await provider.stop()


# -- the coarsening rule ---------------------------------------------------------------------------

def bins_of(readings: list[tuple[str, float]]) -> dict[int, tuple[int, set[str]]]:
    bins: dict[int, tuple[int, set[str]]] = {}
    for who, v in readings:
        o = partials.ordinal(*bin_of(v))
        n, members = bins.get(o, (0, set()))
        bins[o] = (n + 1, members | {who})
    return bins


def released_bins(sketch: query_pb2.CoarseSketch) -> list[tuple[partials.DyadicBin, int]]:
    return [(partials.DyadicBin(b.level, b.index), b.count) for b in sketch.intervals]


def assert_every_bin_follows_the_rule(readings: list[tuple[str, float]], sketch: query_pb2.CoarseSketch, threshold: int) -> None:
    """The released bins partition the readings (nothing lost; the up to MIN_BIN_READINGS - 1
    outermost readings folded into the extreme bins), and every bin's OWN readings (those
    whose fine ordinal lies in it) are >= MIN_BIN_READINGS of >= threshold contributors, at
    level >= MIN_LEVEL, with at most MAX_COARSE_BINS bins."""
    bins = released_bins(sketch)
    assert 1 <= len(bins) <= partials.MAX_COARSE_BINS
    assert sum(n for _, n in bins) == len(readings)
    ordered = [b for b, _ in bins]
    assert ordered == sorted(ordered, key=lambda b: b.first)
    assert all(a.end <= b.first for a, b in itertools.pairwise(ordered)), "bins overlap"
    below = above = 0
    for b, n in bins:
        inside = [(who, v) for who, v in readings if b.first <= partials.ordinal(*bin_of(v)) < b.end]
        assert b.level >= partials.MIN_LEVEL
        assert len(inside) >= partials.MIN_BIN_READINGS and len({who for who, _ in inside}) >= threshold, (b, inside)
        assert n >= len(inside)
    below = sum(1 for _, v in readings if partials.ordinal(*bin_of(v)) < ordered[0].first)
    above = sum(1 for _, v in readings if partials.ordinal(*bin_of(v)) >= ordered[-1].end)
    assert below < partials.MIN_BIN_READINGS and above < partials.MIN_BIN_READINGS
    assert bins[0][1] + (bins[-1][1] if len(bins) > 1 else 0) - below - above >= 0
    between = len(readings) - below - above
    assert between == sum(1 for _, v in readings if any(b.first <= partials.ordinal(*bin_of(v)) < b.end for b in ordered)), \
        "a reading between the bins is in none"


def test_twin_stations_do_not_release_their_readings():
    """Tried: the attacker's twins, stations A and B reading within 0.1 % (24 hourly readings
    each, 5 % apart). Before: level 0, every reading of A recovered within 4.5 %. Now: every
    bin >= 2^MIN_LEVEL fine bins wide with >= MIN_BIN_READINGS readings of both, and ANY other
    readings of A and B in the same 2^MIN_LEVEL-wide blocks give the same release: the attacker cannot tell
    the true day from one where every reading moved within its bin (the interpolated guess is
    good only as far as readings really are spread evenly, which the release does not say)."""
    a = [10.0 * 1.05 ** h for h in range(24)]
    b = [v * 1.001 for v in a]
    readings = [("A", v) for v in a] + [("B", v) for v in b]
    sketch = partials.coarsen(bins_of(readings), partials.coarse_threshold(1))
    assert sketch is not None
    assert_every_bin_follows_the_rule(readings, sketch, 2)
    # every reading moved to the bottom of its 2^MIN_LEVEL-wide block: the same release, so
    # nothing released locates a reading within its block (a factor gamma^8 = 1.173)
    moved = []
    for who, v in readings:
        block = partials.DyadicBin(partials.MIN_LEVEL, partials.ordinal(*bin_of(v)) >> partials.MIN_LEVEL)
        moved.append((who, partials.ordinal_value(block.first)))
    assert partials.coarsen(bins_of(moved), 2) == sketch
    widths = {gamma() ** (1 << d.level) for d, _ in released_bins(sketch)}
    print(f"{len(sketch.intervals)} bins, each a factor {min(widths):.3f} or wider; moved readings: the same release")
    assert min(widths) >= gamma() ** 8


def test_many_identical_readings_are_still_known_only_to_a_wide_bin():
    """Twenty readings of 10.0 from two stations fill one fine bin: enough readings and
    contributors at level 0, which would release them to 1 %. The width rule keeps L >= 3."""
    sketch = partials.coarsen(bins_of([("A", 10.0)] * 10 + [("B", 10.0)] * 10), 2)
    assert sketch is not None and [b.level for b in sketch.intervals] == [partials.MIN_LEVEL]


def test_a_coarse_sketch_has_at_most_max_coarse_bins():
    """40 well-separated values, each read ten times by two stations: every level-3 bin passes
    the other rules, but there would be 40 of them; splitting stops at 32."""
    readings = [(who, 2.0 * 1.5 ** i) for i in range(40) for who in "AB" for _ in range(5)]
    sketch = partials.coarsen(bins_of(readings), 2)
    assert sketch is not None and len(sketch.intervals) == partials.MAX_COARSE_BINS
    assert_every_bin_follows_the_rule(readings, sketch, 2)


values_with_repeats = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda v: v == 0 or abs(v) >= 1e-9) | st.sampled_from(
    [1.0, 1.001, 10.0, 10.05, 100.0, -3.0, 0.0])
scattered = st.lists(st.tuples(st.sampled_from("ABCDEF"), values_with_repeats), min_size=1, max_size=300)
# each contributor's readings in runs near one value: halves of one contributor's >= 10 readings
clustered = st.lists(st.tuples(st.sampled_from("ABC"), st.floats(0.5, 1e3), st.integers(1, 15)), min_size=1, max_size=12).map(
    lambda runs: [(who, centre * (1 + 0.002 * j)) for who, centre, n in runs for j in range(n)])
readings_of_contributors = scattered | clustered


@settings(max_examples=300, deadline=None)
@given(readings_of_contributors, st.integers(1, 5))
def test_every_released_bin_is_wide_full_and_mixed(readings, k):
    """What any released coarse sketch satisfies, for any readings (the rule: no split that
    violates it is ever made), and that no allowed split was left out: a bin above MIN_LEVEL
    whose non-empty halves both qualify stays whole only when the sketch has MAX_COARSE_BINS
    bins (else accuracy is thrown away)."""
    threshold = partials.coarse_threshold(k)
    sketch = partials.coarsen(bins_of(readings), threshold)
    if sketch is None:  # withheld: even the coarsest bins fail (beyond the few foldable outer readings)
        top: dict[int, list[tuple[str, float]]] = {}
        for who, v in readings:
            top.setdefault(partials.ordinal(*bin_of(v)) >> partials.MAX_LEVEL, []).append((who, v))
        assert any(not partials.releasable(len(r), len({w for w, _ in r}), threshold) for r in top.values()) \
            or len(top) > partials.MAX_COARSE_BINS
        return
    assert_every_bin_follows_the_rule(readings, sketch, threshold)
    for b, _ in released_bins(sketch):
        if b.level == partials.MIN_LEVEL:
            continue
        halves = [[(w, v) for w, v in readings if h.first <= partials.ordinal(*bin_of(v)) < h.end] for h in b.halves()]
        halves = [h for h in halves if h]
        if all(partials.releasable(len(h), len({w for w, _ in h}), threshold) for h in halves):
            assert len(halves) == 2 and len(sketch.intervals) == partials.MAX_COARSE_BINS, f"{b} could be split"


def test_a_split_that_breaks_the_rule_is_never_made():
    """Three stations: A and B read 20 values near 10 together, C alone reads 10 values near
    100. With k = 1 (threshold 2) C's readings cannot have a bin of their own; they are more
    than MIN_BIN_READINGS - 1, so they cannot fold either: the bin stays wide enough to mix
    them with A's and B's, and C's station is never singled out."""
    readings = [(w, 10.0 + 0.1 * i) for i in range(10) for w in "AB"] + [("C", 100.0 + i) for i in range(10)]
    sketch = partials.coarsen(bins_of(readings), 2)
    assert sketch is not None
    assert_every_bin_follows_the_rule(readings, sketch, 2)
    [holding_c] = [b for b, _ in released_bins(sketch) if b.first <= partials.ordinal(*bin_of(100.0)) < b.end]
    assert holding_c.first <= partials.ordinal(*bin_of(10.0)) < holding_c.end, "C's readings got a bin of their own"


def test_a_lone_tail_folds_in_and_the_rest_stays_fine():
    """One reading of 0.7 under 39 of 1.5 to 40 (a dyadic boundary at 1.0): the tail reading
    is counted in the lowest bin instead of holding the whole cell in one bin 10^17 wide."""
    readings = [("A" if i % 2 else "B", 1.5 * 1.09 ** i) for i in range(39)] + [("A", 0.7)]
    sketch = partials.coarsen(bins_of(readings), 2)
    assert sketch is not None and len(sketch.intervals) > 1
    assert max(b.level for b in sketch.intervals) <= 8
    assert_every_bin_follows_the_rule(readings, sketch, 2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.5, 500.0), min_size=10, max_size=200), st.floats(0.01, 0.99))
def test_a_released_quantile_is_within_the_documented_bound(values, q):
    """docs/querying.md 7.6: the reported quantile lies inside the bin holding its rank, and so
    does the true reading at that rank unless it is one of the few folded outer readings; the
    error is then at most gamma^(2^L) - 1 for that bin's level L (17.3 % at level 3)."""
    readings = [(f"s{i % 3}", v) for i, v in enumerate(values)]
    sketch = partials.coarsen(bins_of(readings), 2)
    if sketch is None:
        return
    got = partials.coarse_quantile(sketch, q)
    bins = released_bins(sketch)
    rank, before, holding = q * (len(values) - 1), 0, bins[-1][0]
    for b, n in bins:
        if before + n > rank:
            holding = b
            break
        before += n
    low, high = partials.ordinal_value(holding.first), partials.ordinal_value(holding.end)
    lo_edge, hi_edge = low / (2 / (gamma() + 1)) / gamma(), high / (2 / (gamma() + 1)) / gamma()  # the fine bins' edges
    assert lo_edge * (1 - 1e-12) <= got <= hi_edge * (1 + 1e-12), (got, holding)
    ordered = sorted(values)
    true = ordered[math.floor(rank)]
    below = sum(1 for v in values if partials.ordinal(*bin_of(v)) < bins[0][0].first)
    above = sum(1 for v in values if partials.ordinal(*bin_of(v)) >= bins[-1][0].end)
    if below <= math.floor(rank) < len(values) - above:
        bound = gamma() ** (2 ** holding.level) - 1
        assert abs(got - true) / true <= bound + 1e-12


def test_a_per_municipality_quantile_is_read_from_the_coarse_sketch():
    """build() releases, per municipality, the coarse sketch's quantile, and withholds a cell
    without a coarse sketch (it could not be coarsened enough) even with enough contributors."""
    row = CellRow(0, 30, 0.0, 0.0, 0.0, 0.0, 3)
    readings = [(f"s{i % 3}", 10.0 + i) for i in range(30)]
    sketch = partials.coarsen(bins_of(readings), 3)
    assert sketch is not None
    [cell] = partials.build(b"d" * 32, "hub", "4601", "", 3, "4601", [row], 1, "quantile", quantile=0.5, coarse={0: sketch}).cells
    assert not cell.suppressed and cell.value == partials.coarse_quantile(sketch, 0.5)
    assert not cell.HasField("coarse"), "per municipality only the final value leaves"
    [cell] = partials.build(b"d" * 32, "hub", "4601", "", 3, "4601", [row], 1, "quantile", quantile=0.5, coarse={}).cells
    assert cell.suppressed


# -- the sealed partial's size -----------------------------------------------------------------------

AGREEMENT = "urn:uuid:00000000-0000-4000-8000-000000000000"
PROVIDER = "0123456789abcdef0123456789abcdef"


def sealed_len(spec: query_pb2.QuerySpec, result: query_pb2.PartialResult) -> int:
    key = sealing.public_raw(sealing.new_answer_key())
    signed = query_pb2.SignedPartial(partial=result.SerializeToString(), signature=bytes(64), provider_public_key=bytes(32))
    size = partials.padded_size(spec, PROVIDER, "4601", AGREEMENT)
    return len(sealing.seal(signed.SerializeToString(), key, b"d" * 32, PROVIDER, size))


def test_withheld_cells_and_counts_do_not_change_the_sealed_length():
    """The attacker's three partials (all released; 5 of 10 withheld; counts 2000 times larger)
    sealed to three lengths. Now one length."""
    spec = query_pb2.QuerySpec(aggregate="mean", group_by="region", bucket="day", start_ms=0, end_ms=10 * 86_400_000)
    big = [CellRow(d * 86_400_000, 48, 300.0, 0.0, 0.0, 0.0, 4) for d in range(10)]
    small = [CellRow(d * 86_400_000, 48, 300.0, 0.0, 0.0, 0.0, 4 if d % 2 else 2) for d in range(10)]
    many = [CellRow(d * 86_400_000, 100_000, 300.0, 0.0, 0.0, 0.0, 400) for d in range(10)]
    sizes = {sealed_len(spec, partials.build(b"d" * 32, PROVIDER, "4601", AGREEMENT, 3, "region", rows, 1, "mean"))
             for rows in (big, small, many, [])}
    assert len(sizes) == 1, sizes


def test_the_shape_of_the_coarse_bins_does_not_change_the_sealed_length():
    """Region-wide quantiles: a day's partial of one wide bin, of 32 fine bins (folded tails
    and all), of withheld cells, and of no cells: one sealed length. The number and place of
    the variable-width bins is data, and the entry hub must not see it."""
    spec = query_pb2.QuerySpec(aggregate="quantile", quantile=0.5, group_by="region", bucket="day", start_ms=0,
                               end_ms=3 * 86_400_000)
    one_bin = [(w, 10.0) for w in "AB" for _ in range(10)]
    many_bins = [(who, 2.0 * 1.5 ** i) for i in range(40) for who in "AB" for _ in range(5)] + [("A", 0.01)]
    sizes = set()
    for readings in (one_bin, many_bins):
        sketch = partials.coarsen(bins_of(readings), 2)
        assert sketch is not None
        rows = [CellRow(d * 86_400_000, len(readings), 0.0, 0.0, 0.0, 0.0, 2) for d in range(3)]
        sizes.add(sealed_len(spec, partials.build(b"d" * 32, PROVIDER, "4601", AGREEMENT, 1, "region", rows, 1, "quantile",
                                                  quantile=0.5, coarse={r.bucket_start_ms: sketch for r in rows})))
        print(f"{len(sketch.intervals)} bins: sealed {sizes}")
    withheld = [CellRow(d * 86_400_000, 30, 0.0, 0.0, 0.0, 0.0, 2) for d in range(3)]
    sizes.add(sealed_len(spec, partials.build(b"d" * 32, PROVIDER, "4601", AGREEMENT, 1, "region", withheld, 1, "quantile",
                                              quantile=0.5, coarse={})))
    sizes.add(sealed_len(spec, partials.build(b"d" * 32, PROVIDER, "4601", AGREEMENT, 1, "region", [], 1, "quantile")))
    assert len(sizes) == 1, sizes


cell_rows = st.lists(st.builds(
    CellRow, st.integers(0, 9).map(lambda d: d * 86_400_000), st.integers(0, 2**64 - 1),
    st.floats(allow_nan=False), st.floats(allow_nan=False), st.floats(allow_nan=False), st.floats(allow_nan=False),
    st.integers(0, 2**32 - 1)), max_size=10, unique_by=lambda r: r.bucket_start_ms)
LARGEST_ORDINAL = partials.ordinal(*bin_of(1.7e308))
coarse_bins = st.integers(partials.MIN_LEVEL, partials.MAX_LEVEL).flatmap(lambda level: st.builds(
    query_pb2.CoarseBin, level=st.just(level), index=st.integers(-(LARGEST_ORDINAL >> level) - 1, LARGEST_ORDINAL >> level),
    count=st.integers(1, 2**64 - 1)))
coarse_sketches = st.lists(coarse_bins, max_size=partials.MAX_COARSE_BINS).map(lambda bins: query_pb2.CoarseSketch(intervals=bins))


@settings(max_examples=300, deadline=None)
@given(cell_rows, st.sampled_from(sorted(partials.RELEASED_FIELDS)), st.sampled_from(["region", "4601"]),
       st.integers(0, 2**32 - 1), st.booleans(), coarse_sketches, st.integers(0, 2**63 - 1), st.integers(0, 2**64 - 1))
def test_every_partial_of_a_query_fits_its_padded_size(rows, aggregate, group, k, noisy, sketch, computed_at, spent):
    """Whatever the provider holds (any counts, sums, contributors, withheld cells, coarse
    sketches, DP figures), its signed partial fits the query's padded size: sealing never fails
    and the length is that size plus HPKE's fixed 48 bytes."""
    spec = query_pb2.QuerySpec(aggregate=aggregate, group_by="region" if group == "region" else "municipality", bucket="day",
                               start_ms=0, end_ms=10 * 86_400_000)
    result = partials.build(b"d" * 32, PROVIDER, "4601", AGREEMENT, k, group, rows, computed_at, aggregate, noisy=noisy,
                            quantile=0.5, coarse={r.bucket_start_ms: sketch for r in rows})
    result.dp_budget_micro, result.dp_spent_micro = spent, spent
    assert sealed_len(spec, result) == partials.padded_size(spec, PROVIDER, "4601", AGREEMENT) + 48


@pytest.mark.parametrize("n", [1, 31])
@pytest.mark.parametrize(("aggregate", "group"), [(a, g) for a in sorted(partials.RELEASED_FIELDS) for g in ("region", "4601")])
def test_the_padded_size_is_that_of_the_largest_partial(aggregate, group, n):
    """The largest partial a provider can build for the query (every bucket present, every
    count and contributor count at its maximum, doubles set, 32 coarse bins at the extreme
    keys) fits, and the padded size exceeds it by at most the suppressed/noisy flags a
    released cell cannot carry together (4 bytes a cell) plus the marker: the padding is an
    upper bound, and not a loose one."""
    assert 4096 <= partials.LARGEST_COARSE_INDEX + 1 < 8192  # so -4000 encodes as long as any real key
    spec = query_pb2.QuerySpec(aggregate=aggregate, group_by="region" if group == "region" else "municipality", bucket="day",
                               start_ms=ms(2019, 1), end_ms=ms(2019, 1) + n * DAY)
    rows = [CellRow(spec.start_ms + d * DAY, 2**64 - 1, 1.5, 2.5, -1.0, 1.0, 2**32 - 1) for d in range(n)]
    # keys of the longest zigzag encoding real readings reach (2 bytes: |index| < 8192), and
    # values a per-municipality quantile can still be read from
    widest = query_pb2.CoarseSketch(intervals=[query_pb2.CoarseBin(level=partials.MIN_LEVEL, index=-4000 + i, count=2**64 - 1)
                                               for i in range(partials.MAX_COARSE_BINS)])
    # k = 1 so that every cell is released (min/max need max(k, 3) + 2 contributors), then the
    # header's min_group_size at its longest encoding
    result = partials.build(b"d" * 32, PROVIDER, "4601", AGREEMENT, 1, group, rows, 2**63 - 1, aggregate,
                            quantile=0.5, coarse={r.bucket_start_ms: widest for r in rows})
    result.min_group_size = 2**32 - 1
    result.dp_budget_micro = result.dp_spent_micro = 2**64 - 1
    signed = query_pb2.SignedPartial(partial=result.SerializeToString(), signature=bytes(64), provider_public_key=bytes(32))
    size = partials.padded_size(spec, PROVIDER, "4601", AGREEMENT)
    assert len(signed.SerializeToString()) + 1 <= size <= len(signed.SerializeToString()) + 1 + 4 * n


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 100))
def test_padding_strips_back_to_the_exact_bytes(plain, extra):
    padded = sealing.pad(plain, len(plain) + extra)
    assert len(padded) == len(plain) + extra
    assert sealing.unpad(padded) == plain


@pytest.mark.parametrize("padded", [b"", b"\x00\x00", b"abc", b"abc\x81\x00", b"\x80abc"])
def test_a_partial_without_the_padding_marker_is_refused(padded):
    with pytest.raises(sealing.SealError, match="not padded"):
        sealing.unpad(padded)


def test_a_partial_larger_than_its_padded_size_is_not_sealed():
    with pytest.raises(sealing.SealError, match="does not fit"):
        sealing.pad(b"x" * 10, 10)


def test_a_query_whose_padded_partial_is_too_large_is_refused_before_anything_runs():
    """Ten years of hourly region-wide quantiles would pad each partial to hundreds of MiB:
    refused (INVALID_ARGUMENT) by check_releasable, which the entry hub and every provider run."""
    key = sealing.public_raw(sealing.new_answer_key())
    huge = query_pb2.QuerySpec(aggregate="quantile", quantile=0.5, group_by="region", bucket="hour", start_ms=0,
                               end_ms=3650 * 86_400_000, answer_key=key)
    with pytest.raises(Rejected) as refused:
        check_releasable(huge)
    assert refused.value.reason is Reason.INVALID_REQUEST and "too many cells" in refused.value.message
    month = query_pb2.QuerySpec(aggregate="quantile", quantile=0.5, group_by="region", bucket="day", start_ms=0,
                                end_ms=31 * 86_400_000, answer_key=key)
    check_releasable(month)
    assert partials.padded_size(month, PROVIDER, "4601", AGREEMENT) < partials.MAX_SEALED_PARTIAL_BYTES


# -- merging variable-width sketches (the asker, docs/querying.md 7.6) ---------------------------------

hub_sketches = st.lists(st.tuples(st.sampled_from("ABCD"), st.floats(0.1, 1e4) | st.sampled_from([0.0, -2.0, 1.0, 10.0])),
                        min_size=10, max_size=120).map(lambda r: partials.coarsen(bins_of(r), 2)).filter(lambda s: s is not None)


@settings(max_examples=200, deadline=None)
@given(hub_sketches, hub_sketches, hub_sketches)
def test_merging_is_commutative_associative_count_preserving_and_never_finer(a, b, c):
    ab, ba = partials.merge_coarse(a, b), partials.merge_coarse(b, a)
    assert ab == ba
    assert partials.merge_coarse(ab, c) == partials.merge_coarse(a, partials.merge_coarse(b, c))
    merged = released_bins(partials.merge_coarse(ab, c))
    assert sum(n for _, n in merged) == sum(x.count for s in (a, b, c) for x in s.intervals)
    assert all(x.end <= y.first for (x, _), (y, _) in itertools.pairwise(merged)), "merged bins overlap"
    for s in (a, b, c):
        for given_bin, _ in released_bins(s):
            holders = [m for m, _ in merged if m.first <= given_bin.first and given_bin.end <= m.end]
            assert len(holders) == 1, f"{given_bin} is not inside exactly one merged bin: finer than an input"


def test_a_merged_sketch_of_an_impossible_level_is_refused():
    bad = query_pb2.CoarseSketch(intervals=[query_pb2.CoarseBin(level=0, index=2050, count=10)])
    with pytest.raises(partials.PartialError, match="level 0"):
        partials.merge_coarse(None, bad)


def test_the_older_uniform_form_is_still_read():
    """A hub before this version sends (level, bins): it merges as bins (level, index, count)."""
    old = query_pb2.CoarseSketch(level=4, bins={130: 10, 131: 12})
    new = query_pb2.CoarseSketch(intervals=[query_pb2.CoarseBin(level=3, index=262, count=5)])
    merged = released_bins(partials.merge_coarse(old, new))
    assert merged == [(partials.DyadicBin(4, 130), 10), (partials.DyadicBin(4, 131), 17)]


def sealed_len_under(spec: query_pb2.QuerySpec, result: query_pb2.PartialResult, grain: str) -> int:
    key = sealing.public_raw(sealing.new_answer_key())
    signed = query_pb2.SignedPartial(partial=result.SerializeToString(), signature=bytes(64), provider_public_key=bytes(32))
    size = partials.padded_size(spec, PROVIDER, "4601", AGREEMENT, grain=grain)
    return len(sealing.seal(signed.SerializeToString(), key, b"d" * 32, PROVIDER, size))


subcell_lists = st.lists(coarse_sketches, max_size=7)


@settings(max_examples=100, deadline=None)
@given(cell_rows, st.integers(0, 2**32 - 1), subcell_lists, st.integers(0, 2**63 - 1))
def test_a_region_wide_quantile_with_sub_cell_sketches_seals_to_one_length(rows, k, subcells, computed_at):
    """Region-wide quantiles by week under a day's grain: each week's partial carries up to
    seven sub-cell sketches (data: how many days hold readings, how many bins each), and the
    sealed length is the query's padded size whatever they are, withheld cells and all."""
    spec = query_pb2.QuerySpec(aggregate="quantile", quantile=0.5, group_by="region", bucket="week", start_ms=0,
                               end_ms=10 * 7 * 86_400_000)
    weeks = [dataclasses.replace(r, bucket_start_ms=r.bucket_start_ms * 7) for r in rows]
    mixture = partials.mixture_cells(spec, "day")
    assert mixture == {start for start, _ in buckets("week", spec.start_ms, spec.end_ms)}
    result = partials.build(b"d" * 32, PROVIDER, "4601", AGREEMENT, k, "region", weeks, computed_at, "quantile",
                            quantile=0.5, coarse={r.bucket_start_ms: subcells[0] if subcells else query_pb2.CoarseSketch()
                                                  for r in weeks},
                            parts={r.bucket_start_ms: subcells for r in weeks}, mixture=mixture)
    assert sealed_len_under(spec, result, "day") == partials.padded_size(spec, PROVIDER, "4601", AGREEMENT, grain="day") + 48


def test_the_padded_size_with_sub_cell_sketches_is_that_of_the_largest_partial():
    """A month under a day's grain: 31 sub-cell sketches of 32 bins at their longest fit, and
    the padding exceeds them by at most the flags a released cell cannot carry (4 bytes)."""
    spec = query_pb2.QuerySpec(aggregate="quantile", quantile=0.5, group_by="region", bucket="month",
                               start_ms=ms(2019, 1), end_ms=ms(2019, 2))
    widest = query_pb2.CoarseSketch(intervals=[query_pb2.CoarseBin(level=partials.MIN_LEVEL, index=-4000 + i, count=2**64 - 1)
                                               for i in range(partials.MAX_COARSE_BINS)])
    row = CellRow(spec.start_ms, 2**64 - 1, 1.5, 2.5, -1.0, 1.0, 2**32 - 1)
    result = partials.build(b"d" * 32, PROVIDER, "4601", AGREEMENT, 1, "region", [row], 2**63 - 1, "quantile", quantile=0.5,
                            coarse={row.bucket_start_ms: widest}, parts={row.bucket_start_ms: [widest] * 31},
                            mixture=partials.mixture_cells(spec, "day"))
    assert len(result.cells[0].subcells) == 31
    result.min_group_size = 2**32 - 1
    result.dp_budget_micro = result.dp_spent_micro = 2**64 - 1
    signed = query_pb2.SignedPartial(partial=result.SerializeToString(), signature=bytes(64), provider_public_key=bytes(32))
    size = partials.padded_size(spec, PROVIDER, "4601", AGREEMENT, grain="day")
    assert len(signed.SerializeToString()) + 1 <= size <= len(signed.SerializeToString()) + 1 + 4


@pytest.mark.parametrize(("bucket", "end", "grain", "carried"), [
    ("month", ms(2020, 1), "day", 12),      # 28..31 days a month
    ("week", ms(2019, 1) + 364 * DAY, "day", 52),
    ("window", ms(2020, 1), "day", 0),      # 365 days: more than 32, only the merge
    ("day", ms(2019, 2), "day", 0),         # one sub-cell: the merge is the same sketch
    ("day", ms(2020, 1), "hour", 0),        # 24 hours each, but 5 MB padded: over the limit, for every cell
    ("day", ms(2019, 2), "hour", 31),       # 24 hours each, within the limit
])
def test_which_cells_carry_sub_cell_sketches_is_decided_by_the_query(bucket, end, grain, carried):
    spec = query_pb2.QuerySpec(aggregate="quantile", quantile=0.5, group_by="region", bucket=bucket, start_ms=ms(2019, 1), end_ms=end)
    assert len(partials.mixture_cells(spec, grain)) == carried
    assert partials.padded_size(spec, PROVIDER, "4601", AGREEMENT, grain=grain) <= partials.MAX_SEALED_PARTIAL_BYTES
    assert not partials.mixture_cells(spec, None)  # a hub's own data: no sub-cells
    per_municipality = query_pb2.QuerySpec(aggregate="quantile", quantile=0.5, group_by="municipality", bucket=bucket,
                                           start_ms=ms(2019, 1), end_ms=end)
    assert not partials.mixture_cells(per_municipality, grain)  # per municipality: the value only
