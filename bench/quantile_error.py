"""What the quantile rule costs in accuracy, on the shipped PM2.5 readings (issue 9).

    .venv/bin/python -m bench.quantile_error

The five shipped stations (node/data/air-quality-norway/, hourly PM2.5 of 2019) are placed in
hubs as three layouts, and every daily and monthly cell's quantiles (q = 0.1, 0.5, 0.9) are
computed the way a provider releases them, under four rules, all in the same run:

* unprotected (before issue 9's second round): per municipality, the fine DDSketch's quantile
  (1 %); region-wide, each hub's sketch coarsened only until every bin mixes >= max(k, 2)
  contributors. Shown for scale: it released single readings;
* uniform (the baseline): ONE level per cell, the finest L >= MIN_LEVEL at which every bin has
  >= max(k, 2) contributors and >= MIN_BIN_READINGS readings, <= MAX_COARSE_BINS bins; merged at
  the coarsest level; the quantile is the middle of the bin holding the rank;
* dyadic, middle: federation/partials.py `coarsen` (variable-width bins under the same rule,
  `dyadic_bins` to merge), the quantile still the bin's middle (isolates the bins' effect);
* dyadic, interpolated: the same bins, the quantile interpolated by rank (`coarse_quantile`),
  each cell coarsened whole: what a hub released before the extent-differencing fix;
* per day, merged: each DAY of a cell (the agreement's finest grain, a sub-cell) coarsened on
  its own and the days' sketches merged into maximal dyadic bins (`coarse_sketches` with
  sub-cells; `bounded` to 32 bins), read by interpolation: what a region-wide answer releases
  now under an agreement whose smallest bucket is a day (the sketch on the wire);
* per day, mixture: the same per-day sketches, the quantile read from the mixture of their
  bins (`mixture_quantile`): what a per-municipality answer releases now (the hub reads it),
  and region-wide what the asker reads now from every hub's days (`Cell.subcells`, a cell of
  2 to 32 sub-cells: a month under a day's grain).
  Daily cells are one sub-cell: both the same as "dyadic, interpolated".

Layouts: "demo" (one station per hub, as `smartregion demo`), "one hub" (all five stations in
one municipality), "two hubs" (three stations and two). The error of a released quantile is
measured against the true reading at that rank (sorted readings, index floor(q (n - 1))), as
|released - true| / true over readings >= 1 ug/m3; cells a hub withholds are counted apart.
Pure computation on the real binning code: no hub processes (their cost is bench.query's).

Second, the cost of padding sealed partials (federation/partials.py `padded_size`): for the
demo's one-station hub and queries over 2019 (daily and hourly cells), the padded length
against the actual signed partial's, and the time of computing the padded size against the
time of building and serializing the partial itself (the baseline, measured in the same run).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from federation import partials
from node.api.v1 import query_pb2
from node.sketch import Sketch, bin_of
from node.storage.base import CellRow

DATA = Path(__file__).resolve().parent.parent / "node" / "data" / "air-quality-norway"
STATIONS = ["Valand", "Knarrdalstranda", "Nedre-Langgate", "Nygaardsgata", "Klosterhaugen"]
QS = (0.1, 0.5, 0.9)
LAYOUTS = {"demo": [[s] for s in STATIONS], "one hub": [STATIONS], "two hubs": [STATIONS[:3], STATIONS[3:]]}
Readings = dict[str, list[tuple[dt.datetime, float]]]
Bins = dict[int, tuple[int, set[str]]]


def load() -> Readings:
    out: Readings = {}
    for station in STATIONS:
        with (DATA / f"{station}.csv").open(newline="") as f:
            out[station] = [(dt.datetime.fromisoformat(f"{r['date']}T{r['time']}"), float(r["pm25"]))
                            for r in csv.DictReader(f) if r["pm25"]]
    return out


class Rule:
    """How a cell's sketch is coarsened, merged across hubs and read."""

    def __init__(self, coarsen: Callable[[Bins, int], query_pb2.CoarseSketch | None],
                 merge: Callable[[list[query_pb2.CoarseSketch]], query_pb2.CoarseSketch],
                 read: Callable[[query_pb2.CoarseSketch, float], float]) -> None:
        self.coarsen, self.merge, self.read = coarsen, merge, read


def old_coarsen(bins: Bins, threshold: int) -> query_pb2.CoarseSketch | None:
    """The rule before issue 9's second round: from level 0, contributors only."""
    for level in range(partials.MAX_LEVEL + 1):
        coarse: Bins = {}
        for o, (n, who) in bins.items():
            count, members = coarse.get(o >> level, (0, set()))
            coarse[o >> level] = (count + n, members | who)
        if all(len(m) >= threshold for _, m in coarse.values()):
            return query_pb2.CoarseSketch(level=level, bins={i: n for i, (n, _) in coarse.items()})
    return None


def uniform_coarsen(bins: Bins, threshold: int) -> query_pb2.CoarseSketch | None:
    """The previous rule: the finest ONE level >= MIN_LEVEL at which every bin qualifies."""
    for level in range(partials.MIN_LEVEL, partials.MAX_LEVEL + 1):
        coarse: Bins = {}
        for o, (n, who) in bins.items():
            count, members = coarse.get(o >> level, (0, set()))
            coarse[o >> level] = (count + n, members | who)
        if len(coarse) <= partials.MAX_COARSE_BINS and all(
                partials.releasable(n, len(m), threshold) for n, m in coarse.values()):
            return query_pb2.CoarseSketch(level=level, bins={i: n for i, (n, _) in coarse.items()})
    return None


def uniform_merge(sketches: list[query_pb2.CoarseSketch]) -> query_pb2.CoarseSketch:
    """The previous merge: every sketch at the coarsest level among them, counts added."""
    level = max(s.level for s in sketches)
    bins: dict[int, int] = {}
    for s in sketches:
        for index, n in s.bins.items():
            bins[index >> (level - s.level)] = bins.get(index >> (level - s.level), 0) + n
    return query_pb2.CoarseSketch(level=level, bins=bins)


def middle_quantile(sketch: query_pb2.CoarseSketch, q: float) -> float:
    """The previous reading: the middle ordinal of the bin holding rank q (n - 1)."""
    bins = sorted(partials.dyadic_bins([sketch]).items(), key=lambda item: item[0].first)
    rank, seen, holding = q * (sum(n for _, n in bins) - 1), 0, bins[-1][0]
    for b, n in bins:
        seen += n
        if seen > rank:
            holding = b
            break
    return partials.ordinal_value((holding.first + holding.end) // 2)


def dyadic_merge(sketches: list[query_pb2.CoarseSketch]) -> query_pb2.CoarseSketch:
    return partials.sketch_of(partials.dyadic_bins(sketches))


RULES = {
    "unprotected": Rule(old_coarsen, uniform_merge, middle_quantile),
    "uniform": Rule(uniform_coarsen, uniform_merge, middle_quantile),
    "dyadic, middle": Rule(partials.coarsen, dyadic_merge, middle_quantile),
    "dyadic, interpolated": Rule(partials.coarsen, dyadic_merge, partials.coarse_quantile),
    "per day, merged": Rule(partials.coarsen, dyadic_merge, partials.coarse_quantile),
    "per day, mixture": Rule(partials.coarsen, dyadic_merge, partials.coarse_quantile),
}
PER_SUBCELL = {"per day, merged", "per day, mixture"}
Cell = list[tuple[str, float, str]]  # (station, value, day)


def bins_of(cell: Cell) -> Bins:
    bins: Bins = {}
    for who, v, _ in cell:
        o = partials.ordinal(*bin_of(v))
        n, members = bins.get(o, (0, set()))
        bins[o] = (n + 1, members | {who})
    return bins


def day_sketches(cell: Cell, threshold: int) -> list[query_pb2.CoarseSketch] | None:
    """The provider's sketches of a cell's day sub-cells, each coarsened on its own (None: withheld)."""
    rows = [(day_index, sign, key, who, 1) for who, v, day in cell
            for day_index in [dt.date.fromisoformat(day).toordinal()] for sign, key in [bin_of(v)]]
    return partials.subcell_sketches(rows, threshold, cell_of=lambda _: 0).get(0)


def released(cells_by_hub: list[Cell], q: float, k: int, grouping: str, rule: str) -> float | None:
    """The released quantile of one cell (None: withheld)."""
    threshold = partials.coarse_threshold(k)
    if grouping == "municipality" and rule == "unprotected":
        s = Sketch()
        for _, v, _ in cells_by_hub[0]:
            s.add(v)
        return s.quantile(q)
    if rule in PER_SUBCELL:
        days = [day_sketches(cell, threshold) for cell in cells_by_hub]
        if any(d is None for d in days):
            return None
        if rule == "per day, mixture":
            return partials.mixture_quantile([s for d in days if d for s in d], q)
        return partials.coarse_quantile(dyadic_merge([partials.merged(d) for d in days if d]), q)
    sketches = []
    for cell in cells_by_hub:
        sketch = RULES[rule].coarsen(bins_of(cell), threshold)
        if sketch is None:
            return None
        sketches.append(sketch)
    return RULES[rule].read(RULES[rule].merge(sketches), q) if sketches else None


def cells(readings: Readings, hubs: list[list[str]], bucket: str) -> dict[str, list[Cell]]:
    """Per bucket label, per hub, the (station, value) readings."""
    key = (lambda t: t.strftime("%Y-%m-%d")) if bucket == "day" else (lambda t: t.strftime("%Y-%m"))
    out: dict[str, list[Cell]] = {}
    for h, stations in enumerate(hubs):
        for station in stations:
            for t, v in readings[station]:
                per_hub = out.setdefault(key(t), [[] for _ in hubs])
                per_hub[h].append((station, v, t.strftime("%Y-%m-%d")))
    return out


def measure(readings: Readings, layout: str, grouping: str, bucket: str, k: int, rule: str) -> tuple[int, int, list[float]]:
    """(cells asked, cells withheld, relative errors of the released quantiles)."""
    hubs = LAYOUTS[layout]
    asked = withheld = 0
    errors: list[float] = []
    for per_hub in cells(readings, hubs, bucket).values():
        groups = [[c] for c in per_hub] if grouping == "municipality" else [per_hub]
        for group in groups:
            values = sorted(v for c in group for _, v, _ in c)
            if len({who for c in group for who, _, _ in c}) < k:
                continue  # below the group size either way: not a quantile question
            for q in QS:
                asked += 1
                got = released(group, q, k, grouping, rule)
                if got is None:
                    withheld += 1
                    continue
                true = values[math.floor(q * (len(values) - 1))]
                if true >= 1.0:
                    errors.append(abs(got - true) / true)
    return asked, withheld, errors


def main() -> None:
    readings = load()
    print(f"{sum(map(len, readings.values()))} hourly PM2.5 readings of {len(STATIONS)} stations; q = {QS}; "
          f"rule: level >= {partials.MIN_LEVEL}, >= {partials.MIN_BIN_READINGS} readings and >= max(k, 2) "
          f"contributors a bin, <= {partials.MAX_COARSE_BINS} bins")
    print("Per rule: cells withheld / asked, then median / p95 / max relative error of the released quantiles")
    print("| layout | grouping | bucket | k | " + " | ".join(RULES) + " |")
    print("|---|---|---|---|" + "---|" * len(RULES))
    for layout, grouping, bucket, k in [
        ("demo", "municipality", "day", 1), ("demo", "region", "day", 1),
        ("one hub", "municipality", "day", 1), ("one hub", "municipality", "day", 3),
        ("one hub", "municipality", "month", 3),
        ("two hubs", "region", "day", 1), ("two hubs", "region", "day", 2), ("two hubs", "region", "month", 2),
    ]:
        row = []
        for rule in RULES:
            asked, withheld, errors = measure(readings, layout, grouping, bucket, k, rule)
            if errors:
                p95 = statistics.quantiles(errors, n=20)[-1] if len(errors) > 1 else errors[0]
                figures = f"{statistics.median(errors):.1%} / {p95:.1%} / {max(errors):.1%}"
            else:
                figures = "none released"
            row.append(f"{withheld}/{asked}, {figures}")
        print(f"| {layout} | {grouping} | {bucket} | {k} | " + " | ".join(row) + " |")
    subcell_cost(readings)
    padding(readings)


def subcell_cost(readings: Readings) -> None:
    """What binning per day costs the provider: a cell of all five stations' 2019 readings (one
    window, and one month) binned whole (the baseline) and per day then merged, and the
    per-municipality read (coarse_quantile of the whole; mixture of the days), best of 3; k = 2."""
    print()
    print("| cell (five stations) | binned whole | per day + merge | ratio | read: whole | read: mixture of days | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, keep in (("2019, one window", lambda t: True), ("January 2019", lambda t: t.month == 1)):
        rows = [(dt.date(t.year, t.month, t.day).toordinal(), *bin_of(v), station, 1)
                for station, series in readings.items() for t, v in series if keep(t)]
        whole = [(0, sg, k, c, n) for _, sg, k, c, n in rows]
        binned = best_of(lambda: partials.coarse_sketches(whole, 2), 3)  # noqa: B023
        per_day = best_of(lambda: partials.coarse_sketches(rows, 2, cell_of=lambda _: 0), 3)  # noqa: B023
        sketch = partials.coarse_sketches(whole, 2).get(0)
        parts = partials.subcell_sketches(rows, 2, cell_of=lambda _: 0).get(0)
        read_whole = best_of(lambda: partials.coarse_quantile(sketch, 0.5), 3) if sketch else math.nan  # noqa: B023
        read_mixture = best_of(lambda: partials.mixture_quantile(parts, 0.5), 3) if parts else math.nan  # noqa: B023
        print(f"| {name} | {binned * 1000:.0f} ms{'' if sketch else ' (withheld)'} | {per_day * 1000:.0f} ms"
              f"{'' if parts else ' (withheld)'} | {per_day / binned:.2f} | {read_whole * 1000:.2f} ms | "
              f"{read_mixture * 1000:.1f} ms | {read_mixture / read_whole:.0f} |")


def cell_rows(series: list[tuple[dt.datetime, float]], bucket: str) -> list[CellRow]:
    key = (lambda t: t.replace(minute=0, second=0)) if bucket == "hour" else (lambda t: t.replace(hour=0, minute=0, second=0))
    by: dict[dt.datetime, list[float]] = {}
    for t, v in series:
        by.setdefault(key(t), []).append(v)
    return [CellRow(int(b.replace(tzinfo=dt.UTC).timestamp() * 1000), len(vs), math.fsum(vs), math.fsum(v * v for v in vs),
                    min(vs), max(vs), 1) for b, vs in sorted(by.items())]


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def padding(readings: Readings) -> None:
    start, end = (int(dt.datetime(year, 1, 1, tzinfo=dt.UTC).timestamp() * 1000) for year in (2019, 2020))
    hub, municipality, agreement = "0" * 32, "1103", "urn:uuid:" + "0" * 36
    print()
    print("| query (Valand, 2019) | cells | signed partial | padded | padded / actual | padded_size time / build+serialize time |")
    print("|---|---|---|---|---|---|")
    for aggregate, group_by, bucket in [("mean", "region", "day"), ("mean", "municipality", "day"), ("stddev", "region", "day"),
                                        ("mean", "region", "hour")]:
        spec = query_pb2.QuerySpec(aggregate=aggregate, group_by=group_by, bucket=bucket, start_ms=start, end_ms=end)
        rows = cell_rows(readings["Valand"], bucket)
        group = municipality if group_by == "municipality" else "region"

        def build() -> bytes:
            result = partials.build(bytes(32), hub, municipality, agreement, 1, group, rows, 1, aggregate)  # noqa: B023
            return query_pb2.SignedPartial(partial=result.SerializeToString(), signature=bytes(64),
                                           provider_public_key=bytes(32)).SerializeToString()

        actual = len(build())
        padded = partials.padded_size(spec, hub, municipality, agreement)
        ratio = best_of(lambda: partials.padded_size(spec, hub, municipality, agreement)) / best_of(build)  # noqa: B023
        print(f"| {aggregate} by {group_by}/{bucket} | {len(rows)} | {actual} B | {padded} B | {padded / actual:.2f} | {ratio:.2f} |")
    quantile_padding(readings, start, end)


def quantile_padding(readings: Readings, start: int, end: int) -> None:
    """A region-wide quantile by month under a day's grain, all five stations in one hub: each
    month's partial carries its days' sketches (`mixture_cells`), padded to 32 bins a day."""
    hub, municipality, agreement = "0" * 32, "1103", "urn:uuid:" + "0" * 36
    spec = query_pb2.QuerySpec(aggregate="quantile", quantile=0.5, group_by="region", bucket="month", start_ms=start, end_ms=end)
    month_ms = {(m.year, m.month): int(m.timestamp() * 1000)
                for m in (dt.datetime(2019, month, 1, tzinfo=dt.UTC) for month in range(1, 13))}
    rows = [(dt.date(t.year, t.month, t.day).toordinal(), *bin_of(v), station, 1)
            for station, series in readings.items() for t, v in series]
    parts = partials.subcell_sketches(rows, 2, cell_of=lambda d: month_ms[(dt.date.fromordinal(d).year,
                                                                            dt.date.fromordinal(d).month)])
    counts: dict[int, int] = {}
    for d, *_ in rows:
        month = month_ms[(dt.date.fromordinal(d).year, dt.date.fromordinal(d).month)]
        counts[month] = counts.get(month, 0) + 1
    cells = [CellRow(m, counts[m], 0.0, 0.0, 0.0, 0.0, 5) for m in sorted(counts)]

    def build() -> bytes:
        result = partials.build(bytes(32), hub, municipality, agreement, 2, "region", cells, 1, "quantile", quantile=0.5,
                                coarse={m: partials.merged(p) for m, p in parts.items()}, parts=parts,
                                mixture=partials.mixture_cells(spec, "day"))
        return query_pb2.SignedPartial(partial=result.SerializeToString(), signature=bytes(64),
                                       provider_public_key=bytes(32)).SerializeToString()

    actual = len(build())
    merged_only = partials.padded_size(spec, hub, municipality, agreement)
    padded = partials.padded_size(spec, hub, municipality, agreement, grain="day")
    ratio = best_of(lambda: partials.padded_size(spec, hub, municipality, agreement, grain="day")) / best_of(build)
    print(f"| quantile by region/month, day grain (five stations; {merged_only} B padded with the merge only) | "
          f"{len(cells)} | {actual} B | {padded} B | {padded / actual:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
