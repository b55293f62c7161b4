"""Query answers as files: what `smartregion query --json` writes and `query verify` checks.

The file holds the whole QueryAnswer (base64 protobuf) — the asker's signed query and every
provider's signed partial — plus the same rows in readable form. Verification needs no
network: each partial's signature is checked against the key it names, the hub id must
derive from that key, every partial must answer this exact query, merging the verified
partials again must give exactly the rows shown, and the merging hub's signature must cover
the rows, every hub asked with its status, and the partial flag (so no refusal or missing
hub can be dropped from the file unnoticed).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from federation import envelope, partials
from node.api.v1 import query_service_pb2

FORMAT = "smartregion-query-answer"


class AnswerError(ValueError):
    pass


def readable_rows(answer: query_service_pb2.QueryAnswer) -> list[dict]:
    return [{"group": r.group, "bucket": r.bucket_label, "bucket_start_ms": r.bucket_start_ms,
             "value": None if r.suppressed else r.value, "readings": r.readings,
             "contributors": r.contributors, "suppressed": r.suppressed} for r in answer.rows]


def to_json(answer: query_service_pb2.QueryAnswer) -> bytes:
    spec = envelope.parse(answer.query).query
    doc = {
        "format": FORMAT,
        "version": 1,
        "query": MessageToDict(spec, preserving_proto_field_name=True),
        "rows": readable_rows(answer),
        "partial": answer.partial,
        "missing_hubs": list(answer.missing_hubs),
        "provenance": [{"hub_id": p.hub_id, "municipality": p.municipality, "status": p.status, "reason": p.reason,
                        "agreement_id": p.agreement_id, "latency_ms": round(p.latency_ms, 1)} for p in answer.provenance],
        "answer": base64.b64encode(answer.SerializeToString()).decode(),
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


@dataclass
class VerifiedAnswer:
    answer: query_service_pb2.QueryAnswer
    verified_hubs: list[str]


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and isinstance(y, float):
            if not (x == y or (math.isnan(x) and math.isnan(y))):
                return False
        elif x != y:
            return False
    return True


def verify(data: bytes) -> VerifiedAnswer:
    try:
        doc = json.loads(data)
        answer = query_service_pb2.QueryAnswer.FromString(base64.b64decode(doc["answer"], validate=True))
    except (ValueError, KeyError, TypeError, DecodeError) as exc:
        raise AnswerError(f"not a query answer file: {exc}") from None
    if doc.get("format") != FORMAT or doc.get("version") != 1:
        raise AnswerError("not a smartregion query answer (version 1)")
    try:
        spec = envelope.parse(answer.query).query
    except envelope.EnvelopeError as exc:
        raise AnswerError(str(exc)) from None
    digest = partials.query_digest(answer.query.payload)
    hub_ids = [p.hub_id for p in answer.provenance]
    if len(hub_ids) != len(set(hub_ids)):
        raise AnswerError("a hub is listed twice: its partial would be counted twice")
    verified, results = [], []
    for p in answer.provenance:
        if p.status != "answered":
            continue
        try:
            result = partials.verify_partial(p.partial, digest, expected_hub_id=p.hub_id)
        except (partials.PartialError, DecodeError) as exc:
            raise AnswerError(f"hub {p.hub_id}: {exc}") from None
        verified.append(p.hub_id)
        results.append(result)
    try:
        partials.verify_answer_summary(answer, digest)
    except (partials.PartialError, DecodeError) as exc:
        raise AnswerError(f"hub {answer.answered_by}: {exc}") from None
    merged = partials.merge(results, spec)
    if [MessageToDict(r) for r in merged] != [MessageToDict(r) for r in answer.rows]:
        raise AnswerError("the rows are not what the signed partial results merge to")
    shown = doc.get("rows")
    if not isinstance(shown, list) or len(shown) != len(answer.rows) or not all(
            _same(a, b) for a, b in zip(shown, readable_rows(answer))):
        raise AnswerError("the readable rows differ from the signed answer")
    return VerifiedAnswer(answer, verified)
