"""Attack (partner): one station's single reading, from the difference of two region-wide
quantile sketches of nested windows (days 1-2 and days 1-3), each released by the rule.

Tried: one hub, three stations, k = 2, smallest bucket a day, region-wide quantiles by window.
On days 1 and 2 the stations read near 10 in even hours and near 50 in odd hours (two clusters
of 72 readings of 3 stations each). On day 3 every reading is near 10 but ONE, station 0's at
05:00, 50.3. Day 3 asked alone: the lone 50.3 has no bin of its own and is folded into the top
bin near 10 (partials.coarsen, tail fold). Days 1-2 and days 1-3 asked as windows: both are
released whole (every day has 3 contributors: rule 1 holds; the release log sees no sub-cell
change, only new sub-cells). Subtracting the two sketches' counts, bin by bin on their common
coarsening, gives day 3's histogram, with a bin holding exactly one reading of one station,
although the rule says every released bin holds >= 10 readings of >= max(k, 2) stations.

A test that FAILS while the break exists; it prints what it learnt either way.
Suggested fix: federation/query/provider.py: a quantile cell is released only if the coarse
sketch of every sub-cell difference it could form with released cells of the line still meets
the rule, i.e. release quantile sketches only at ONE extent per line (the agreement's grain),
or fix the bin boundaries per line (the first release's bins) and require every released bin
count to change by 0 or by >= MIN_BIN_READINGS readings of >= max(k, 2) contributors between
overlapping releases (docs/privacy.md 4 and 2 then say so).
"""

from __future__ import annotations

import math

import pytest
import pytest_asyncio
from attack_helpers import DAY, HOUR_MS, region, terms_toml
from query_helpers import spec
from region_helpers import audit_entries

from federation import partials
from node.api.v1 import query_pb2
from node.sketch import bin_of

pytestmark = pytest.mark.asyncio(loop_scope="module")
DAY_MS = 24 * HOUR_MS
LONE_HOUR, LONE_VALUE = 48 + 5, 50.3


def _station(n: int) -> list[float]:
    values = [(10.0 if h % 2 == 0 else 50.0) + 0.01 * n + 0.001 * h for h in range(48)]
    values += [10.0 + 0.01 * n + 0.001 * h for h in range(48, 72)]
    if n == 0:
        values[LONE_HOUR] = LONE_VALUE
    return values


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    terms = terms_toml(aggregates=["quantile"], group_by=["municipality", "time_bucket"],
                       smallest_bucket="day", min_group_size=2)
    async with region(tmp_path_factory.mktemp("qdiff"), terms, {0: [_station(n) for n in range(3)]},
                      towns=(("bergen", "4601"),)) as r:
        yield r


async def _sketch(r, start_ms: int, end_ms: int) -> query_pb2.CoarseSketch | None:
    answer = await r.ask(r.hubs[0], spec(aggregate="quantile", quantile=0.5, group_by="region", bucket="window",
                                         start_ms=start_ms, end_ms=end_ms))
    [p] = answer.provenance
    assert p.status == "answered", p.reason
    partial = query_pb2.PartialResult.FromString(p.partial.partial)
    cells = [c for c in partial.cells if not c.suppressed]
    return cells[0].coarse if cells else None


def _common(a: dict[partials.DyadicBin, int], b: dict[partials.DyadicBin, int]) -> tuple[dict, dict]:
    """Both histograms on their common coarsening (dyadic bins nest: merge each into the union's outer bins)."""
    outer = partials.dyadic_bins([partials.sketch_of(a), partials.sketch_of(b)])

    def onto(h: dict[partials.DyadicBin, int]) -> dict[partials.DyadicBin, int]:
        out = dict.fromkeys(outer, 0)
        for bin_, n in h.items():
            target = bin_
            while target not in out:
                target = target.parent()
            out[target] += n
        return out

    return onto(a), onto(b)


async def test_two_nested_windows_give_one_readings_bin_on_the_day_between(attacked):
    r = attacked
    day3 = await _sketch(r, DAY + 2 * DAY_MS, DAY + 3 * DAY_MS)
    day3_bins = partials.dyadic_bins([day3]) if day3 is not None else {}
    print("day 3 alone:", {(b.level, b.index, round(partials.ordinal_value(b.first), 2)): n for b, n in day3_bins.items()})
    sketch_two, sketch_three = await _sketch(r, DAY, DAY + 2 * DAY_MS), await _sketch(r, DAY, DAY + 3 * DAY_MS)
    assert sketch_two is not None and sketch_three is not None, "both windows are released"
    two, three = partials.dyadic_bins([sketch_two]), partials.dyadic_bins([sketch_three])
    a, b = _common(two, three)
    difference = {bin_: b[bin_] - a[bin_] for bin_ in a if b[bin_] != a[bin_]}
    learnt = {(bin_.level, round(partials.ordinal_value(bin_.first), 2), round(partials.ordinal_value(bin_.end), 2)): n
              for bin_, n in difference.items()}
    print("day 3 by difference (level, from, to): readings:", learnt)
    thin = [(k, n) for k, n in learnt.items() if 0 < n < partials.MIN_BIN_READINGS]
    assert not thin, (f"BROKE: days 1-3 minus days 1-2 gives day 3's bins {thin}: fewer than "
                      f"{partials.MIN_BIN_READINGS} readings (station 0's lone {LONE_VALUE} at 05:00 lies in one)")
    print("held: no bin of the difference holds fewer than the rule's readings")


async def _top_bin(r, start_ms: int, end_ms: int) -> tuple[partials.DyadicBin, float]:
    """Per municipality only the value leaves, and the cell's readings: q close to 1 is read at
    fraction f = (q (N - 1) - (N - n) + 1) / (n + 1) of the top bin of n of the N readings
    (partials.coarse_quantile), so the value gives n back: n = ((1 - q)(N - 1) + f) / (1 - f)."""
    q = 0.999
    answer = await r.ask(r.hubs[0], spec(aggregate="quantile", quantile=q, group_by="municipality", bucket="window",
                                         start_ms=start_ms, end_ms=end_ms))
    [row] = answer.rows
    assert not row.suppressed
    o = partials.ordinal(*bin_of(row.value))
    top = partials.DyadicBin(partials.MIN_LEVEL, o >> partials.MIN_LEVEL)
    lo, hi = partials.value_in_bin(top, 0.0), partials.value_in_bin(top, 1.0)
    f = math.log(row.value / lo) / math.log(hi / lo)
    return top, ((1 - q) * (row.readings - 1) + f) / (1 - f)


async def test_per_municipality_the_top_quantile_of_two_windows_gives_the_same_reading(attacked):
    """The same attack with what a per-municipality answer releases (one value per cell): q = 0.999
    of days 1-2 and of days 1-3 give their top bin's count (about 72 and 73): day 3 holds ONE
    reading in a bin 17 % wide near 50, of one station."""
    r = attacked
    bin_two, n_two = await _top_bin(r, DAY, DAY + 2 * DAY_MS)
    bin_three, n_three = await _top_bin(r, DAY, DAY + 3 * DAY_MS)
    lo, hi = partials.value_in_bin(bin_three, 0.0), partials.value_in_bin(bin_three, 1.0)
    print(f"top bin [{lo:.2f}, {hi:.2f}): {n_two:.3f} readings in days 1-2, {n_three:.3f} in days 1-3")
    if bin_two == bin_three and round(n_three - n_two) == 1 and abs(n_three - n_two - 1) < 1e-6:
        pytest.fail(f"BROKE: per municipality, q = 0.999 of two nested windows says day 3 holds exactly one reading in "
                    f"[{lo:.2f}, {hi:.2f}) (station 0's {LONE_VALUE}), a bin of 1 reading of 1 station")
    print("held: the two top quantiles do not give day 3's count in a bin")


def _short_second_day(n: int) -> list[float]:
    """A full day 1; on day 2 stations 0 and 1 read 4 hours each (8 readings of 2 stations:
    enough contributors for k = 2, too few readings for any bin), station 2 nothing."""
    return [10.0 + 0.01 * n + 0.1 * h for h in range(24 if n == 2 else 28)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def short_day(tmp_path_factory):
    terms = terms_toml(aggregates=["quantile", "count"], group_by=["municipality", "time_bucket"],
                       smallest_bucket="day", min_group_size=2)
    async with region(tmp_path_factory.mktemp("qshort"), terms, {0: [_short_second_day(n) for n in range(3)]},
                      towns=(("bergen", "4601"),)) as r:
        yield r


async def test_a_window_with_a_day_that_cannot_be_binned_is_withheld_not_released_without_it(short_day):
    """If the hub left the short day out of the window's sketch, the window's count (released
    as a count) minus its sketch's would give that day's 8 readings; it withholds the window's
    quantile instead, and says why in its audit log."""
    r = short_day
    day1 = await _sketch(r, DAY, DAY + DAY_MS)
    assert day1 is not None and sum(b.count for b in day1.intervals) == 72, "day 1 alone is binned and released"
    assert await _sketch(r, DAY, DAY + 2 * DAY_MS) is None, "BROKE: days 1-2 released without day 2's readings"
    for group_by in ("municipality", "region"):
        answer = await r.ask(r.hubs[0], spec(aggregate="quantile", quantile=0.5, group_by=group_by, bucket="window",
                                             start_ms=DAY, end_ms=DAY + 2 * DAY_MS))
        assert [row.suppressed for row in answer.rows] == [True], group_by
    count = await r.ask(r.hubs[0], spec(aggregate="count", group_by="region", bucket="window", start_ms=DAY, end_ms=DAY + 2 * DAY_MS))
    assert [(row.suppressed, row.readings) for row in count.rows] == [(False, 80)], "the count itself is released"
    withheld = [e for e in await audit_entries(r.hubs[0]) if e["action"] == "query.quantile"]
    assert withheld and all(e["outcome"] == "withheld" and "subcell_not_coarsenable: 1 (" in e["detail"] for e in withheld), withheld
    print("held: days 1-2 withheld:", withheld[0]["detail"])
