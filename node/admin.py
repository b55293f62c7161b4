"""Admin operations on a running hub: status and the sensor lifecycle."""

from __future__ import annotations

from dataclasses import dataclass

from node import audit, ids
from node.errors import Reason, Rejected
from node.hub import Hub
from node.networks.devices import add_kek, device_record
from node.sensors import Enrolment, credential_json, new_sensor, unwrap_key
from node.storage.base import LorawanDeviceRecord, MetricSummary, SensorRecord


@dataclass
class Status:
    hub: Hub
    sensors_active: int
    sensors_revoked: int
    counts: list[MetricSummary]
    rejections: dict[str, int]
    sensors_network_decrypted: int = 0


async def status(hub: Hub) -> Status:
    sensors = await hub.storage.read(lambda s: s.list_sensors())
    counts = await hub.storage.read(lambda s: s.metric_summaries())
    rejections = await hub.ingest.rejection_counts()
    active = sum(1 for s in sensors if s.active)
    devices = await lorawan_devices(hub)
    network_decrypted = sum(1 for s in sensors if s.active and s.sensor_id in devices
                            and devices[s.sensor_id].confidentiality == "network-decrypted")
    return Status(hub, active, len(sensors) - active, counts, rejections, network_decrypted)


@dataclass(frozen=True)
class LorawanEnrolment:
    dev_eui: str
    app_s_key_hex: str = ""  # empty: from each uplink's key envelope, or network-decrypted
    confidentiality: str = "end-to-end"
    codec: str = "json"


MAX_REQUEST_ID = 128


def _same_enrolment(hub: Hub, record: SensorRecord, enrolment: Enrolment) -> bool:
    wanted = enrolment.validated(hub.catalog)
    return (record.dataset, record.metrics, record.latitude, record.longitude, record.subject_id, record.label) == (
        wanted.dataset, wanted.metrics, wanted.latitude, wanted.longitude, wanted.subject_id, wanted.label)


async def _earlier_enrolment(hub: Hub, request_id: str, enrolment: Enrolment) -> tuple[SensorRecord, bytes] | None:
    """The sensor and credential of an earlier AddSensor with this request id (a retry)."""
    record = await hub.storage.read(lambda s: s.get_sensor_by_request(request_id))
    if record is None:
        return None
    if not _same_enrolment(hub, record, enrolment):
        raise Rejected(Reason.ALREADY_EXISTS, f"request id {request_id!r} was used for another enrolment (sensor {record.sensor_id})")
    key = unwrap_key(hub.identity.key_encryption_key, hub.identity.hub_id, bytes.fromhex(record.sensor_id), record.wrapped_key)
    return record, _credential(hub, record, key)


async def add_sensor(hub: Hub, enrolment: Enrolment, lorawan: LorawanEnrolment | None = None,
                     request_id: str = "") -> tuple[SensorRecord, bytes]:
    """Enrol a sensor; return its record and its credential file (the only copy of its key).
    With `lorawan`, the sensor is reached through a LoRaWAN network server by its DevEUI.

    With a request id, a retry (the answer was lost: a timeout, a killed hub) returns the
    sensor the first call enrolled, with the same credential, instead of enrolling another."""
    if request_id and (len(request_id) > MAX_REQUEST_ID or not request_id.isascii() or not request_id.isprintable()):
        raise Rejected(Reason.INVALID_REQUEST, f"a request id is 1 to {MAX_REQUEST_ID} printable ASCII characters")
    if request_id:
        earlier = await _earlier_enrolment(hub, request_id, enrolment)
        if earlier is not None:
            return earlier
    record, key = new_sensor(enrolment, hub.identity.key_encryption_key, hub.identity.hub_id, hub.clock.now_ms(), hub.catalog)
    record.request_id = request_id or None
    if lorawan is None:
        if not await hub.storage.write(lambda s: s.add_sensor(record)):  # a concurrent call with this id won
            earlier = await _earlier_enrolment(hub, request_id, enrolment)
            assert earlier is not None
            return earlier
    else:
        device = device_record(
            record, lorawan.dev_eui, lorawan.confidentiality, lorawan.app_s_key_hex, lorawan.codec or "json",
            set(hub.networks.codecs), hub.identity.key_encryption_key, hub.identity.hub_id,
        )
        if not await hub.storage.write(lambda s: s.add_lorawan_sensor(record, device)):
            raise Rejected(Reason.ALREADY_EXISTS, f"a sensor is enrolled for DevEUI {device.dev_eui} already")
    personal = " (has a data subject)" if record.subject_id else ""
    via = f" via LoRaWAN {lorawan.dev_eui} ({lorawan.confidentiality})" if lorawan else ""
    await audit.admin_action(hub.storage, hub.clock.now_ms(), "sensor.add", record.sensor_id,
                             f"{record.dataset}: {','.join(record.metrics)}{personal}{via}")
    return record, _credential(hub, record, key)


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
        datasets=hub.catalog,
    )


async def list_sensors(hub: Hub, include_revoked: bool) -> list[SensorRecord]:
    return await hub.ingest.list_sensors(include_revoked)


async def lorawan_devices(hub: Hub) -> dict[str, LorawanDeviceRecord]:
    """The LoRaWAN devices by sensor id (a sensor not in it sends sealed frames: end-to-end)."""
    devices = await hub.storage.read(lambda s: s.list_lorawan_devices())
    return {d.sensor_id: d for d in devices}


async def add_lorawan_kek(hub: Hub, label: str, kek: bytes) -> None:
    await add_kek(hub.storage, hub.identity.key_encryption_key, hub.identity.hub_id, label, kek, hub.clock.now_ms())


async def revoke_sensor(hub: Hub, sensor_id: str) -> SensorRecord:
    try:
        sensor_id = ids.to_text(ids.from_text(sensor_id, "sensor id"))
    except ValueError as exc:
        raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
    now_ms = hub.clock.now_ms()
    record = await hub.storage.write(lambda s: s.revoke_sensor(sensor_id, now_ms))
    if record is None:
        raise Rejected(Reason.NOT_FOUND, f"no sensor {sensor_id} is enrolled at this hub")
    hub.ingest.forget(sensor_id)
    await audit.admin_action(hub.storage, now_ms, "sensor.revoke", sensor_id, record.dataset)
    return record
