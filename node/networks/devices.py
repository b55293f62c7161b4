"""LoRaWAN devices enrolled at a hub (DevEUI -> sensor) and the join servers' KEKs it holds.

A device's AppSKey, when the hub holds it, and every join-server KEK are stored wrapped under
the hub's key-encryption key (AES-256-GCM, as sensor keys are: node/sensors.py), with
associated data that binds the domain, the hub id and the DevEUI or KEK label, so a wrapped key
copied onto another row does not unwrap.

Confidentiality, shown wherever a sensor is listed:
* `end-to-end`: the network server forwards the still-encrypted FRMPayload; the hub decrypts
  it with the AppSKey it holds for the device, or with the AppSKey in the uplink's key envelope
  under a join-server KEK the hub holds. The network cannot read the readings.
* `network-decrypted`: the network server decrypts (the common default) and forwards the
  plaintext; the hub accepts it, and everyone can see that the network could read it.
"""

from __future__ import annotations

import re
import secrets
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.errors import Reason, Rejected
from node.networks import lorawan
from node.storage import Storage
from node.storage.base import LorawanDeviceRecord, SensorRecord

APP_S_KEY_DOMAIN = b"smartregion/v1/lorawan-appskey\x00"
KEK_DOMAIN = b"smartregion/v1/lorawan-kek\x00"
KEK_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
KEK_SIZES = (16, 24, 32)


class Confidentiality(StrEnum):
    END_TO_END = "end-to-end"
    NETWORK_DECRYPTED = "network-decrypted"


def _wrap(kek: bytes, aad: bytes, key: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(kek).encrypt(nonce, key, aad)


def _unwrap(kek: bytes, aad: bytes, wrapped: bytes, what: str) -> bytes:
    try:
        return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], aad)
    except InvalidTag:
        raise ValueError(f"the stored {what} does not unwrap under this hub's key") from None


def wrap_app_s_key(hub_kek: bytes, hub_id: bytes, dev_eui: str, app_s_key: bytes) -> bytes:
    return _wrap(hub_kek, APP_S_KEY_DOMAIN + hub_id + bytes.fromhex(dev_eui), app_s_key)


def unwrap_app_s_key(hub_kek: bytes, hub_id: bytes, dev_eui: str, wrapped: bytes) -> bytes:
    return _unwrap(hub_kek, APP_S_KEY_DOMAIN + hub_id + bytes.fromhex(dev_eui), wrapped, f"AppSKey of {dev_eui}")


def wrap_kek(hub_kek: bytes, hub_id: bytes, label: str, kek: bytes) -> bytes:
    return _wrap(hub_kek, KEK_DOMAIN + hub_id + label.encode(), kek)


def unwrap_kek(hub_kek: bytes, hub_id: bytes, label: str, wrapped: bytes) -> bytes:
    return _unwrap(hub_kek, KEK_DOMAIN + hub_id + label.encode(), wrapped, f"KEK {label!r}")


def device_record(
    sensor: SensorRecord, dev_eui_text: str, confidentiality_text: str, app_s_key_hex: str, codec: str,
    known_codecs: set[str], hub_kek: bytes, hub_id: bytes,
) -> LorawanDeviceRecord:
    """Validate a LoRaWAN enrolment; raise Rejected(INVALID_REQUEST) naming the problem."""
    try:
        dev_eui = lorawan.normalise_eui(dev_eui_text)
        confidentiality = Confidentiality(confidentiality_text or Confidentiality.END_TO_END)
        app_s_key = lorawan.parse_key(app_s_key_hex) if app_s_key_hex else None
    except (lorawan.LorawanError, ValueError) as exc:
        message = str(exc) if isinstance(exc, lorawan.LorawanError) else "confidentiality is end-to-end or network-decrypted"
        raise Rejected(Reason.INVALID_REQUEST, message) from None
    if confidentiality is Confidentiality.NETWORK_DECRYPTED and app_s_key is not None:
        raise Rejected(Reason.INVALID_REQUEST, "a network-decrypted device needs no AppSKey at the hub (or choose end-to-end)")
    if codec not in known_codecs:
        raise Rejected(Reason.INVALID_REQUEST, f"no codec {codec!r} in networks.toml; known: {', '.join(sorted(known_codecs))}")
    wrapped = wrap_app_s_key(hub_kek, hub_id, dev_eui, app_s_key) if app_s_key else None
    return LorawanDeviceRecord(dev_eui, sensor.sensor_id, confidentiality.value, wrapped, codec)


async def add_kek(storage: Storage, hub_kek: bytes, hub_id: bytes, label: str, kek: bytes, now_ms: int) -> None:
    if not KEK_LABEL.match(label):
        raise Rejected(Reason.INVALID_REQUEST, f"a KEK label is 1..128 of letters, digits and . _ : -; got {label!r}")
    if len(kek) not in KEK_SIZES:
        raise Rejected(Reason.INVALID_REQUEST, f"a KEK is an AES key of 16, 24 or 32 bytes; got {len(kek)}")
    wrapped = wrap_kek(hub_kek, hub_id, label, kek)
    if not await storage.write(lambda s: s.add_lorawan_kek(label, wrapped, now_ms)):
        raise Rejected(Reason.ALREADY_EXISTS, f"a KEK labelled {label!r} is held already; a label names one key for good")
