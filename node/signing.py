"""Ed25519 signatures over exact bytes with a domain-separation prefix.

Every signed thing in smartregion is `Ed25519(key, DOMAIN || 0x00 || bytes)` where DOMAIN
names what the bytes are, so a signature over one kind of document can never be presented
as a signature over another.
"""

from __future__ import annotations

import hashlib
from enum import Enum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from node import ids

PARTNER_ID_DOMAIN = b"smartregion/v1/partner-id\x00"


class Domain(bytes, Enum):
    REQUEST = b"smartregion/v1/request\x00"
    AGREEMENT = b"smartregion/v1/agreement\x00"
    REVOCATION = b"smartregion/v1/revocation\x00"
    DESCRIPTOR = b"smartregion/v1/descriptor\x00"
    PARTIAL_RESULT = b"smartregion/v1/partial-result\x00"
    AUDIT_HEAD = b"smartregion/v1/audit-head\x00"
    QUERY_ANSWER = b"smartregion/v1/query-answer\x00"
    EXPORT = b"smartregion/v1/agreement-export\x00"
    KEY_ROTATION = b"smartregion/v1/key-rotation\x00"  # node/keychain.py (branch keys)


def sign(key: Ed25519PrivateKey, domain: Domain, message: bytes) -> bytes:
    return key.sign(domain.value + message)


def verify(public_key: bytes, domain: Domain, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, domain.value + message)
    except (InvalidSignature, ValueError):
        return False
    return True


def partner_id_from_public_key(raw_public_key: bytes) -> str:
    if len(raw_public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(PARTNER_ID_DOMAIN + raw_public_key).digest()[: ids.ID_BYTES].hex()


def hub_id_from_public_key(raw_public_key: bytes) -> str:
    return ids.to_text(ids.hub_id_from_public_key(raw_public_key))
