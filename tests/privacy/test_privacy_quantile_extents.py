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

from hypothesis import example, given, settings
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
