"""Partial results: built and signed by a provider, sealed to the asker, opened, verified and
merged by the asker (docs/querying.md 6).

What leaves a provider is no finer than its agreement:
* grouped by municipality, a cell carries the provider's FINAL value (a quantile read from the
  coarsened sketch below), the count of readings and of contributors, nothing else: no
  sketch, no bins, no sums;
* region-wide, a cell carries only what merging the aggregate exactly needs (RELEASED_FIELDS);
  a quantile, the coarsened sketch itself (`coarsen`: bins of >= max(k, 2) contributors,
  >= MIN_BIN_READINGS readings, >= 2^MIN_LEVEL fine bins wide);
* a cell with fewer contributors than the minimum group size carries no values at all, nor a
  stddev, min or max cell whose figures would together solve for one contributor
  (`contributors_needed`);
* the sealed partial is padded to a length fixed by the query (`padded_size`)."""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import math
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from federation.query_spec import buckets, label
from node.api.v1 import query_pb2, query_service_pb2
from node.identity import HubIdentity
from node.keychain import key_of_hub
from node.signing import Domain, sign, verify
from node.sketch import MIN_INDEXABLE, bin_of, gamma, representative
from node.storage.base import CellRow


class PartialError(ValueError):
    pass


GAMMA = gamma()


def query_digest(signed_query_payload: bytes) -> bytes:
    return hashlib.sha256(signed_query_payload).digest()


# What each region-wide aggregate needs to be merged exactly; nothing else leaves the provider.
# (The count of readings always does: it is how an answer says how much data stands behind a
# value.) Quantiles are not merged across hubs.
RELEASED_FIELDS = {
    "count": set(),
    "sum": {"sum"},
    "mean": {"sum"},
    "stddev": {"sum", "sum_squares"},
    "min": {"min"},
    "max": {"max"},
    "quantile": {"coarse"},
}

# -- quantiles: a coarsened sketch ---------------------------------------------------------------
# A quantile is an order statistic: read from a fine sketch it IS one reading (to 1 %), and an
# asker chooses q. So every quantile that leaves a hub, per municipality or region-wide, is read
# from a sketch coarsened into dyadic bins, each of which mixes readings of >= max(k, 2)
# contributors, holds >= MIN_BIN_READINGS readings and spans >= 2^MIN_LEVEL fine bins (a factor
# gamma^8, 17 %), with at most MAX_COARSE_BINS bins (so a sealed partial's size is bounded).
# What an asker can learn, by sweeping q, is that histogram: never a reading to better than its bin.
ORDINAL_OFFSET = 2048  # keys of |v| >= MIN_INDEXABLE are > -1100: positive ordinals stay positive
MIN_LEVEL = 3          # a released bin is >= 8 fine bins wide: values within a factor gamma^8 = 1.173
MIN_BIN_READINGS = 10  # and holds at least this many readings
MAX_COARSE_BINS = 32   # and there are at most this many bins in one cell's sketch
MAX_LEVEL = 13         # the coarsest bins: 8192 fine bins, a factor 1.8e71 (every reading below 1e53 in one)
# Interpolation works between fine-bin edges gamma^x; x is kept where readings can be: from the
# lower edge of the fine bin holding MIN_INDEXABLE to the last finite edge (the largest double's
# fine bin has no finite upper edge).
LOWEST_EDGE = bin_of(MIN_INDEXABLE)[1] - 1
HIGHEST_EDGE = bin_of(sys.float_info.max)[1] - 1
# Wider bins than this (a factor gamma^256 = 166) say too little of where their readings lie
# to interpolate (bench/quantile_error.py: a geometric guess across a bin 10^17 wide is off by
# 10^16); their quantile is the middle ordinal's value, as before interpolation.
MAX_INTERPOLATED_LEVEL = 8
# A region-wide quantile cell under an agreement carries its sub-cells' own sketches (the
# asker reads the mixture) when it spans 2 to this many sub-cells, and the query's padded
# partial stays within MAX_SEALED_PARTIAL_BYTES (`mixture_cells`); otherwise only their merge.
MAX_SUBCELL_SKETCHES = 32
# mixture_quantile places and sorts up to this many readings; beyond, it bisects (the same value)
PLACED_LIMIT = 1 << 16

Bins = dict[int, tuple[int, set[str]]]  # fine ordinal -> (readings, contributors)


@dataclass(frozen=True, order=True)
class DyadicBin:
    """Coarse bin (level, index): the fine ordinals [index * 2^level, (index + 1) * 2^level)."""

    level: int
    index: int

    @property
    def first(self) -> int:
        return self.index << self.level

    @property
    def end(self) -> int:
        return (self.index + 1) << self.level

    def halves(self) -> tuple[DyadicBin, DyadicBin]:
        return DyadicBin(self.level - 1, 2 * self.index), DyadicBin(self.level - 1, 2 * self.index + 1)

    def parent(self) -> DyadicBin:
        return DyadicBin(self.level + 1, self.index >> 1)


def ordinal(sign: int, key: int) -> int:
    return 0 if sign == 0 else sign * (key + ORDINAL_OFFSET)


def ordinal_value(o: int) -> float:
    if o == 0:
        return 0.0
    return math.copysign(representative(abs(o) - ORDINAL_OFFSET), o)


class _FineBins:
    """A cell's fine bins in ordinal order, summed over any dyadic bin."""

    def __init__(self, bins: Bins) -> None:
        self.ordinals = sorted(bins)
        self.bins = bins

    def within(self, b: DyadicBin) -> tuple[int, set[str]]:
        lo, hi = bisect.bisect_left(self.ordinals, b.first), bisect.bisect_left(self.ordinals, b.end)
        count, members = 0, set()
        for o in self.ordinals[lo:hi]:
            n, who = self.bins[o]
            count += n
            members |= who
        return count, members


def releasable(count: int, contributors: int, threshold: int) -> bool:
    """The rule every released bin meets (besides its width, level >= MIN_LEVEL)."""
    return contributors >= threshold and count >= MIN_BIN_READINGS


def coarsen(bins: Bins, threshold: int) -> query_pb2.CoarseSketch | None:
    """Dyadic bins, each of whose own readings are of >= threshold distinct contributors and
    number >= MIN_BIN_READINGS, level >= MIN_LEVEL, at most MAX_COARSE_BINS of them; None if
    no such bins cover the cell (it is then withheld). docs/querying.md 7.6.

    From the level-MAX_LEVEL bins, the bin holding the most readings (then the coarsest, then
    the lowest) is split into its non-empty halves if each of them qualifies and the bin count
    stays within MAX_COARSE_BINS; otherwise it is final. Splitting the largest first spends the
    bin budget where most ranks, hence most quantiles, fall. An empty half is no released bin:
    it says what the uniform rule's absent bins said, that no reading lies there.

    Tails: a half that fails the rule only stops the split where it lies inside the data. At the
    cell's lower (upper) edge, i.e. below (above) every other bin, its readings are instead
    counted in the other half, as long as fewer than MIN_BIN_READINGS readings are so folded at
    that edge in all: a few outliers (one reading at 0.7 when the rest are 1.5 to 50) would
    otherwise keep the whole cell in one bin 10^17 wide (a dyadic boundary falls at 1.0)."""
    fine = _FineBins(bins)
    own: dict[DyadicBin, int] = {}  # each bin's own readings; the folded ones ride in the extreme bins
    top = sorted({DyadicBin(MAX_LEVEL, o >> MAX_LEVEL) for o in fine.ordinals})
    stats = {b: fine.within(b) for b in top}
    folded = [0, 0]  # readings folded in at the lower, the upper edge

    def foldable(count: int, edge: int) -> bool:
        return folded[edge] + count < MIN_BIN_READINGS

    for edge in (0, 1):  # thin outer bins of the top level fold inwards too
        while len(stats) > 1:
            outer = min(stats) if edge == 0 else max(stats)
            count, members = stats[outer]
            if releasable(count, len(members), threshold) or not foldable(count, edge):
                break
            folded[edge] += count
            del stats[outer]
    for b, (count, members) in stats.items():
        if not releasable(count, len(members), threshold):
            return None
        own[b] = count
    if len(own) > MAX_COARSE_BINS:
        return None
    candidates = [(-n, -b.level, b.index, b) for b, n in own.items()]
    heapq.heapify(candidates)
    while candidates:
        *_, b = heapq.heappop(candidates)
        if b.level <= MIN_LEVEL:
            continue
        halves = [(half, n, releasable(n, len(who), threshold)) for half in b.halves() for n, who in [fine.within(half)] if n]
        kept = [(half, n) for half, n, qualifies in halves if qualifies]
        if len(kept) < len(halves):
            # A failing half may only fold into its qualifying sibling, and only as the lower
            # half of the lowest bin (edge 0) or the upper half of the highest (edge 1).
            if len(halves) != 2 or not kept:
                continue
            edge = 0 if kept[0][0] == halves[1][0] else 1
            outermost = min(own, key=lambda x: x.first) if edge == 0 else max(own, key=lambda x: x.first)
            thin = halves[edge][1]
            if b != outermost or not foldable(thin, edge):
                continue
            folded[edge] += thin  # one bin for one: the count of bins stays within the cap
        elif len(own) - 1 + len(kept) > MAX_COARSE_BINS:
            continue
        del own[b]
        for half, n in kept:
            own[half] = n
            heapq.heappush(candidates, (-n, -half.level, half.index, half))
    ordered = sorted(own, key=lambda x: x.first)
    released = dict(own)
    released[ordered[0]] += folded[0]
    released[ordered[-1]] += folded[1]
    return sketch_of(released)


def sketch_of(bins: dict[DyadicBin, int]) -> query_pb2.CoarseSketch:
    return query_pb2.CoarseSketch(intervals=[query_pb2.CoarseBin(level=b.level, index=b.index, count=n)
                                             for b, n in sorted(bins.items(), key=lambda item: item[0].first)])


def coarse_sketches(rows: list[tuple[int, int, int, str, int]], threshold: int,
                    cell_of: Callable[[int], int] | None = None) -> dict[int, query_pb2.CoarseSketch]:
    """Per cell, the coarsened sketch of (bucket, sign, key, contributor, readings) rows (as
    the storage's sketch_bins_by_contributor yields them); a cell that cannot be coarsened is
    left out (and then withheld). With `cell_of`, the merge of its sub-cells' (`subcell_sketches`)."""
    if cell_of is None:
        return {b: sketch for b, sketch in _coarsened(rows, threshold).items() if sketch is not None}
    return {cell: merged(parts) for cell, parts in subcell_sketches(rows, threshold, cell_of).items()}


def subcell_sketches(rows: list[tuple[int, int, int, str, int]], threshold: int,
                     cell_of: Callable[[int], int]) -> dict[int, list[query_pb2.CoarseSketch]]:
    """Per cell, its sub-cells' coarsened sketches, in sub-cell order: the rows' buckets are
    SUB-CELLS (the agreement's finest grain) and cell_of maps a sub-cell's start to its cell's.

    Each sub-cell is coarsened ON ITS OWN: a released cell's histogram is then a sum of
    per-sub-cell histograms that each obey the rule, so the difference of two released cells
    of different extents is a coarsening of such a sum, never finer (docs/privacy.md 2, rule
    4). A cell with a sub-cell that holds readings but cannot be coarsened is left out whole:
    dropping that sub-cell's readings would make the cell's count differ from its histogram's,
    and the difference give the dropped readings' count."""
    parts: dict[int, list[query_pb2.CoarseSketch]] = {}
    broken: set[int] = set()
    for b, sketch in _coarsened(rows, threshold).items():
        if sketch is None:
            broken.add(cell_of(b))
        else:
            parts.setdefault(cell_of(b), []).append(sketch)
    return {cell: sketches for cell, sketches in parts.items() if cell not in broken}


def _coarsened(rows: list[tuple[int, int, int, str, int]], threshold: int) -> dict[int, query_pb2.CoarseSketch | None]:
    by_bucket: dict[int, Bins] = {}
    for b, sg, k, c, n in rows:
        bins = by_bucket.setdefault(b, {})
        o = ordinal(sg, k)
        count, who = bins.get(o, (0, set()))
        bins[o] = (count + n, who | {c})
    return {b: coarsen(bins, threshold) for b, bins in sorted(by_bucket.items())}


def merged(sketches: Iterable[query_pb2.CoarseSketch]) -> query_pb2.CoarseSketch:
    """The merge of coarse sketches (`dyadic_bins`), within MAX_COARSE_BINS (`bounded`)."""
    return sketch_of(bounded(dyadic_bins(sketches)))


def bounded(bins: dict[DyadicBin, int]) -> dict[DyadicBin, int]:
    """At most MAX_COARSE_BINS bins: while there are more, the two neighbouring bins whose
    smallest common dyadic ancestor is finest (then holds the fewest readings, then lies
    lowest) are replaced by that ancestor, which takes in every bin inside it. A function of
    the bins alone (post-processing: never finer than its input), so a merged partial's size
    stays bounded however many sub-cells or hubs went into it."""
    out = dict(bins)
    while len(out) > MAX_COARSE_BINS:
        ordered = sorted(out, key=lambda b: b.first)
        before = [0]
        for b in ordered:
            before.append(before[-1] + out[b])
        firsts = [b.first for b in ordered]
        best: tuple[int, int, int] | None = None
        for low, high in itertools.pairwise(ordered):
            ancestor = low
            while high.first >= ancestor.end:
                ancestor = ancestor.parent()
            # the bins inside the ancestor are a run of the ordered bins (an antichain of dyadic bins)
            lo, hi = bisect.bisect_left(firsts, ancestor.first), bisect.bisect_left(firsts, ancestor.end)
            key = (ancestor.level, before[hi] - before[lo], ancestor.index)
            best = key if best is None or key < best else best
        assert best is not None
        level, count, index = best
        if level > MAX_LEVEL:
            raise PartialError(f"more than {MAX_COARSE_BINS} coarse bins at level {MAX_LEVEL}")
        ancestor = DyadicBin(level, index)
        for b in [b for b in ordered if ancestor.first <= b.first < ancestor.end]:
            del out[b]
        out[ancestor] = count
    return out


def dyadic_bins(sketches: Iterable[query_pb2.CoarseSketch]) -> dict[DyadicBin, int]:
    """The merge of coarse sketches: dyadic bins are nested or disjoint, so the bins of all of
    them that lie in no other bin partition the readings; each takes the counts of every bin
    inside it. Never finer than any input's bin. Reads the uniform form (`level`, `bins`) too."""
    given: list[tuple[DyadicBin, int]] = []
    for sketch in sketches:
        given += [(DyadicBin(b.level, b.index), b.count) for b in sketch.intervals]
        given += [(DyadicBin(sketch.level, index), n) for index, n in sketch.bins.items()]
    for b, _ in given:
        if not MIN_LEVEL <= b.level <= MAX_LEVEL:
            raise PartialError(f"a coarse sketch holds a bin of level {b.level}: levels are {MIN_LEVEL} to {MAX_LEVEL}")
    merged: dict[DyadicBin, int] = {}
    for b, n in sorted(given, key=lambda item: -item[0].level):  # the coarsest first: it takes in those inside it
        outer = b
        while outer not in merged and outer.level < MAX_LEVEL:
            outer = outer.parent()
        target = outer if outer in merged else b
        merged[target] = merged.get(target, 0) + n
    return merged


def merge_coarse(a: query_pb2.CoarseSketch | None, b: query_pb2.CoarseSketch) -> query_pb2.CoarseSketch:
    """The asker's merge of hubs' sketches (docs/querying.md 7.6): unbounded, it never leaves."""
    return sketch_of(dyadic_bins([b] if a is None else [a, b]))


def value_in_bin(b: DyadicBin, f: float) -> float:
    """The value at fraction f (0 < f < 1) of the way through bin b's readings in increasing
    order: geometric between the bin's value edges gamma^lo and gamma^hi (a log-scale sketch's
    bins are equally wide in log value), mirrored for negative bins, and linear from 0 for the
    bin holding zero. The edges are clipped to [LOWEST_EDGE, HIGHEST_EDGE], where readings can be.
    A bin above MAX_INTERPOLATED_LEVEL gives its middle ordinal's value."""
    if b.level > MAX_INTERPOLATED_LEVEL:
        return ordinal_value((b.first + b.end) // 2)

    def clip(x: int) -> int:
        return min(max(x, LOWEST_EDGE), HIGHEST_EDGE)

    if b.first > 0:  # ordinals o = key + 2048; fine bin `key` holds (gamma^(key - 1), gamma^key]
        lo, hi = clip(b.first - ORDINAL_OFFSET - 1), clip(b.end - ORDINAL_OFFSET - 1)
        return float(GAMMA ** (lo + f * (hi - lo)))
    if b.end <= 0:  # ordinals o = -(key + 2048): the most negative ordinal is the largest magnitude
        lo, hi = clip(-b.end - ORDINAL_OFFSET), clip(-b.first - ORDINAL_OFFSET)
        return -float(GAMMA ** (hi - f * (hi - lo)))
    top = b.end - ORDINAL_OFFSET - 1  # the bin holding zero: 0, then positives up to gamma^top
    return 0.0 if top < LOWEST_EDGE else f * float(GAMMA ** clip(top))


def coarse_quantile(sketch: query_pb2.CoarseSketch, q: float) -> float:
    """The value at rank r = q * (n - 1): in the first bin (by first ordinal) whose cumulative
    count exceeds r, at fraction (r - before + 1) / (count + 1) of the way through it, where
    `before` counts the readings of the bins below; nan if empty. Reads the bins only."""
    bins = sorted(dyadic_bins([sketch]).items(), key=lambda item: item[0].first)
    total = sum(n for _, n in bins)
    if total == 0:
        return math.nan
    rank, before = q * (total - 1), 0
    for b, n in bins:
        if n and before + n > rank:
            return value_in_bin(b, (rank - before + 1) / (n + 1))
        before += n
    b, n = bins[-1]  # q = 1 with rounding: the top of the last bin
    return value_in_bin(b, n / (n + 1))


def mixture_quantile(sketches: Sequence[query_pb2.CoarseSketch], q: float) -> float:
    """The quantile of the MIXTURE of several sketches' bins (a cell's sub-cells', or every
    hub's): one sketch is read as `coarse_quantile`; of several, each bin's c readings are
    placed at fractions 1/(c + 1) ... c/(c + 1) of the way through it (`value_in_bin`), all of
    them sorted, and the value at rank r = q (n - 1) taken, between the two placed readings
    around a fractional rank geometrically (linearly across zero). Arithmetic on per-sub-cell
    histograms that each obey the rule, so it tells no more than they do; far closer than
    reading their maximal merge, where one sub-cell's wide bin swallows every other's fine ones
    (docs/benchmarks.md). Up to PLACED_LIMIT readings are placed and sorted; beyond, the one
    at a rank is found by bisection over the doubles (`_placed_at_rank`, the same value), so
    the cost is bounded by the bins, never by the counts (which, at an asker, a provider claims)."""
    if len(sketches) == 1:
        return coarse_quantile(sketches[0], q)
    bins = [(b, n) for sketch in sketches for b, n in dyadic_bins([sketch]).items() if n]
    total = sum(n for _, n in bins)
    if not total:
        return math.nan
    rank = q * (total - 1)
    i = min(int(rank), total - 1)
    t = rank - i
    if total <= PLACED_LIMIT:
        placed = sorted(value_in_bin(b, j / (n + 1)) for b, n in bins for j in range(1, n + 1))
        a, b = placed[i], placed[min(i + 1, total - 1)]
    else:
        a = _placed_at_rank(bins, i)
        b = _placed_at_rank(bins, i + 1) if t and i + 1 < total else a
    if t == 0 or i + 1 >= total:
        return a
    if a > 0 and b > 0:
        return float(a * (b / a) ** t)
    if a < 0 and b < 0:
        return float(-(-a * (b / a) ** t))
    return a + t * (b - a)


def _double_order(x: float) -> int:
    """An integer for each double, in the doubles' order (-0.0 and 0.0 alike)."""
    bits: int = struct.unpack("<q", struct.pack("<d", x))[0]
    return bits if bits >= 0 else -(bits & 0x7FFFFFFFFFFFFFFF)


def _double_of_order(k: int) -> float:
    bits = k if k >= 0 else (-k) | (1 << 63)
    value: float = struct.unpack("<d", struct.pack("<Q", bits))[0]
    return value


def _placed_at_most(b: DyadicBin, n: int, v: float) -> int:
    """How many of bin b's n placed readings lie at or below v (placement rises with j)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if value_in_bin(b, mid / (n + 1)) <= v:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _placed_at_rank(bins: Sequence[tuple[DyadicBin, int]], rank: int) -> float:
    """The placed reading at 0-based `rank` of all bins' placed readings in increasing order:
    the smallest double v with more than `rank` of them at or below v (at most 64 halvings,
    each counting every bin in O(1) but the few whose readings straddle v, by bisection)."""
    ends = [(value_in_bin(b, 1 / (n + 1)), value_in_bin(b, n / (n + 1)), b, n) for b, n in bins]

    def at_most(v: float) -> int:
        return sum(n if last <= v else 0 if first > v else _placed_at_most(b, n, v) for first, last, b, n in ends)

    lo, hi = _double_order(min(e[0] for e in ends)), _double_order(max(e[1] for e in ends))
    while lo < hi:
        mid = (lo + hi) // 2
        if at_most(_double_of_order(mid)) > rank:
            hi = mid
        else:
            lo = mid + 1
    return _double_of_order(lo)


def coarse_threshold(min_group_size: int) -> int:
    """Every released bin mixes readings of at least two contributors, and at least k."""
    return max(2, min_group_size)


def contributors_needed(aggregate: str, min_group_size: int) -> int:
    """The contributors a cell needs before this aggregate of it is released (docs/privacy.md
    2.5). Each figure an asker can get of one cell is an equation on its contributors' values:
    the sum (a mean), the sum of squares (a stddev, with the mean), and min and max, each of
    which IS one contributor's reading. Two equations (sum, sum of squares) solve two unknowns:
    a stddev needs >= 3 contributors. Min and max pin two contributors and leave the sum and
    sum of squares over the other c - 2, which must still be a group the agreement allows and
    not solvable: c - 2 >= max(k, 3). With k = 1 the agreement releases single contributors."""
    if min_group_size <= 1:
        return min_group_size
    unsolvable = max(min_group_size, 3)
    if aggregate == "stddev":
        return unsolvable
    if aggregate in ("min", "max"):
        return unsolvable + 2
    return min_group_size


def cell_value(row: CellRow, aggregate: str, quantile: float, sketch: query_pb2.CoarseSketch | None = None,
               parts: Sequence[query_pb2.CoarseSketch] = ()) -> float:
    """The final value of one provider's cell (what a per-municipality answer releases); a
    quantile is read from the cell's coarsened sketch, never from the fine one: from the
    mixture of its sub-cells' sketches (`parts`) when given."""
    if aggregate == "quantile":
        if parts:
            return mixture_quantile(parts, quantile)
        return coarse_quantile(sketch, quantile) if sketch is not None else math.nan
    m = Merged(count=row.count, sum=row.sum, sum_squares=row.sum_squares, min=row.min, max=row.max)
    return m.value(aggregate, quantile)


def build(digest: bytes, provider: str, municipality: str, agreement_id: str, min_group_size: int, group: str,
          rows: list[CellRow], computed_at_ms: int, aggregate: str, withheld: frozenset[int] = frozenset(),
          noisy: bool = False, quantile: float = 0.0,
          coarse: dict[int, query_pb2.CoarseSketch] | None = None,
          parts: dict[int, list[query_pb2.CoarseSketch]] | None = None,
          mixture: frozenset[int] = frozenset()) -> query_pb2.PartialResult:
    """`group` is the municipality (per-municipality answer: final values only) or "region".
    `withheld`: bucket starts of cells to suppress although they look large enough (they hide a
    small sub-cell, or the release log forbids them; see federation/query/provider.py).
    `coarse`: for a quantile, each bucket's coarsened sketch (`coarsen`); a bucket without one
    is withheld, per municipality as region-wide. `parts`: each bucket's sub-cells' sketches
    (`subcell_sketches`), which a per-municipality value is read from (`mixture_quantile`);
    region-wide, the cells of `mixture` (`mixture_cells`: decided by the query and agreement,
    never by data) carry them too, for the asker to read the mixture of."""
    per_municipality = group != "region"
    released = set() if per_municipality else RELEASED_FIELDS[aggregate]
    is_quantile = aggregate == "quantile"
    needed = contributors_needed(aggregate, min_group_size)
    cells = []
    for r in rows:
        sketch = (coarse or {}).get(r.bucket_start_ms) if is_quantile else None
        if r.contributors < needed or r.bucket_start_ms in withheld or (is_quantile and sketch is None):
            cells.append(query_pb2.Cell(group=group, bucket_start_ms=r.bucket_start_ms, suppressed=True))
            continue
        cells.append(query_pb2.Cell(group=group, bucket_start_ms=r.bucket_start_ms, count=r.count,
                                    value=cell_value(r, aggregate, quantile, sketch, (parts or {}).get(r.bucket_start_ms, ()))
                                    if per_municipality else 0.0,
                                    sum=r.sum if "sum" in released else 0.0,
                                    sum_squares=r.sum_squares if "sum_squares" in released else 0.0,
                                    min=r.min if "min" in released else 0.0, max=r.max if "max" in released else 0.0,
                                    coarse=sketch if "coarse" in released else None, noisy=noisy,
                                    # an exact count of contributors would leak past the noise
                                    contributors=0 if noisy else r.contributors,
                                    subcells=(parts or {}).get(r.bucket_start_ms, ())
                                    if "coarse" in released and r.bucket_start_ms in mixture else ()))
    return query_pb2.PartialResult(query_digest=digest, provider_hub_id=provider, municipality=municipality,
                                   agreement_id=agreement_id, computed_at_ms=computed_at_ms,
                                   min_group_size=min_group_size, cells=cells)


# -- the size of a sealed partial ----------------------------------------------------------------
# The entry hub sees each sealed partial's length. It is padded (federation/sealing.py) to the
# length of the LARGEST signed partial the query could yield: every bucket of the window present,
# every field the aggregate releases set at its longest encoding. That depends only on the
# query, the provider's id and municipality and the agreement id, which the entry hub knows:
# the length says nothing about which cells were withheld or how many readings they hold.
MAX_SEALED_PARTIAL_BYTES = 2 * 1024 * 1024  # refused above: a few hubs' partials fit one 16 MiB answer
_U64, _U32, _I64 = 2**64 - 1, 2**32 - 1, 2**63 - 1
# The largest |coarse bin index| of any finite reading (at MIN_LEVEL; coarser bins have smaller ones).
LARGEST_COARSE_INDEX = (ORDINAL_OFFSET + bin_of(sys.float_info.max)[1]) >> MIN_LEVEL


def _varint_len(n: int) -> int:
    """Bytes of a protobuf varint (negative int64: ten)."""
    if n < 0:
        return 10
    length = 1
    while n >= 0x80:
        n >>= 7
        length += 1
    return length


def _largest_sketch() -> query_pb2.CoarseSketch:
    """A coarse sketch of MAX_COARSE_BINS bins at their longest encoding (levels are all one byte)."""
    return query_pb2.CoarseSketch(intervals=[query_pb2.CoarseBin(level=MAX_LEVEL, index=-LARGEST_COARSE_INDEX - 1 + i, count=_U64)
                                             for i in range(MAX_COARSE_BINS)])


def _largest_cell(group: str, aggregate: str, per_municipality: bool) -> query_pb2.Cell:
    """A cell with every field this aggregate may carry at its longest encoding (no bucket start)."""
    released = set() if per_municipality else RELEASED_FIELDS[aggregate]
    cell = query_pb2.Cell(group=group, count=_U64, contributors=_U32, suppressed=True, noisy=True,
                          value=1.0 if per_municipality else 0.0)
    for name in released - {"coarse"}:
        setattr(cell, name, 1.0)  # a double is 8 bytes whatever its value (0.0 is left out)
    if "coarse" in released:
        cell.coarse.CopyFrom(_largest_sketch())
    return cell


def _subcell_counts(spec: query_pb2.QuerySpec, grain: str | None) -> dict[int, int]:
    """Per cell of a region-wide quantile query under an agreement of finest grain `grain`, the
    sub-cells it spans; empty for any other query (none carries sub-cell sketches)."""
    if grain is None or spec.group_by != "region" or spec.aggregate != "quantile":
        return {}
    return {start: len(buckets(grain, start, end)) for start, end in buckets(spec.bucket, spec.start_ms, spec.end_ms)}


def mixture_cells(spec: query_pb2.QuerySpec, grain: str | None) -> frozenset[int]:
    """The cells (bucket starts) whose sub-cells' sketches a region-wide quantile partial
    carries: those of 2 to MAX_SUBCELL_SKETCHES sub-cells, none if the padded partial would
    then exceed MAX_SEALED_PARTIAL_BYTES. A function of the query and the agreement's grain
    (which the entry hub sees in the co-signed agreement) alone: never of data."""
    cells = frozenset(start for start, n in _subcell_counts(spec, grain).items() if 2 <= n <= MAX_SUBCELL_SKETCHES)
    if cells and _padded(spec, "0" * 32, "0000", "urn:uuid:" + "0" * 36, (), grain, cells) > MAX_SEALED_PARTIAL_BYTES:
        return frozenset()
    return cells


def padded_size(spec: query_pb2.QuerySpec, provider_hub_id: str, municipality: str, agreement_id: str,
                key_history: Sequence[bytes] = (), grain: str | None = None) -> int:
    """The length every sealed partial of this query is padded to before sealing: the longest
    serialized SignedPartial it could be, plus the one-byte padding marker. The provider's key
    history (public, in its descriptor) rides along whole. `grain`: the agreement's finest
    grain (policy.finest_grain), None for a hub's own data: each cell of `mixture_cells` is
    counted with as many sub-cell sketches of MAX_COARSE_BINS bins as it spans sub-cells."""
    return _padded(spec, provider_hub_id, municipality, agreement_id, key_history, grain, mixture_cells(spec, grain))


def _padded(spec: query_pb2.QuerySpec, provider_hub_id: str, municipality: str, agreement_id: str,
            key_history: Sequence[bytes], grain: str | None, mixture: frozenset[int]) -> int:
    per_municipality = spec.group_by == "municipality"
    group = municipality if per_municipality else "region"
    cell_body = int(_largest_cell(group, spec.aggregate, per_municipality).ByteSize())
    sketch = int(_largest_sketch().ByteSize())
    subcell_bytes = 1 + _varint_len(sketch) + sketch  # one repeated `subcells` entry: tag, length, sketch
    spans = _subcell_counts(spec, grain)
    cells = 0
    for start, _ in buckets(spec.bucket, spec.start_ms, spec.end_ms):
        body = cell_body + (spans[start] * subcell_bytes if start in mixture else 0)
        size = body + 1 + _varint_len(start) if start else body  # bucket_start_ms = 0 is left out
        cells += 1 + _varint_len(size) + size  # the repeated field's tag and length
    header = query_pb2.PartialResult(query_digest=bytes(32), provider_hub_id=provider_hub_id, municipality=municipality,
                                     agreement_id=agreement_id, computed_at_ms=_I64, min_group_size=_U32,
                                     dp_budget_micro=_U64, dp_spent_micro=_U64).ByteSize()
    partial = int(header) + cells
    history = int(query_pb2.SignedPartial(provider_key_history=list(key_history)).ByteSize())
    signed = 1 + _varint_len(partial) + partial + (2 + 64) + (2 + 32) + history  # partial, signature, key, history
    return signed + 1


def check_size(spec: query_pb2.QuerySpec) -> None:
    """Refuse, before anything is computed, a query whose padded partial would be too large;
    decided on the query alone, by the entry hub and every provider alike."""
    size = padded_size(spec, "0" * 32, "0000", "urn:uuid:" + "0" * 36)
    if size > MAX_SEALED_PARTIAL_BYTES:
        raise PartialError(f"this query asks too many cells: each hub's partial would be {size} bytes, "
                           f"more than {MAX_SEALED_PARTIAL_BYTES}; ask a shorter window or a coarser bucket")


def sign_partial(identity: HubIdentity, partial: query_pb2.PartialResult) -> query_pb2.SignedPartial:
    payload = partial.SerializeToString()
    return query_pb2.SignedPartial(partial=payload, signature=sign(identity.identity_key, Domain.PARTIAL_RESULT, payload),
                                   provider_public_key=identity.public_key_raw, provider_key_history=identity.key_history)


def verify_partial(signed: query_pb2.SignedPartial, digest: bytes, expected_hub_id: str | None = None,
                   expected_key: bytes | None = None) -> query_pb2.PartialResult:
    key = signed.provider_public_key
    if expected_key is not None and key != expected_key:
        raise PartialError("the partial is signed with a key other than the provider's pinned key")
    if not verify(key, Domain.PARTIAL_RESULT, signed.partial, signed.signature):
        raise PartialError("the partial result's signature does not verify")
    partial: query_pb2.PartialResult = query_pb2.PartialResult.FromString(signed.partial)
    if key_of_hub(partial.provider_hub_id, key, signed.provider_key_history) or (
            expected_hub_id and partial.provider_hub_id != expected_hub_id):
        raise PartialError("the partial result names another provider than its signer")
    if partial.query_digest != digest:
        raise PartialError("the partial result answers another query")
    return partial


def check_cells(partial: query_pb2.PartialResult, spec: query_pb2.QuerySpec, municipality: str) -> None:
    """A provider may only speak for its own municipality, about buckets of this query's
    window, once each: otherwise it could put figures under another municipality's name."""
    if partial.municipality != municipality:
        raise PartialError(f"the partial speaks for municipality {partial.municipality}, not {municipality}")
    allowed_group = municipality if spec.group_by == "municipality" else "region"
    starts = {start for start, _ in buckets(spec.bucket, spec.start_ms, spec.end_ms)}
    seen = set()
    for cell in partial.cells:
        if cell.group != allowed_group or cell.bucket_start_ms not in starts or cell.bucket_start_ms in seen:
            raise PartialError("the partial holds a cell outside the query (group, bucket or a repeat)")
        seen.add(cell.bucket_start_ms)


@dataclass
class Merged:
    count: int = 0
    sum: float = 0.0
    sum_squares: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    contributors: int = 0
    suppressed: bool = False
    noisy: bool = False
    final: float | None = None  # a provider's final value (per-municipality cells)
    # region-wide quantiles: every hub's sub-cell sketches, or its one sketch when it sent none
    components: list[query_pb2.CoarseSketch] = field(default_factory=list)
    cells: int = 0

    def add(self, cell: query_pb2.Cell, per_municipality: bool) -> None:
        self.cells += 1
        if cell.suppressed:
            self.suppressed = True
            return
        self.noisy = self.noisy or cell.noisy
        self.count += cell.count
        self.contributors += cell.contributors
        if per_municipality:
            self.final = cell.value
            return
        self.sum += cell.sum
        self.sum_squares += cell.sum_squares
        self.min = min(self.min, cell.min)
        self.max = max(self.max, cell.max)
        if len(cell.subcells) > MAX_SUBCELL_SKETCHES:
            raise PartialError(f"a cell carries {len(cell.subcells)} sub-cell sketches, more than {MAX_SUBCELL_SKETCHES}")
        if cell.subcells:
            self.components.extend(cell.subcells)
        elif cell.HasField("coarse"):
            self.components.append(cell.coarse)

    def value(self, aggregate: str, quantile: float) -> float:
        if self.final is not None:
            return self.final
        n = self.count
        if aggregate == "count":
            return float(n)
        if aggregate == "sum":
            return self.sum
        if aggregate == "mean":
            return self.sum / n if n else 0.0
        if aggregate == "min":
            return self.min
        if aggregate == "max":
            return self.max
        if aggregate == "stddev":  # sample standard deviation
            return math.sqrt(max(0.0, (self.sum_squares - self.sum * self.sum / n) / (n - 1))) if n > 1 else 0.0
        return mixture_quantile(self.components, quantile) if self.components else math.nan


def merge(partials: list[query_pb2.PartialResult], spec: query_pb2.QuerySpec) -> list[query_pb2.Row]:
    """Merge cells by (group, bucket); a cell any provider withheld is withheld in the answer.
    Per municipality, each cell comes from one provider and its final value is taken as is."""
    per_municipality = spec.group_by == "municipality"
    merged: dict[tuple[str, int], Merged] = {}
    for partial in partials:
        for cell in partial.cells:
            group = cell.group if per_municipality else "region"
            m = merged.setdefault((group, cell.bucket_start_ms), Merged())
            if per_municipality and m.cells:
                raise PartialError(f"two hubs answered for municipality {group}: their final values cannot be merged")
            m.add(cell, per_municipality)
    rows = []
    for (group, start), m in sorted(merged.items(), key=lambda item: (item[0][1], item[0][0])):
        rows.append(query_pb2.Row(
            group=group, bucket_start_ms=start, bucket_label=label(spec.bucket, start),
            value=0.0 if m.suppressed else m.value(spec.aggregate, spec.quantile),
            readings=0 if m.suppressed else m.count, contributors=0 if m.suppressed else m.contributors,
            suppressed=m.suppressed, noisy=m.noisy and not m.suppressed,
        ))
    return rows


def summarize(answer: query_service_pb2.QueryAnswer, digest: bytes, merged_at_ms: int) -> query_pb2.AnswerSummary:
    """What the entry hub signs: each hub asked (id, municipality, status, reason, agreement,
    digests of its sealed partial and of its co-signed agreement), the partial flag and the missing hubs. No rows: it cannot
    read the partials; the asker merges them and anyone can merge them again to check."""
    return query_pb2.AnswerSummary(
        query_digest=digest, answered_by=answer.answered_by, partial=answer.partial,
        missing_hubs=answer.missing_hubs, merged_at_ms=merged_at_ms,
        provenance=[query_pb2.ProvenanceSummary(
            hub_id=p.hub_id, municipality=p.municipality, status=p.status, reason=p.reason, agreement_id=p.agreement_id,
            partial_digest=hashlib.sha256(p.sealed_partial).digest() if p.sealed_partial else b"",
            agreement_digest=hashlib.sha256(p.agreement).digest() if p.agreement else b"",
        ) for p in answer.provenance],
    )


def sign_answer(identity: HubIdentity, answer: query_service_pb2.QueryAnswer, digest: bytes, merged_at_ms: int) -> None:
    summary = summarize(answer, digest, merged_at_ms).SerializeToString()
    answer.summary = summary
    answer.summary_signature = sign(identity.identity_key, Domain.QUERY_ANSWER, summary)
    answer.answered_by_public_key = identity.public_key_raw
    del answer.answered_by_key_history[:]
    answer.answered_by_key_history.extend(identity.key_history)


def verify_answer_summary(answer: query_service_pb2.QueryAnswer, digest: bytes) -> None:
    """The entry hub signed exactly this answer (hubs asked, statuses, sealed partials, partial flag)."""
    key = answer.answered_by_public_key
    if len(key) != 32 or key_of_hub(answer.answered_by, key, answer.answered_by_key_history):
        raise PartialError("the answer names a merging hub whose key it does not carry")
    if not verify(key, Domain.QUERY_ANSWER, answer.summary, answer.summary_signature):
        raise PartialError("the merging hub's signature over the answer does not verify")
    signed = query_pb2.AnswerSummary.FromString(answer.summary)
    if signed.merged_at_ms <= 0:
        raise PartialError("the answer summary has no merge time")
    expected = summarize(answer, digest, signed.merged_at_ms)
    if signed != expected:
        raise PartialError("the answer differs from what the entry hub signed (hubs asked, municipalities, statuses, reasons, "
                           "agreements, sealed partials, partial flag or missing hubs)")
