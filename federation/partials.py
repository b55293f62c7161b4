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

import hashlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from federation.query_spec import buckets, label
from node.api.v1 import query_pb2, query_service_pb2
from node.identity import HubIdentity
from node.keychain import key_of_hub
from node.signing import Domain, sign, verify
from node.sketch import bin_of, representative
from node.storage.base import CellRow


class PartialError(ValueError):
    pass


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
# from a sketch coarsened until each released bin mixes readings of >= max(k, 2) contributors,
# holds >= MIN_BIN_READINGS readings, spans >= 2^MIN_LEVEL fine bins (a factor gamma^8, 17 %),
# and there are at most MAX_COARSE_BINS bins (so a sealed partial's size is bounded). What an
# asker can learn, by sweeping q, is that histogram: never a reading to better than its bin.
ORDINAL_OFFSET = 2048  # keys of |v| >= MIN_INDEXABLE are > -1100: positive ordinals stay positive
MIN_LEVEL = 3          # a released bin is >= 8 fine bins wide: values within a factor gamma^8 = 1.173
MIN_BIN_READINGS = 10  # and holds at least this many readings
MAX_COARSE_BINS = 32   # and there are at most this many bins in one cell's sketch
MAX_LEVEL = 13         # at 2^13 every positive ordinal (and zero) shares bin 0, every negative bin -1


def ordinal(sign: int, key: int) -> int:
    return 0 if sign == 0 else sign * (key + ORDINAL_OFFSET)


def ordinal_value(o: int) -> float:
    if o == 0:
        return 0.0
    return math.copysign(representative(abs(o) - ORDINAL_OFFSET), o)


def coarsen(bins: dict[int, tuple[int, set[str]]], threshold: int) -> query_pb2.CoarseSketch | None:
    """The finest level >= MIN_LEVEL at which every coarse bin holds readings of >= threshold
    distinct contributors and >= MIN_BIN_READINGS readings, and there are at most
    MAX_COARSE_BINS bins; None if even the coarsest level does not (the cell is then withheld)."""
    for level in range(MIN_LEVEL, MAX_LEVEL + 1):
        coarse: dict[int, tuple[int, set[str]]] = {}
        for o, (n, who) in bins.items():
            index = o >> level  # floor division by 2^level, negatives included
            count, members = coarse.get(index, (0, set()))
            coarse[index] = (count + n, members | who)
        if len(coarse) <= MAX_COARSE_BINS and all(
                len(members) >= threshold and count >= MIN_BIN_READINGS for count, members in coarse.values()):
            return query_pb2.CoarseSketch(level=level, bins={i: n for i, (n, _) in coarse.items()})
    return None


def coarse_sketches(rows: list[tuple[int, int, int, str, int]], threshold: int) -> dict[int, query_pb2.CoarseSketch]:
    """Per bucket, the coarsened sketch of (bucket, sign, key, contributor, readings) rows (as
    the storage's sketch_bins_by_contributor yields them); a bucket that cannot be coarsened
    is left out (and then withheld)."""
    by_bucket: dict[int, dict[int, tuple[int, set[str]]]] = {}
    for b, sg, k, c, n in rows:
        bins = by_bucket.setdefault(b, {})
        o = ordinal(sg, k)
        count, who = bins.get(o, (0, set()))
        bins[o] = (count + n, who | {c})
    out = {}
    for b, bins in by_bucket.items():
        sketch = coarsen(bins, threshold)
        if sketch is not None:
            out[b] = sketch
    return out


def coarse_quantile(sketch: query_pb2.CoarseSketch, q: float) -> float:
    """The representative (middle ordinal) of the first coarse bin whose cumulative count
    exceeds q * (n - 1); nan if empty."""
    total = sum(sketch.bins.values())
    if total == 0:
        return math.nan
    rank, seen = q * (total - 1), 0
    width = 1 << sketch.level
    for index in sorted(sketch.bins):
        seen += sketch.bins[index]
        if seen > rank:
            return ordinal_value(index * width + width // 2)
    return ordinal_value(max(sketch.bins) * width + width // 2)


def merge_coarse(a: query_pb2.CoarseSketch | None, b: query_pb2.CoarseSketch) -> query_pb2.CoarseSketch:
    """Both at the coarser of the two levels, counts added."""
    level = max(a.level if a is not None else 0, b.level)
    bins: dict[int, int] = {}
    for sketch in (s for s in (a, b) if s is not None):
        for index, n in sketch.bins.items():
            bins[index >> (level - sketch.level)] = bins.get(index >> (level - sketch.level), 0) + n
    return query_pb2.CoarseSketch(level=level, bins=bins)


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


def cell_value(row: CellRow, aggregate: str, quantile: float, sketch: query_pb2.CoarseSketch | None = None) -> float:
    """The final value of one provider's cell (what a per-municipality answer releases); a
    quantile is read from the cell's coarsened sketch, never from the fine one."""
    if aggregate == "quantile":
        return coarse_quantile(sketch, quantile) if sketch is not None else math.nan
    m = Merged(count=row.count, sum=row.sum, sum_squares=row.sum_squares, min=row.min, max=row.max)
    return m.value(aggregate, quantile)


def build(digest: bytes, provider: str, municipality: str, agreement_id: str, min_group_size: int, group: str,
          rows: list[CellRow], computed_at_ms: int, aggregate: str, withheld: frozenset[int] = frozenset(),
          noisy: bool = False, quantile: float = 0.0,
          coarse: dict[int, query_pb2.CoarseSketch] | None = None) -> query_pb2.PartialResult:
    """`group` is the municipality (per-municipality answer: final values only) or "region".
    `withheld`: bucket starts of cells to suppress although they look large enough (they hide a
    small sub-cell, or the release log forbids them; see federation/query/provider.py).
    `coarse`: for a quantile, each bucket's coarsened sketch (`coarsen`); a bucket without one
    is withheld, per municipality as region-wide."""
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
                                    value=cell_value(r, aggregate, quantile, sketch) if per_municipality else 0.0,
                                    sum=r.sum if "sum" in released else 0.0,
                                    sum_squares=r.sum_squares if "sum_squares" in released else 0.0,
                                    min=r.min if "min" in released else 0.0, max=r.max if "max" in released else 0.0,
                                    coarse=sketch if "coarse" in released else None, noisy=noisy,
                                    # an exact count of contributors would leak past the noise
                                    contributors=0 if noisy else r.contributors))
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
# The largest |coarse bin index| (at MIN_LEVEL) of any finite reading.
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


def _largest_cell(group: str, aggregate: str, per_municipality: bool) -> query_pb2.Cell:
    """A cell with every field this aggregate may carry at its longest encoding (no bucket start)."""
    released = set() if per_municipality else RELEASED_FIELDS[aggregate]
    cell = query_pb2.Cell(group=group, count=_U64, contributors=_U32, suppressed=True, noisy=True,
                          value=1.0 if per_municipality else 0.0)
    for name in released - {"coarse"}:
        setattr(cell, name, 1.0)  # a double is 8 bytes whatever its value (0.0 is left out)
    if "coarse" in released:
        cell.coarse.level = MAX_LEVEL
        for i in range(MAX_COARSE_BINS):
            cell.coarse.bins[-LARGEST_COARSE_INDEX - 1 + i] = _U64  # keys of the longest zigzag encoding a sketch can have
    return cell


def padded_size(spec: query_pb2.QuerySpec, provider_hub_id: str, municipality: str, agreement_id: str,
                key_history: Sequence[bytes] = ()) -> int:
    """The length every sealed partial of this query is padded to before sealing: the longest
    serialized SignedPartial it could be, plus the one-byte padding marker. The provider's key
    history (public, in its descriptor) rides along whole."""
    per_municipality = spec.group_by == "municipality"
    group = municipality if per_municipality else "region"
    cell_body = int(_largest_cell(group, spec.aggregate, per_municipality).ByteSize())
    cells = 0
    for start, _ in buckets(spec.bucket, spec.start_ms, spec.end_ms):
        size = cell_body + 1 + _varint_len(start) if start else cell_body  # bucket_start_ms = 0 is left out
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
    coarse: query_pb2.CoarseSketch | None = None  # region-wide quantiles
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
        if cell.HasField("coarse"):
            self.coarse = merge_coarse(self.coarse, cell.coarse)

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
        return coarse_quantile(self.coarse, quantile) if self.coarse is not None else math.nan


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
