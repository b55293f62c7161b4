"""Identifiers. Every id is 16 bytes on the wire and 32 lowercase hex digits in text.

A hub id is derived from the hub's Ed25519 identity public key, so a hub id pins a key:
whoever shows the key that hashes to the id is that hub.
"""

from __future__ import annotations

import hashlib
import secrets

ID_BYTES = 16
HUB_ID_DOMAIN = b"smartregion/v1/hub-id\x00"


def hub_id_from_public_key(raw_public_key: bytes) -> bytes:
    if len(raw_public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(HUB_ID_DOMAIN + raw_public_key).digest()[:ID_BYTES]


def new_sensor_id() -> bytes:
    return secrets.token_bytes(ID_BYTES)


def to_text(raw_id: bytes) -> str:
    return raw_id.hex()


def from_text(text: str, what: str = "id") -> bytes:
    """Parse a 32-hex-digit id; raise ValueError naming `what` otherwise."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != ID_BYTES:
        raise ValueError(f"{what} must be {2 * ID_BYTES} hexadecimal digits, got {text!r}")
    return raw
