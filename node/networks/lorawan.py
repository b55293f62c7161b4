"""LoRaWAN 1.0.x application-layer cryptography, as the application (the hub) needs it.

FRMPayload encryption (LoRaWAN 1.0.x §4.3.3): for i = 1..k,
    A_i = 0x01 || 0x00*4 || Dir || DevAddr (4, little-endian) || FCnt (4, little-endian) || 0x00 || i
    S   = AES-128-ECB(AppSKey, A_1) || ... || AES-128-ECB(AppSKey, A_k)
    FRMPayload = plaintext XOR S (truncated to the payload's length)
Encryption and decryption are the same operation. Dir is 0 for uplinks.

Key envelope (LoRaWAN Backend Interfaces §6.3, as ChirpStack's `join_server_context.app_s_key`
and The Things Stack's `app_s_key` carry it): the AppSKey wrapped with RFC 3394 AES key wrap
under a key-encryption key named by `kek_label`.
"""

from __future__ import annotations

import re
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

APP_S_KEY_SIZE = 16
UPLINK = 0
DOWNLINK = 1
MAX_FRM_PAYLOAD = 242  # the largest application payload of any LoRaWAN data rate (EU868 DR7: 242)
DEV_EUI = re.compile(r"^[0-9a-f]{16}$")
DEV_ADDR = re.compile(r"^[0-9a-f]{8}$")


class LorawanError(ValueError):
    pass


def normalise_eui(text: str) -> str:
    """A DevEUI as 16 lowercase hex digits ("70B3D57ED005A1B2", "70-b3-...", "70:b3:..." accepted)."""
    cleaned = text.strip().lower().replace("-", "").replace(":", "")
    if not DEV_EUI.match(cleaned):
        raise LorawanError(f"a DevEUI is 8 bytes, 16 hex digits; got {text!r}")
    return cleaned


def parse_dev_addr(text: str) -> bytes:
    """A DevAddr as ChirpStack and TTS print it (big-endian hex, "01a2b3c4") -> its 4 bytes."""
    cleaned = text.strip().lower()
    if not DEV_ADDR.match(cleaned):
        raise LorawanError(f"a DevAddr is 4 bytes, 8 hex digits; got {text!r}")
    return bytes.fromhex(cleaned)


def parse_key(text: str, name: str = "AppSKey") -> bytes:
    cleaned = text.strip().lower()
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        raise LorawanError(f"the {name} is 16 bytes as 32 hex digits") from None
    if len(key) != APP_S_KEY_SIZE:
        raise LorawanError(f"the {name} is 16 bytes as 32 hex digits; got {len(key)} bytes")
    return key


def frm_payload_cipher(app_s_key: bytes, dev_addr: bytes, fcnt: int, payload: bytes, direction: int = UPLINK) -> bytes:
    """Encrypt or decrypt an FRMPayload (the same operation). `dev_addr` big-endian, as printed."""
    if len(app_s_key) != APP_S_KEY_SIZE:
        raise LorawanError("an AppSKey is 16 bytes")
    if len(dev_addr) != 4:
        raise LorawanError("a DevAddr is 4 bytes")
    if not 0 <= fcnt < 2**32:
        raise LorawanError(f"FCnt {fcnt} is not a 32-bit counter")
    if len(payload) > MAX_FRM_PAYLOAD:
        raise LorawanError(f"an FRMPayload is at most {MAX_FRM_PAYLOAD} bytes; got {len(payload)}")
    blocks = (len(payload) + 15) // 16
    a_blocks = b"".join(
        struct.pack("<B4xB4sIBB", 0x01, direction, dev_addr[::-1], fcnt, 0x00, i) for i in range(1, blocks + 1)
    )
    encryptor = Cipher(algorithms.AES(app_s_key), modes.ECB()).encryptor()
    stream = encryptor.update(a_blocks) + encryptor.finalize()
    return bytes(p ^ s for p, s in zip(payload, stream, strict=False))


def unwrap_app_s_key(kek: bytes, wrapped: bytes) -> bytes:
    """RFC 3394 unwrap of a key envelope's `aes_key`; raise LorawanError if it does not unwrap."""
    if len(wrapped) != APP_S_KEY_SIZE + 8:
        raise LorawanError(f"a wrapped AppSKey is {APP_S_KEY_SIZE + 8} bytes; got {len(wrapped)}")
    try:
        return aes_key_unwrap(kek, wrapped)
    except (InvalidUnwrap, ValueError):
        raise LorawanError("the key envelope does not unwrap under this KEK (wrong KEK or altered envelope)") from None
