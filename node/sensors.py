"""Enrolling collection points: each gets its own 256-bit key, kept wrapped at the hub.

The hub stores `nonce || AES-256-GCM(KEK, sensor_key, aad)` with the associated data binding
the hub id and sensor id, so a wrapped key copied onto another sensor's row does not unwrap.
The plaintext key leaves the hub exactly once, inside the credential file.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node import catalog, ids
from node.errors import Reason, Rejected
from node.storage.base import SensorRecord

KEY_WRAP_DOMAIN = b"smartregion/v1/sensor-key\x00"
CREDENTIAL_FORMAT = "smartregion-sensor-credential"
# After a rekey, frames under the old key are accepted until the first frame under the new key,
# or for this long (docs/operations.md, "Rekeying a sensor"); 0 refuses them at once.
DEFAULT_OLD_KEY_GRACE_S = 7 * 24 * 3600
MAX_OLD_KEY_GRACE_S = 90 * 24 * 3600


def _wrap_aad(hub_id: bytes, sensor_id: bytes) -> bytes:
    return KEY_WRAP_DOMAIN + hub_id + sensor_id


def wrap_key(kek: bytes, hub_id: bytes, sensor_id: bytes, key: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(kek).encrypt(nonce, key, _wrap_aad(hub_id, sensor_id))


def unwrap_key(kek: bytes, hub_id: bytes, sensor_id: bytes, wrapped: bytes) -> bytes:
    try:
        return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], _wrap_aad(hub_id, sensor_id))
    except InvalidTag:
        raise ValueError(f"the stored key of sensor {ids.to_text(sensor_id)} does not unwrap under this hub's key") from None


@dataclass(frozen=True)
class Enrolment:
    dataset: str
    metrics: list[str]
    latitude: float
    longitude: float
    subject_id: str = ""
    label: str = ""

    def validated(self, datasets: catalog.Catalog = catalog.DEFAULT) -> Enrolment:
        try:
            metrics = datasets.check_metrics(self.dataset, [m.strip() for m in self.metrics if m.strip()])
        except catalog.CatalogError as exc:
            raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
        if not (-90 <= self.latitude <= 90 and -180 <= self.longitude <= 180):
            raise Rejected(Reason.INVALID_REQUEST, f"location {self.latitude},{self.longitude} is not a latitude,longitude")
        personal = datasets.dataset(self.dataset).classification is catalog.Classification.PERSONAL
        if personal and not self.subject_id:
            raise Rejected(Reason.INVALID_REQUEST, f"dataset {self.dataset!r} is personal: give the sensor's data subject (--subject)")
        if len(self.subject_id) > 200 or len(self.label) > 200:
            raise Rejected(Reason.INVALID_REQUEST, "subject and label are at most 200 characters")
        return Enrolment(self.dataset, metrics, self.latitude, self.longitude, self.subject_id, self.label)


def new_sensor(
    enrolment: Enrolment, kek: bytes, hub_id: bytes, now_ms: int, datasets: catalog.Catalog = catalog.DEFAULT
) -> tuple[SensorRecord, bytes]:
    """A new sensor record (key wrapped) and its plaintext key, for the credential only."""
    enrolment = enrolment.validated(datasets)
    sensor_id = ids.new_sensor_id()
    key = secrets.token_bytes(32)
    record = SensorRecord(
        sensor_id=ids.to_text(sensor_id),
        dataset=enrolment.dataset,
        metrics=enrolment.metrics,
        latitude=enrolment.latitude,
        longitude=enrolment.longitude,
        wrapped_key=wrap_key(kek, hub_id, sensor_id, key),
        enrolled_at_ms=now_ms,
        subject_id=enrolment.subject_id,
        label=enrolment.label,
    )
    return record, key


def credential_json(
    record: SensorRecord, key: bytes, *, hub_id: str, municipality: str, grpc_address: str, http_url: str, tls: bool, tls_cert_pem: str,
    datasets: catalog.Catalog = catalog.DEFAULT,
) -> bytes:
    """The sensor's credential file (docs/protocol.md, "Credential file"). `tls_cert_pem` goes
    into `hub_tls_certificate`: the certificate the sensor trusts as its only root, which is the
    hub's TLS issuer (HubIdentity.tls_trust_root_pem), so the file survives certificate renewals
    and identity rotations. The issuer is self-signed, so every TLS stack (and readers of files
    from before the issuer) takes it as a root, unlike a leaf signed by another certificate."""
    units = {m: datasets.dataset(record.dataset).metrics[m].unit for m in record.metrics}
    document = {
        "format": CREDENTIAL_FORMAT,
        "version": 1,
        "sensor_id": record.sensor_id,
        "hub_id": hub_id,
        "municipality": municipality,
        "dataset": record.dataset,
        "metrics": record.metrics,
        "units": units,
        "label": record.label,
        "hub_grpc_address": grpc_address,
        "hub_http_url": http_url,
        "tls": tls,
        "hub_tls_certificate": tls_cert_pem,
        "key": base64.b64encode(key).decode(),
    }
    return json.dumps(document, indent=2).encode()
