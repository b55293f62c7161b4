"""Admin operations on a running hub: status and the sensor lifecycle."""

from __future__ import annotations

import time
from dataclasses import dataclass

from node import ids
from node.errors import Reason, Rejected
from node.hub import Hub
from node.sensors import Enrolment, credential_json, new_sensor, unwrap_key
from node.storage.base import MetricSummary, SensorRecord


@dataclass
class Status:
    hub: Hub
    sensors_active: int
    sensors_revoked: int
    counts: list[MetricSummary]
    rejections: dict[str, int]


async def status(hub: Hub) -> Status:
    sensors = await hub.storage.read(lambda s: s.list_sensors())
    counts = await hub.storage.read(lambda s: s.metric_summaries())
    rejections = await hub.ingest.rejection_counts()
    active = sum(1 for s in sensors if s.active)
    return Status(hub, active, len(sensors) - active, counts, rejections)


MAX_REQUEST_ID = 128


def _same_enrolment(record: SensorRecord, enrolment: Enrolment) -> bool:
    wanted = enrolment.validated()
    return (record.dataset, record.metrics, record.latitude, record.longitude, record.subject_id, record.label) == (
        wanted.dataset, wanted.metrics, wanted.latitude, wanted.longitude, wanted.subject_id, wanted.label)


def _credential(hub: Hub, record: SensorRecord, key: bytes) -> bytes:
    return credential_json(
        record,
        key,
        hub_id=hub.config.hub_id,
        municipality=hub.config.municipality,
        grpc_address=hub.endpoint.grpc_address,
        http_url=hub.endpoint.http_url,
        tls=hub.endpoint.tls,
        tls_cert_pem=hub.identity.tls_cert_pem.decode(),
    )


async def _earlier_enrolment(hub: Hub, request_id: str, enrolment: Enrolment) -> tuple[SensorRecord, bytes] | None:
    """The sensor and credential of an earlier AddSensor with this request id (a retry)."""
    record = await hub.storage.read(lambda s: s.get_sensor_by_request(request_id))
    if record is None:
        return None
    if not _same_enrolment(record, enrolment):
        raise Rejected(Reason.ALREADY_EXISTS, f"request id {request_id!r} was used for another enrolment (sensor {record.sensor_id})")
    key = unwrap_key(hub.identity.key_encryption_key, hub.identity.hub_id, bytes.fromhex(record.sensor_id), record.wrapped_key)
    return record, _credential(hub, record, key)


async def add_sensor(hub: Hub, enrolment: Enrolment, request_id: str = "") -> tuple[SensorRecord, bytes]:
    """Enrol a sensor; return its record and its credential file (the only copy of its key).

    With a request id, a retry (the answer was lost: a timeout, a killed hub) returns the
    sensor the first call enrolled, with the same credential, instead of enrolling another."""
    if request_id and (len(request_id) > MAX_REQUEST_ID or not request_id.isascii() or not request_id.isprintable()):
        raise Rejected(Reason.INVALID_REQUEST, f"a request id is 1 to {MAX_REQUEST_ID} printable ASCII characters")
    if request_id:
        earlier = await _earlier_enrolment(hub, request_id, enrolment)
        if earlier is not None:
            return earlier
    record, key = new_sensor(enrolment, hub.identity.key_encryption_key, hub.identity.hub_id)
    record.request_id = request_id or None
    if not await hub.storage.write(lambda s: s.add_sensor(record)):  # a concurrent call with this id won
        earlier = await _earlier_enrolment(hub, request_id, enrolment)
        assert earlier is not None
        return earlier
    return record, _credential(hub, record, key)


async def list_sensors(hub: Hub, include_revoked: bool) -> list[SensorRecord]:
    return await hub.ingest.list_sensors(include_revoked)


async def revoke_sensor(hub: Hub, sensor_id: str) -> SensorRecord:
    try:
        sensor_id = ids.to_text(ids.from_text(sensor_id, "sensor id"))
    except ValueError as exc:
        raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
    now_ms = int(time.time() * 1000)
    record = await hub.storage.write(lambda s: s.revoke_sensor(sensor_id, now_ms))
    if record is None:
        raise Rejected(Reason.NOT_FOUND, f"no sensor {sensor_id} is enrolled at this hub")
    hub.ingest.forget(sensor_id)
    return record
