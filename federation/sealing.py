"""Sealed partials: a provider encrypts its signed partial to the asker's one-query key.

HPKE (RFC 9180) base mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM, from
`cryptography`. The sealed bytes are `enc (32) || ciphertext || tag (16)`, the AEAD's
associated data is empty, and the HPKE `info` binds the ciphertext to the query and the
provider, so a relaying hub can neither read a partial nor move it to another query:

    info = "smartregion/v1/sealed-partial" || 0x00 || query_digest (32) || provider hub id (ASCII)

The asker makes a fresh X25519 key pair for every query and signs its public key into the
query (QuerySpec.answer_key), so no relaying hub can substitute its own.

The plaintext is padded before sealing, so its length tells a relaying hub nothing but what it
knows already (federation/partials.py `padded_size`): ISO/IEC 7816-4 padding,

    padded = signed_partial || 0x80 || 0x00 * (size - len(signed_partial) - 1)

which the asker strips after opening: drop the trailing 0x00 bytes, then one 0x80 byte (any
other byte there is an error). It is unambiguous whatever the signed partial's last bytes are.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

INFO_PREFIX = b"smartregion/v1/sealed-partial\x00"
KEY_BYTES = 32
PAD_MARKER = b"\x80"
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)


class SealError(ValueError):
    pass


def info(query_digest: bytes, provider_hub_id: str) -> bytes:
    return INFO_PREFIX + query_digest + provider_hub_id.encode("ascii")


def new_answer_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def pad(plaintext: bytes, size: int) -> bytes:
    if len(plaintext) + 1 > size:
        raise SealError(f"a partial of {len(plaintext)} bytes does not fit its padded size of {size} bytes")
    return plaintext + PAD_MARKER + bytes(size - len(plaintext) - 1)


def unpad(padded: bytes) -> bytes:
    body = padded.rstrip(b"\x00")
    if not body.endswith(PAD_MARKER):
        raise SealError("the opened partial is not padded as docs/querying.md 7.5 specifies (no 0x80 marker)")
    return body[:-1]


def seal(plaintext: bytes, answer_key: bytes, query_digest: bytes, provider_hub_id: str, padded_size: int) -> bytes:
    """`plaintext` padded to `padded_size` bytes, then sealed to `answer_key`."""
    padded = pad(plaintext, padded_size)
    if len(answer_key) != KEY_BYTES:
        raise SealError(f"the query's answer key must be a {KEY_BYTES}-byte X25519 public key")
    try:
        public = X25519PublicKey.from_public_bytes(answer_key)
        return SUITE.encrypt(padded, public, info=info(query_digest, provider_hub_id))
    except ValueError as exc:  # a low-order point gives an all-zero shared secret
        raise SealError(f"the query's answer key is not a usable X25519 key: {exc}") from None


def open_sealed(sealed: bytes, key: X25519PrivateKey, query_digest: bytes, provider_hub_id: str) -> bytes:
    """The signed partial: opened, padding stripped."""
    try:
        padded = SUITE.decrypt(sealed, key, info=info(query_digest, provider_hub_id))
    except Exception as exc:  # InvalidTag, or a malformed encapsulated key
        raise SealError(f"the sealed partial of hub {provider_hub_id} does not open with this query's key "
                        f"(altered, or sealed for another query): {type(exc).__name__}") from None
    return unpad(padded)
