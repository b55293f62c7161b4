"""Agreement export files, verifiable offline by anyone (`smartregion agreement verify`).

The file is canonical JSON (sorted keys, two-space indent, trailing newline). It carries the
agreement document (exact signed bytes, base64) and, for people, the decoded terms. Verifying
checks the signatures against the keys named in the terms (from which the party ids derive),
that the readable terms are exactly the signed ones, that the file is in canonical form, and
the exporting party's signature over the rest of the file (which covers who exported it, when,
and the state it reported), so changing any byte makes verification fail.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from federation import agreements as ag
from node.api.v1 import agreement_pb2
from node.signing import Domain, sign

FORMAT = "smartregion-agreement"


class ExportError(ValueError):
    pass


def terms_dict(terms: agreement_pb2.AgreementTerms) -> dict:
    return MessageToDict(terms, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def canonical(doc: dict) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def export(evidence: ag.Evidence, state: int, exported_by: str, exported_at_ms: int, key: Ed25519PrivateKey,
           key_history: tuple[bytes, ...] = ()) -> bytes:
    """`key`: the exporting party's, so the export metadata cannot be altered unnoticed.
    `key_history`: the exporter's when it rotated its identity key since the genesis key the
    terms name (hex statements under "exporter_key_history"; absent otherwise)."""
    doc = {
        "format": FORMAT,
        "version": 1,
        "agreement_id": evidence.agreement_id,
        "document": base64.b64encode(evidence.to_document().SerializeToString()).decode(),
        "terms": terms_dict(evidence.terms),
        "signatures": sorted(evidence.signatures),
        "revoked_by": sorted(evidence.revocations),
        "state_at_export": ag.STATE_NAMES[state],
        "exported_by": exported_by,
        "exported_at_ms": exported_at_ms,
    }
    if key_history:
        doc["exporter_key_history"] = [s.hex() for s in key_history]
    doc["exporter_signature"] = base64.b64encode(sign(key, Domain.EXPORT, canonical(doc))).decode()
    return canonical(doc)


@dataclass
class Verified:
    evidence: ag.Evidence
    state_now: int


def verify(data: bytes, now_ms: int) -> Verified:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != 1:
        raise ExportError("not a smartregion agreement export (version 1)")
    if canonical(doc) != data:
        raise ExportError("the file is not byte-for-byte as exported (altered, or re-formatted)")
    try:
        document = agreement_pb2.AgreementDocument.FromString(base64.b64decode(doc["document"], validate=True))
    except (KeyError, ValueError, DecodeError) as exc:
        raise ExportError(f"the signed document is damaged: {exc}") from None
    try:
        evidence = ag.from_document(document)
    except ag.AgreementError as exc:
        raise ExportError(str(exc)) from None
    if doc.get("terms") != terms_dict(evidence.terms) or doc.get("agreement_id") != evidence.agreement_id:
        raise ExportError("the readable terms differ from the signed terms")
    if doc.get("signatures") != sorted(evidence.signatures) or doc.get("revoked_by") != sorted(evidence.revocations):
        raise ExportError("the listed signatures or revocations differ from the signed document")
    exported_by = doc.get("exported_by")
    exporter = evidence.parties().get(exported_by) if isinstance(exported_by, str) else None
    if exporter is None:
        raise ExportError("the file was not exported by a party to the agreement")
    unsigned = {k: v for k, v in doc.items() if k != "exporter_signature"}
    try:
        signature = base64.b64decode(doc.get("exporter_signature", ""), validate=True)
    except (TypeError, ValueError):
        signature = b""
    try:
        history = [bytes.fromhex(s) for s in doc.get("exporter_key_history", [])]
    except (TypeError, ValueError, AttributeError):
        raise ExportError("the exporter's key history is damaged") from None
    if not ag.party_signed(exporter, Domain.EXPORT, canonical(unsigned), signature, history):
        raise ExportError("the exporter's signature does not verify (the export details were altered)")
    return Verified(evidence, ag.state(evidence, now_ms))
