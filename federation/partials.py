"""Partial results: built and signed by a provider, verified and merged by the asking hub.

Cells carry count, sum, sum of squares, min, max, contributors and (for quantiles) a sketch,
so merging is exact. A cell with fewer contributors than the minimum group size leaves the
provider with no values at all."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from federation.query_spec import buckets, label
from node.api.v1 import query_pb2, query_service_pb2
from node.identity import HubIdentity
from node.signing import Domain, hub_id_from_public_key, sign, verify
from node.sketch import Sketch
from node.storage.base import CellRow


class PartialError(ValueError):
    pass


def query_digest(signed_query_payload: bytes) -> bytes:
    return hashlib.sha256(signed_query_payload).digest()


# What each aggregate needs to be merged exactly; nothing else leaves the provider. (The count
# of readings always does: it is how an answer says how much data stands behind a value.)
RELEASED_FIELDS = {
    "count": set(),
    "sum": {"sum"},
    "mean": {"sum"},
    "stddev": {"sum", "sum_squares"},
    "min": {"min"},
    "max": {"max"},
    "quantile": {"sketch"},
}


def build(digest: bytes, provider: str, municipality: str, agreement_id: str, min_group_size: int, group: str,
          rows: list[CellRow], computed_at_ms: int, aggregate: str, withheld: frozenset[int] = frozenset(),
          noisy: bool = False) -> query_pb2.PartialResult:
    """`withheld`: bucket starts of cells to suppress although they are large enough themselves
    (they contain a small sub-cell; see QueryService.compute)."""
    released = RELEASED_FIELDS[aggregate]
    cells = []
    for r in rows:
        if r.contributors < min_group_size or r.bucket_start_ms in withheld:
            cells.append(query_pb2.Cell(group=group, bucket_start_ms=r.bucket_start_ms, suppressed=True))
            continue
        sketch = None
        if r.sketch_bins and "sketch" in released:
            s = Sketch()
            for sg, key, n in r.sketch_bins:
                s.add_bin(sg, key, n)
            sketch = s.to_proto()
        cells.append(query_pb2.Cell(group=group, bucket_start_ms=r.bucket_start_ms, count=r.count,
                                    sum=r.sum if "sum" in released else 0.0,
                                    sum_squares=r.sum_squares if "sum_squares" in released else 0.0,
                                    min=r.min if "min" in released else 0.0, max=r.max if "max" in released else 0.0,
                                    sketch=sketch, noisy=noisy,
                                    # an exact count of contributors would leak past the noise
                                    contributors=0 if noisy else r.contributors))
    return query_pb2.PartialResult(query_digest=digest, provider_hub_id=provider, municipality=municipality,
                                   agreement_id=agreement_id, computed_at_ms=computed_at_ms,
                                   min_group_size=min_group_size, cells=cells)


def sign_partial(identity: HubIdentity, partial: query_pb2.PartialResult) -> query_pb2.SignedPartial:
    payload = partial.SerializeToString()
    return query_pb2.SignedPartial(partial=payload, signature=sign(identity.identity_key, Domain.PARTIAL_RESULT, payload),
                                   provider_public_key=identity.public_key_raw)


def verify_partial(signed: query_pb2.SignedPartial, digest: bytes, expected_hub_id: str | None = None,
                   expected_key: bytes | None = None) -> query_pb2.PartialResult:
    key = signed.provider_public_key
    if expected_key is not None and key != expected_key:
        raise PartialError("the partial is signed with a key other than the provider's pinned key")
    if not verify(key, Domain.PARTIAL_RESULT, signed.partial, signed.signature):
        raise PartialError("the partial result's signature does not verify")
    partial = query_pb2.PartialResult.FromString(signed.partial)
    if partial.provider_hub_id != hub_id_from_public_key(key) or (expected_hub_id and partial.provider_hub_id != expected_hub_id):
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
    sketch: Sketch = field(default_factory=Sketch)

    def add(self, cell: query_pb2.Cell) -> None:
        if cell.suppressed:
            self.suppressed = True
            return
        self.noisy = self.noisy or cell.noisy
        self.count += cell.count
        self.sum += cell.sum
        self.sum_squares += cell.sum_squares
        self.min = min(self.min, cell.min)
        self.max = max(self.max, cell.max)
        self.contributors += cell.contributors
        if cell.HasField("sketch"):
            self.sketch = self.sketch.merge(Sketch.from_proto(cell.sketch))

    def value(self, aggregate: str, quantile: float) -> float:
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
        return self.sketch.quantile(quantile)


def merge(partials: list[query_pb2.PartialResult], spec: query_pb2.QuerySpec) -> list[query_pb2.Row]:
    """Merge cells by (group, bucket); a cell any provider withheld is withheld in the answer."""
    merged: dict[tuple[str, int], Merged] = {}
    for partial in partials:
        for cell in partial.cells:
            group = cell.group if spec.group_by == "municipality" else "region"
            merged.setdefault((group, cell.bucket_start_ms), Merged()).add(cell)
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
    """What the merging hub signs: rows, each hub's status and partial digest, the partial flag."""
    return query_pb2.AnswerSummary(
        query_digest=digest, answered_by=answer.answered_by, rows=answer.rows, partial=answer.partial,
        missing_hubs=answer.missing_hubs, merged_at_ms=merged_at_ms,
        provenance=[query_pb2.ProvenanceSummary(
            hub_id=p.hub_id, status=p.status, reason=p.reason, agreement_id=p.agreement_id,
            partial_digest=hashlib.sha256(p.partial.partial).digest() if p.partial.partial else b"",
        ) for p in answer.provenance],
    )


def sign_answer(identity: HubIdentity, answer: query_service_pb2.QueryAnswer, digest: bytes, merged_at_ms: int) -> None:
    summary = summarize(answer, digest, merged_at_ms).SerializeToString()
    answer.summary = summary
    answer.summary_signature = sign(identity.identity_key, Domain.QUERY_ANSWER, summary)
    answer.answered_by_public_key = identity.public_key_raw


def verify_answer_summary(answer: query_service_pb2.QueryAnswer, digest: bytes) -> None:
    """The merging hub signed exactly this answer (rows, statuses, partials, partial flag)."""
    key = answer.answered_by_public_key
    if len(key) != 32 or hub_id_from_public_key(key) != answer.answered_by:
        raise PartialError("the answer names a merging hub whose key it does not carry")
    if not verify(key, Domain.QUERY_ANSWER, answer.summary, answer.summary_signature):
        raise PartialError("the merging hub's signature over the answer does not verify")
    signed = query_pb2.AnswerSummary.FromString(answer.summary)
    if signed.merged_at_ms <= 0:
        raise PartialError("the answer summary has no merge time")
    expected = summarize(answer, digest, signed.merged_at_ms)
    if signed != expected:
        raise PartialError("the answer differs from what the merging hub signed (rows, hubs asked, statuses or partial flag)")
