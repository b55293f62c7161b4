"""Signed requests (proto/smartregion/v1/envelope.proto): the caller's half of mutual
authentication. The callee's half is TLS pinned to its certificate."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError

from node.api.v1 import envelope_pb2
from node.clock import SYSTEM_CLOCK, Clock
from node.signing import Domain, sign, verify

MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
NONCE_BYTES = 16


class EnvelopeError(ValueError):
    pass


class SignatureMismatch(EnvelopeError):
    """The signature does not verify under the key given: the caller may have rotated its key
    since (federation/outbox.py `follow`), or it is not the caller."""


def make(key: Ed25519PrivateKey, caller_id: str, audience_hub_id: str, method: str, *, clock: Clock = SYSTEM_CLOCK,
         **body) -> envelope_pb2.SignedRequest:
    """Build, serialize once, and sign a request issued now by `clock`. `body` is one field
    of Request.body."""
    request = envelope_pb2.Request(
        caller_id=caller_id,
        audience_hub_id=audience_hub_id,
        method=method,
        issued_at_ms=clock.now_ms(),
        nonce=secrets.token_bytes(NONCE_BYTES),
        **body,
    )
    payload = request.SerializeToString()
    return envelope_pb2.SignedRequest(payload=payload, signature=sign(key, Domain.REQUEST, payload))


def parse(signed: envelope_pb2.SignedRequest) -> envelope_pb2.Request:
    try:
        return envelope_pb2.Request.FromString(signed.payload)
    except DecodeError:
        raise EnvelopeError("the request payload does not parse") from None


@dataclass(frozen=True)
class Checked:
    request: envelope_pb2.Request
    caller_id: str


def check(signed: envelope_pb2.SignedRequest, request: envelope_pb2.Request, caller_public_key: bytes,
          audience_hub_id: str, method: str, now_ms: int) -> Checked:
    """Everything but the nonce: signature, audience, method, freshness."""
    if not verify(caller_public_key, Domain.REQUEST, signed.payload, signed.signature):
        raise SignatureMismatch(f"the request's signature does not verify under the key pinned for {request.caller_id}")
    if request.audience_hub_id != audience_hub_id:
        raise EnvelopeError(f"the request is addressed to hub {request.audience_hub_id}, not to this hub")
    if request.method != method:
        raise EnvelopeError(f"the request was signed for {request.method}, not {method}")
    if abs(now_ms - request.issued_at_ms) > MAX_CLOCK_SKEW_MS:
        raise EnvelopeError("the request's time is more than 5 minutes from this hub's clock")
    if len(request.nonce) != NONCE_BYTES:
        raise EnvelopeError(f"the request's nonce must be {NONCE_BYTES} bytes")
    return Checked(request, request.caller_id)
