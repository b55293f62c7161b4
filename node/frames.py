"""Sealed frames: the wire format between a sensor and its hub (docs/protocol.md).

    frame  = header || ciphertext || tag
    header = version (1 byte, 0x01) || hub_id (16) || sensor_id (16) || counter (8, big-endian)
    nonce  = 0x00000000 || counter (8, big-endian)                 -- 12 bytes
    aad    = "smartregion/v1/frame" 0x00 || header
    AES-256-GCM(sensor_key, nonce, plaintext = SenML JSON, aad)   -- 16-byte tag

The counter strictly increases per sensor, so a nonce is never reused under one key. This
module is pure: no I/O, no policy beyond the layout. The hub decides which counters it accepts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 0x01
AAD_DOMAIN = b"smartregion/v1/frame\x00"
HEADER = struct.Struct(">B16s16sQ")
HEADER_SIZE = HEADER.size  # 41
TAG_SIZE = 16
KEY_SIZE = 32
MAX_COUNTER = 2**64 - 1
MAX_PLAINTEXT = 64 * 1024
MAX_FRAME = HEADER_SIZE + MAX_PLAINTEXT + TAG_SIZE


class FrameError(ValueError):
    """The bytes are not a well-formed frame of a version this code knows."""


@dataclass(frozen=True)
class FrameHeader:
    hub_id: bytes
    sensor_id: bytes
    counter: int

    def pack(self) -> bytes:
        return HEADER.pack(VERSION, self.hub_id, self.sensor_id, self.counter)


def nonce_for(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


def seal(key: bytes | AESGCM, header: FrameHeader, plaintext: bytes) -> bytes:
    if len(plaintext) > MAX_PLAINTEXT:
        raise FrameError(f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
    if not 0 < header.counter <= MAX_COUNTER:
        raise FrameError("the counter must be between 1 and 2**64-1")
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    packed = header.pack()
    return packed + aead.encrypt(nonce_for(header.counter), plaintext, AAD_DOMAIN + packed)


def parse_header(frame: bytes) -> FrameHeader:
    if len(frame) < HEADER_SIZE + TAG_SIZE:
        raise FrameError(f"a frame is at least {HEADER_SIZE + TAG_SIZE} bytes, got {len(frame)}")
    version, hub_id, sensor_id, counter = HEADER.unpack_from(frame)
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version:#04x} (this hub speaks {VERSION:#04x})")
    if counter == 0:
        raise FrameError("counter 0 is reserved; counters start at 1")
    return FrameHeader(hub_id, sensor_id, counter)


def open_frame(key: bytes | AESGCM, frame: bytes) -> tuple[FrameHeader, bytes]:
    """Authenticate and decrypt; raise InvalidTag if the frame was not sealed with this key."""
    header = parse_header(frame)
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    plaintext = aead.decrypt(nonce_for(header.counter), frame[HEADER_SIZE:], AAD_DOMAIN + frame[:HEADER_SIZE])
    return header, plaintext


__all__ = ["FrameError", "FrameHeader", "InvalidTag", "open_frame", "parse_header", "seal"]
