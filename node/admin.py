"""Admin operations on a running hub: status and the sensor lifecycle."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from node import audit, ids
from node.errors import Reason, Rejected
from node.hub import Hub
from node.networks.devices import add_kek, device_record
from node.sensors import DEFAULT_OLD_KEY_GRACE_S, MAX_OLD_KEY_GRACE_S, Enrolment, credential_json, new_sensor, unwrap_key, wrap_key
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


def _check_request_id(request_id: str) -> None:
    if request_id and (len(request_id) > MAX_REQUEST_ID or not request_id.isascii() or not request_id.isprintable()):
        raise Rejected(Reason.INVALID_REQUEST, f"a request id is 1 to {MAX_REQUEST_ID} printable ASCII characters")


def _sensor_id(text: str) -> str:
    try:
        return ids.to_text(ids.from_text(text.strip(), "sensor id"))
    except ValueError as exc:
        raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None


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
    _check_request_id(request_id)
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
        tls_cert_pem=hub.identity.tls_trust_root_pem.decode(),
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
    sensor_id = _sensor_id(sensor_id)
    now_ms = hub.clock.now_ms()
    record = await hub.storage.write(lambda s: s.revoke_sensor(sensor_id, now_ms))
    if record is None:
        raise Rejected(Reason.NOT_FOUND, f"no sensor {sensor_id} is enrolled at this hub")
    hub.ingest.forget(sensor_id)
    await audit.admin_action(hub.storage, now_ms, "sensor.revoke", sensor_id, record.dataset)
    return record


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _refuse_rekey(sensor_id: str, record: SensorRecord | None, devices: dict[str, LorawanDeviceRecord]) -> None:
    if record is None:
        raise Rejected(Reason.NOT_FOUND, f"no sensor {sensor_id} is enrolled at this hub")
    if not record.active:
        raise Rejected(Reason.REVOKED_SENSOR, f"sensor {sensor_id} was revoked at {_utc(record.revoked_at_ms or 0)}; "
                                              "a revoked sensor cannot be rekeyed (enrol a new one)")
    device = devices.get(sensor_id)
    if device is not None:
        raise Rejected(Reason.INVALID_REQUEST, (
            f"sensor {sensor_id} is LoRaWAN device {device.dev_eui}: its uplinks are protected by LoRaWAN session keys, "
            "not a smartregion key, so there is nothing to rekey here. Rotate its keys by making the device join again "
            "(its join server sends the new AppSKey in a key envelope), or with a fixed AppSKey revoke the sensor and enrol "
            "the DevEUI again (docs/integrations.md)"))


async def rekey_sensor(hub: Hub, sensor_id: str, request_id: str = "",
                       old_key_grace_s: int = DEFAULT_OLD_KEY_GRACE_S) -> tuple[SensorRecord, bytes]:
    """Give a sensor a new key under the same id; return its record and the new credential
    (the new key's only copy). Frames under the old key are accepted until the first frame
    under the new key or `old_key_grace_s` from now, whichever comes first; the counter goes
    on, so replay protection spans both keys.

    With a request id, a retry returns the credential the first call made instead of making
    another key (which would strand the sensor if the first answer was lost)."""
    sensor_id = _sensor_id(sensor_id)
    _check_request_id(request_id)
    if not 0 <= old_key_grace_s <= MAX_OLD_KEY_GRACE_S:
        raise Rejected(Reason.INVALID_REQUEST, f"the old key's grace is 0 to {MAX_OLD_KEY_GRACE_S} seconds (90 days)")
    kek, hub_id = hub.identity.key_encryption_key, hub.identity.hub_id
    current = await hub.storage.read(lambda s: s.get_sensor(sensor_id))
    if not (request_id and current is not None and current.key_request_id == request_id):  # a retry is answered below
        _refuse_rekey(sensor_id, current, await lorawan_devices(hub))
    key = secrets.token_bytes(32)
    now_ms = hub.clock.now_ms()
    until_ms = now_ms + old_key_grace_s * 1000
    wrapped = wrap_key(kek, hub_id, bytes.fromhex(sensor_id), key)
    record, changed = await hub.storage.write(lambda s: s.rekey_sensor(sensor_id, wrapped, request_id or None, now_ms, until_ms))
    if not changed:  # a retry with this request id (the store checks it in the same transaction), or a revocation
        if record is not None and request_id and record.key_request_id == request_id:
            return _rekey_retried(hub, sensor_id, request_id, record)
        _refuse_rekey(sensor_id, record, {})
        raise AssertionError("unreachable: an active sensor is rekeyed")
    assert record is not None
    hub.ingest.forget(sensor_id)
    grace = (f"old key accepted until {_utc(until_ms)} or the first frame under the new key" if old_key_grace_s
             else "old key refused at once")
    await audit.admin_action(hub.storage, now_ms, "sensor.rekey", sensor_id, f"{record.dataset}: {grace}")
    return record, _credential(hub, record, key)


def _rekey_retried(hub: Hub, sensor_id: str, request_id: str, earlier: SensorRecord) -> tuple[SensorRecord, bytes]:
    """The credential an earlier rekey with this request id made, if its key is still the sensor's."""
    if earlier.sensor_id != sensor_id:
        raise Rejected(Reason.ALREADY_EXISTS, f"request id {request_id!r} was used to rekey another sensor ({earlier.sensor_id})")
    if not earlier.active:
        _refuse_rekey(sensor_id, earlier, {})
    key = unwrap_key(hub.identity.key_encryption_key, hub.identity.hub_id, bytes.fromhex(sensor_id), earlier.wrapped_key)
    return earlier, _credential(hub, earlier, key)


async def reissue_credential(hub: Hub, sensor_id: str) -> tuple[SensorRecord, bytes]:
    """The sensor's credential file again, with its current key (no rekey) and the hub's
    current trust root: for a sensor enrolled before the hub had a TLS issuer, whose file pins
    a certificate that a renewal replaced. The key leaves the hub again, so it is audited."""
    sensor_id = _sensor_id(sensor_id)
    record = await hub.storage.read(lambda s: s.get_sensor(sensor_id))
    if record is None:
        raise Rejected(Reason.NOT_FOUND, f"no sensor {sensor_id} is enrolled at this hub")
    if not record.active:
        raise Rejected(Reason.REVOKED_SENSOR, f"sensor {sensor_id} was revoked at {_utc(record.revoked_at_ms or 0)}; "
                                              "its credential is not issued again (enrol a new sensor)")
    device = (await lorawan_devices(hub)).get(sensor_id)
    if device is not None:
        raise Rejected(Reason.INVALID_REQUEST, (
            f"sensor {sensor_id} is LoRaWAN device {device.dev_eui}: it reaches the hub through its network server, "
            "not with a credential file, so there is no credential to issue again"))
    if hub.identity.tls_issuer is None:  # the file would pin today's certificate and break at the next renewal
        raise Rejected(Reason.INVALID_REQUEST, (
            "this hub has no TLS issuer yet, so a credential issued now would pin the certificate it serves today and "
            "stop working at its next renewal: run `smartregion cert renew` first (it creates the issuer), then "
            "issue the credential again"))
    key = unwrap_key(hub.identity.key_encryption_key, hub.identity.hub_id, bytes.fromhex(sensor_id), record.wrapped_key)
    await audit.admin_action(hub.storage, hub.clock.now_ms(), "sensor.credential", sensor_id,
                             f"{record.dataset}: credential issued again, same key, trusting the TLS issuer")
    return record, _credential(hub, record, key)
