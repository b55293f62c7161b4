"""Admin operations on a running hub: status and the sensor lifecycle."""

from __future__ import annotations

import time
from dataclasses import dataclass

from node import ids
from node.errors import Reason, Rejected
from node.hub import Hub
from node.sensors import Enrolment, credential_json, new_sensor
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


async def add_sensor(hub: Hub, enrolment: Enrolment) -> tuple[SensorRecord, bytes]:
    """Enrol a sensor; return its record and its credential file (the only copy of its key)."""
    record, key = new_sensor(enrolment, hub.identity.key_encryption_key, hub.identity.hub_id)
    await hub.storage.write(lambda s: s.add_sensor(record))
    credential = credential_json(
        record,
        key,
        hub_id=hub.config.hub_id,
        municipality=hub.config.municipality,
        grpc_address=hub.endpoint.grpc_address,
        http_url=hub.endpoint.http_url,
        tls=hub.endpoint.tls,
        tls_cert_pem=hub.identity.tls_cert_pem.decode(),
    )
    return record, credential


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
