"""Query answers as files: what `smartregion query --json` writes and `query verify` checks.

The file holds the whole QueryAnswer (base64 protobuf) — the asker's signed query, the entry
hub's signed summary of what every hub answered, and every provider's signed partial as the
asker opened it — plus the same content in readable form. Verification needs no network and
no key: each partial's signature is checked against the key it names (the hub id must derive
from it), every partial must answer this exact query and agree with the entry hub's summary,
merging the verified partials again must give exactly the rows shown, and every readable
field must equal its signed source. The only unsigned figures (each hub's latency, measured
by the entry hub, and how the asking partner checked each signer's key: Provenance.key_check,
what the partner's session saw online, which `query verify` cannot check again) stand apart
under "unsigned" and are printed as unsigned.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from federation import envelope
from federation.query import asker
from node.api.v1 import query_pb2, query_service_pb2

FORMAT = "smartregion-query-answer"
VERSION = 3  # 3: the signed times (asked_at_ms, answered_at_ms, each partial's computed_at_ms)


class AnswerError(ValueError):
    pass


def readable_rows(answer: query_service_pb2.QueryAnswer) -> list[dict[str, Any]]:
    return [{"group": r.group, "bucket": r.bucket_label, "bucket_start_ms": r.bucket_start_ms,
             "value": None if r.suppressed else r.value, "readings": r.readings,
             "contributors": r.contributors, "suppressed": r.suppressed, "noisy": r.noisy} for r in answer.rows]


def readable_query(spec: query_pb2.QuerySpec) -> dict[str, Any]:
    """Every field of the query as the asker signed it (the answer key in hex)."""
    return {"dataset": spec.dataset, "metric": spec.metric, "aggregate": spec.aggregate, "quantile": spec.quantile,
            "start_ms": spec.start_ms, "end_ms": spec.end_ms, "bucket": spec.bucket, "group_by": spec.group_by,
            "municipalities": list(spec.municipalities), "hub_ids": list(spec.hub_ids), "purpose_code": spec.purpose_code,
            "deadline_ms": spec.deadline_ms, "epsilon": spec.epsilon, "answer_key": spec.answer_key.hex()}


def _computed_at_ms(p: query_pb2.Provenance) -> int | None:
    """When the provider computed its partial (signed by it), None for a hub that did not answer."""
    return query_pb2.PartialResult.FromString(p.partial.partial).computed_at_ms if p.partial.partial else None


def readable_provenance(answer: query_service_pb2.QueryAnswer) -> list[dict[str, Any]]:
    return [{"hub_id": p.hub_id, "municipality": p.municipality, "status": p.status, "reason": p.reason,
             "agreement_id": p.agreement_id, "computed_at_ms": _computed_at_ms(p)} for p in answer.provenance]


def readable(answer: query_service_pb2.QueryAnswer) -> dict[str, Any]:
    """Every field a person reads, each derived from a signed source."""
    request = envelope.parse(answer.query)
    return {
        "query": readable_query(request.query),
        "asked_by": request.caller_id,
        "asked_at_ms": request.issued_at_ms,  # signed by the asker
        "answered_by": answer.answered_by,
        "answered_at_ms": query_pb2.AnswerSummary.FromString(answer.summary).merged_at_ms,  # signed by the entry hub
        "rows": readable_rows(answer),
        "partial": answer.partial,
        "missing_hubs": list(answer.missing_hubs),
        "provenance": readable_provenance(answer),
    }


def to_json(answer: query_service_pb2.QueryAnswer) -> bytes:
    doc = {"format": FORMAT, "version": VERSION, **readable(answer),
           "unsigned": {"latency_ms": {p.hub_id: round(p.latency_ms, 1) for p in answer.provenance},
                        # the asking partner's own check of each signer's key (PartnerSession.ask)
                        **({"key_check": {p.hub_id: p.key_check for p in answer.provenance if p.key_check}}
                           if any(p.key_check for p in answer.provenance) else {})},
           "answer": base64.b64encode(answer.SerializeToString()).decode()}
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


@dataclass
class VerifiedAnswer:
    answer: query_service_pb2.QueryAnswer
    verified_hubs: list[str]
    query: dict[str, Any]
    unsigned: dict[str, Any]


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values of the same JSON type (a number is not true; 2 and 2.0 are one number)."""
    number = (int, float)
    if isinstance(a, number) and isinstance(b, number) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return bool(a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a))
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _refuse_repeated_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose member names are unique (RFC 8259 only says SHOULD): with a repeated
    name, readers disagree on which value is meant (Python keeps the last, others the first)."""
    names = [name for name, _ in pairs]
    if len(names) != len(set(names)):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise AnswerError(f"the file repeats the member {', '.join(map(repr, repeated))}: which one is meant is ambiguous")
    return dict(pairs)


def load(data: bytes) -> Any:
    """An answer file's JSON, refused if any object repeats a member name."""
    try:
        return json.loads(data, object_pairs_hook=_refuse_repeated_names)
    except ValueError as exc:
        if isinstance(exc, AnswerError):
            raise
        raise AnswerError(f"not a query answer file: {exc}") from None


def verify(data: bytes) -> VerifiedAnswer:
    doc = load(data)
    try:
        answer = query_service_pb2.QueryAnswer.FromString(base64.b64decode(doc["answer"], validate=True))
    except (ValueError, KeyError, TypeError, DecodeError) as exc:
        raise AnswerError(f"not a query answer file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise AnswerError(f"not a smartregion query answer (version {VERSION})")
    try:
        rows = asker.merge_opened(answer)
    except asker.AnswerRefused as exc:
        raise AnswerError(str(exc)) from None
    if [MessageToDict(r) for r in rows] != [MessageToDict(r) for r in answer.rows]:
        raise AnswerError("the rows are not what the signed partial results merge to")
    try:
        signed = readable(answer)
    except envelope.EnvelopeError as exc:
        raise AnswerError(str(exc)) from None
    known = {"format", "version", "answer", "unsigned", *signed}
    if set(doc) != known:
        raise AnswerError(f"unexpected or missing fields: {', '.join(sorted(set(doc) ^ known))}")
    for key, value in signed.items():
        if not _same(doc[key], value):
            raise AnswerError(f"the readable {key!r} differs from what was signed")
    unsigned = doc["unsigned"]
    if not isinstance(unsigned, dict) or not {"latency_ms"} <= set(unsigned) <= {"latency_ms", "key_check"}:
        raise AnswerError("the unsigned section holds something other than latencies and key checks")
    if unsigned.get("key_check", {}) != {p.hub_id: p.key_check for p in answer.provenance if p.key_check}:
        raise AnswerError("the unsigned key checks differ from the answer's")
    verified = [p.hub_id for p in answer.provenance if p.status == "answered"]
    return VerifiedAnswer(answer, verified, signed["query"], unsigned)
