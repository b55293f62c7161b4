"""Extent differencing of quantile sketches (review3 finding 1): the histogram of any union of
sub-cells minus the histogram of any sub-union is never finer than the rule (federation/partials.py
`coarse_sketches` with sub-cells; docs/privacy.md 2, rule 4). The live attack is
tests/privacy/attacks/test_attack_quantile_extent_difference.py."""

from __future__ import annotations

import csv
import datetime as dt
import math
import statistics
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from federation import partials
from node.sketch import bin_of
from node.storage.base import CellRow

Row = tuple[int, int, int, str, int]  # (sub-cell, sign, key, contributor, readings)
CENTRES = (300, 460, 700, 1000)  # fine keys of clusters (values near 20, 100, 1100 and 2e4)

reading = st.tuples(st.integers(0, 3), st.sampled_from(CENTRES), st.integers(0, 24))  # contributor, cluster, offset
subcell = st.lists(reading, max_size=60)


def rows_of(subcells: list[list[tuple[int, int, int]]], chosen: set[int]) -> list[Row]:
    return [(s, 1, centre + offset, f"station-{who}", 1)
            for s in sorted(chosen) for who, centre, offset in subcells[s]]


def histogram(subcells: list[list[tuple[int, int, int]]], chosen: set[int], threshold: int) -> dict[partials.DyadicBin, int] | None:
    """The released histogram of one cell made of the chosen sub-cells; None if withheld."""
    sketch = partials.coarse_sketches(rows_of(subcells, chosen), threshold, cell_of=lambda _: 0).get(0)
    return partials.dyadic_bins([sketch]) if sketch is not None else None


def on_common(a: dict[partials.DyadicBin, int], b: dict[partials.DyadicBin, int]) -> tuple[dict[partials.DyadicBin, int], ...]:
    """Both histograms on their common coarsening (dyadic bins nest)."""
    outer = partials.dyadic_bins([partials.sketch_of(a), partials.sketch_of(b)])

    def onto(h: dict[partials.DyadicBin, int]) -> dict[partials.DyadicBin, int]:
        out = dict.fromkeys(outer, 0)
        for bin_, n in h.items():
            while bin_ not in out:
                bin_ = bin_.parent()
            out[bin_] += n
        return out

    return onto(a), onto(b)


# The attack's shape: two sub-cells of two clusters, a third of one cluster and ONE outlier
# (folded into the cluster when the third is coarsened alone).
_TWO_CLUSTERS = [(who, centre, h % 3) for who in range(3) for h in range(12) for centre in (300, 460)]
_ONE_OUTLIER = [(who, 300, h % 3) for who in range(3) for h in range(8)] + [(0, 460, 1)]


@settings(max_examples=300, deadline=None)
@given(st.lists(subcell, min_size=2, max_size=5), st.data(), st.integers(1, 3))
@example([_TWO_CLUSTERS, _TWO_CLUSTERS, _ONE_OUTLIER], None, 2)
def test_a_difference_of_two_extents_is_never_finer_than_the_rule(subcells, data, k):
    threshold = partials.coarse_threshold(k)
    n = len(subcells)
    if data is None:  # the explicit example: days 1-3 minus days 1-2
        union, part = {0, 1, 2}, {0, 1}
    else:
        union = set(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))
        part = set(data.draw(st.sets(st.sampled_from(sorted(union)), max_size=len(union) - 1))) if len(union) > 1 else set()
    whole = histogram(subcells, union, threshold)
    if whole is None:
        return
    some = histogram(subcells, part, threshold) if part else {}
    if some is None:
        return
    a, b = on_common(whole, some)
    rest = rows_of(subcells, union - part)
    for bin_, n_whole in a.items():
        difference = n_whole - b[bin_]
        assert difference >= 0, f"a sub-union holds more readings in {bin_} than its union"
        if difference == 0:
            continue
        assert bin_.level >= partials.MIN_LEVEL
        assert difference >= partials.MIN_BIN_READINGS, (
            f"the difference of two extents holds {difference} readings in {bin_}: fewer than {partials.MIN_BIN_READINGS}")
        inside = {who for _, sg, key, who, _ in rest if bin_.first <= partials.ordinal(sg, key) < bin_.end}
        assert len(inside) >= threshold, f"the difference's bin {bin_} holds readings of {len(inside)} contributors"


@settings(max_examples=100, deadline=None)
@given(st.lists(subcell, min_size=1, max_size=40))
def test_a_cell_of_many_subcells_stays_within_the_bin_bound(subcells):
    """However many sub-cells merge, a cell's sketch has at most MAX_COARSE_BINS bins and the
    cell's count: none of its readings dropped."""
    chosen = set(range(len(subcells)))
    sketch = partials.coarse_sketches(rows_of(subcells, chosen), 2, cell_of=lambda _: 0).get(0)
    if sketch is None:
        return
    assert len(sketch.intervals) <= partials.MAX_COARSE_BINS
    assert sum(b.count for b in sketch.intervals) == sum(len(s) for s in subcells)


def test_bounded_merges_up_the_dyadic_tree_until_the_bound_holds():
    """Forty level-3 bins side by side: merged pairwise from the finest common ancestor up, never
    finer than the input, counts kept."""
    bins = {partials.DyadicBin(3, 300 + i): 10 + i for i in range(40)}
    out = partials.bounded(bins)
    assert len(out) <= partials.MAX_COARSE_BINS
    assert sum(out.values()) == sum(bins.values())
    for b in bins:  # every input bin lies inside exactly one output bin
        assert sum(1 for o in out if o.first <= b.first and b.end <= o.end) == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(subcell, min_size=1, max_size=6), st.lists(st.floats(0, 1), min_size=2, max_size=6))
def test_the_mixture_quantile_is_monotone_and_inside_the_bins(subcells, qs):
    parts = partials.subcell_sketches(rows_of(subcells, set(range(len(subcells)))), 2, cell_of=lambda _: 0).get(0)
    if not parts:
        return
    values = [partials.mixture_quantile(parts, q) for q in sorted(qs)]
    assert values == sorted(values)
    bins = [partials.DyadicBin(b.level, b.index) for s in parts for b in s.intervals]
    low, high = min(partials.value_in_bin(b, 0.0) for b in bins), max(partials.value_in_bin(b, 1.0) for b in bins)
    assert all(low <= v <= high for v in values)
    if len(parts) == 1:
        assert values == [partials.coarse_quantile(parts[0], q) for q in sorted(qs)]


def test_a_month_read_from_the_mixture_is_closer_than_from_the_merged_bins():
    """The shipped 2019 PM2.5 readings of five stations in one hub, by month under a day's
    grain: the relative error of each month's q = 0.1, 0.5, 0.9 (36 values) read from the
    mixture of its days' sketches, against reading the merge of them (what a region-wide
    answer carries), each against the true order statistic (bench/quantile_error.py: 10.7 %
    and 79 % median)."""
    data = Path(__file__).resolve().parents[2] / "node" / "data" / "air-quality-norway"
    months: dict[str, list[tuple[int, int, int, str, int]]] = {}
    values: dict[str, list[float]] = {}
    for station in ("Valand", "Knarrdalstranda", "Nedre-Langgate", "Nygaardsgata", "Klosterhaugen"):
        with (data / f"{station}.csv").open(newline="") as f:
            for r in csv.DictReader(f):
                if r["pm25"]:
                    v, day = float(r["pm25"]), dt.date.fromisoformat(r["date"])
                    months.setdefault(r["date"][:7], []).append((day.toordinal(), *bin_of(v), station, 1))
                    values.setdefault(r["date"][:7], []).append(v)
    errors: dict[str, list[float]] = {"mixture": [], "merged": []}
    for month, rows in months.items():
        parts = partials.subcell_sketches(rows, partials.coarse_threshold(3), cell_of=lambda _: 0)[0]
        ordered = sorted(values[month])
        for q in (0.1, 0.5, 0.9):
            true = ordered[math.floor(q * (len(ordered) - 1))]
            if true >= 1.0:
                errors["mixture"].append(abs(partials.mixture_quantile(parts, q) - true) / true)
                errors["merged"].append(abs(partials.coarse_quantile(partials.merged(parts), q) - true) / true)
    mixture, merged = statistics.median(errors["mixture"]), statistics.median(errors["merged"])
    print(f"median relative error over {len(errors['mixture'])} month-quantiles: mixture {mixture:.1%}, merged {merged:.1%}")
    assert mixture < 0.2 and mixture < merged / 2
    # what a per-municipality answer releases is read so (partials.build with the cell's parts)
    parts = partials.subcell_sketches(months["2019-01"], 3, cell_of=lambda _: 0)[0]
    row = CellRow(0, len(values["2019-01"]), 0.0, 0.0, 0.0, 0.0, 5)
    [cell] = partials.build(b"d" * 32, "hub", "4601", "", 3, "4601", [row], 1, "quantile", quantile=0.5,
                            coarse={0: partials.merged(parts)}, parts={0: parts}).cells
    assert cell.value == partials.mixture_quantile(parts, 0.5) != partials.coarse_quantile(partials.merged(parts), 0.5)


# -- region-wide: the asker reads the mixture of every hub's sub-cell sketches --------------------

def value_edges(b: partials.DyadicBin) -> tuple[float, float]:
    """The values bin b's readings can take, clipped as value_in_bin clips (any level)."""
    def clip(x: int) -> int:
        return min(max(x, partials.LOWEST_EDGE), partials.HIGHEST_EDGE)
    g = partials.GAMMA
    if b.first > 0:
        return float(g ** clip(b.first - partials.ORDINAL_OFFSET - 1)), float(g ** clip(b.end - partials.ORDINAL_OFFSET - 1))
    if b.end <= 0:
        return -float(g ** clip(-b.first - partials.ORDINAL_OFFSET)), -float(g ** clip(-b.end - partials.ORDINAL_OFFSET))
    return 0.0, float(g ** clip(b.end - partials.ORDINAL_OFFSET - 1))


def holding(bins: dict[partials.DyadicBin, int], rank: int) -> partials.DyadicBin:
    before = 0
    for b, n in sorted(bins.items(), key=lambda item: item[0].first):
        if before + n > rank:
            return b
        before += n
    raise AssertionError(rank)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(subcell, min_size=1, max_size=5), min_size=1, max_size=3), st.floats(0, 1))
def test_the_mixture_of_sub_cell_bins_lies_within_the_merged_bin_holding_the_rank(hubs, q):
    """Every hub's per-sub-cell sketches (coarsened by the rule), read as the asker reads them
    (the mixture), give a value inside the bin of their merge (`merged`, bounded to 32 bins: the
    form that went on the wire before) that holds the rank: the mixture only places readings
    inside bins, never outside them. For a fractional rank r, between the bins holding floor(r)
    and ceil(r)."""
    components = [sketch for subcells in hubs
                  for sketch in partials.coarse_sketches(rows_of(subcells, set(range(len(subcells)))), 2).values()]
    assume(len(components) >= 2)
    merged = partials.dyadic_bins([partials.merged(components)])
    rank = q * (sum(merged.values()) - 1)
    low, _ = value_edges(holding(merged, math.floor(rank)))
    _, high = value_edges(holding(merged, math.ceil(rank)))
    value = partials.mixture_quantile(components, q)
    assert low * (1 - 1e-12) <= value <= high * (1 + 1e-12), (low, value, high)


def coarse_sketch(bins: list[tuple[int, int, int]]) -> partials.query_pb2.CoarseSketch:
    """(level, level-3 index, count) bins, nested ones merged into a valid sketch."""
    out = [partials.sketch_of({partials.DyadicBin(level, index >> (level - 3)): n}) for level, index, n in bins]
    return partials.sketch_of(partials.dyadic_bins(out))


sketch_bins = st.lists(st.tuples(st.integers(3, 10), st.integers(-400, 400), st.integers(1, 30)), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(sketch_bins, min_size=2, max_size=4))
def test_the_bisection_finds_the_placed_reading_at_every_rank(sketches):
    """`_placed_at_rank` (what mixture_quantile uses beyond PLACED_LIMIT readings: the cost is
    then bounded by the bins, whatever counts a provider claims) is exactly the reading at that
    rank of all readings placed and sorted, at every rank."""
    bins = [(b, n) for s in map(coarse_sketch, sketches) for b, n in partials.dyadic_bins([s]).items()]
    placed = sorted(partials.value_in_bin(b, j / (n + 1)) for b, n in bins for j in range(1, n + 1))
    assert [partials._placed_at_rank(bins, i) for i in range(len(placed))] == placed


def test_the_mixture_of_huge_claimed_counts_is_bounded():
    """A provider's partial claiming 2^62 readings in a bin: the asker's read takes milliseconds
    (placing them would never end), and lies in the bins."""
    huge = [coarse_sketch([(3, 260, 2**62)]), coarse_sketch([(3, 268, 10), (4, 300, 2**40)])]
    value = partials.mixture_quantile(huge, 0.5)
    low, _ = value_edges(partials.DyadicBin(3, 260 >> 0))
    _, high = value_edges(partials.DyadicBin(3, 260))
    assert low <= value <= high


def test_the_askers_mixture_equals_the_hubs_for_one_hub():
    """One hub's region-wide month under a day's grain: the partial carries the days' sketches,
    and the asker's row (partials.merge) is exactly what the same hub releases per municipality
    (mixture_quantile of the same sketches), not the merged bins' read."""
    rows = [(day, 1, centre + offset, f"station-{who}", 1)
            for day in range(28) for who in range(4) for centre in CENTRES for offset in (day % 5, 7, 11)]
    parts = partials.subcell_sketches(rows, 2, cell_of=lambda _: 0)[0]
    assert len(parts) == 28
    spec = partials.query_pb2.QuerySpec(aggregate="quantile", quantile=0.37, group_by="region", bucket="month",
                                        start_ms=0, end_ms=28 * 86_400_000)
    assert partials.mixture_cells(spec, "day") == {0}
    cell = CellRow(0, len(rows), 0.0, 0.0, 0.0, 0.0, 4)
    partial = partials.build(b"d" * 32, "hub", "4601", "agreement", 2, "region", [cell], 1, "quantile", quantile=0.37,
                             coarse={0: partials.merged(parts)}, parts={0: parts}, mixture=partials.mixture_cells(spec, "day"))
    assert list(partial.cells[0].subcells) == parts
    [row] = partials.merge([partial], spec)
    [own] = partials.build(b"d" * 32, "hub", "4601", "", 2, "4601", [cell], 1, "quantile", quantile=0.37,
                           coarse={0: partials.merged(parts)}, parts={0: parts}).cells
    assert row.value == own.value == partials.mixture_quantile(parts, 0.37)
    assert row.value != partials.coarse_quantile(partials.merged(parts), 0.37)
    # two hubs: the mixture over both hubs' days
    [both] = partials.merge([partial, partial], spec)
    assert both.value == partials.mixture_quantile(parts + parts, 0.37)


def test_a_cell_with_more_than_32_sub_cell_sketches_is_refused():
    """The asker's bound: a provider's cell of 33 sub-cell sketches is an error, not read."""
    spec = partials.query_pb2.QuerySpec(aggregate="quantile", quantile=0.5, group_by="region", bucket="month",
                                        start_ms=0, end_ms=28 * 86_400_000)
    sketch = coarse_sketch([(3, 260, 10)])
    cell = partials.query_pb2.Cell(group="region", bucket_start_ms=0, count=330, contributors=2, coarse=sketch,
                                   subcells=[sketch] * (partials.MAX_SUBCELL_SKETCHES + 1))
    with pytest.raises(partials.PartialError, match="33 sub-cell sketches"):
        partials.merge([partials.query_pb2.PartialResult(cells=[cell])], spec)
    del cell.subcells[-1]
    [row] = partials.merge([partials.query_pb2.PartialResult(cells=[cell])], spec)
    assert row.value == partials.mixture_quantile([sketch] * partials.MAX_SUBCELL_SKETCHES, 0.5)
