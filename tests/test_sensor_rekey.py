"""Sensor rekey against a real in-process hub (grpc.aio + TLS, SQLite) on a ManualClock: the
old key's grace ends at its deadline, a second rekey before the switch keeps the key the
sensor really holds, a LoRaWAN device is refused, and an old-key frame committed after a
new-key frame in the same batch is refused as retired_key (the commit's own check)."""

from __future__ import annotations

import json

import grpc
import pytest
from conftest import make_hub_dir, start_live_hub
from ingest_helpers import assert_rejected, deliver, fresh_readings

from node.api.v1 import admin_pb2
from node.app.sensor_client import Sensor, SensorCredential
from node.clock import ManualClock
from node.sensors import DEFAULT_OLD_KEY_GRACE_S


@pytest.fixture
async def clocked_hub(tmp_path):
    clock = ManualClock()
    live = await start_live_hub(make_hub_dir(tmp_path / "hub"), clock=clock)
    yield live, clock
    await live.stop()


async def rekey(live, sensor: Sensor, tmp_path, name: str, **fields) -> tuple[admin_pb2.Sensor, Sensor]:
    response = await live.admin.RekeySensor(
        admin_pb2.RekeySensorRequest(sensor_id=sensor.credential.sensor_id, **fields), metadata=live.admin_metadata)
    path = tmp_path / f"{name}.json"
    path.write_bytes(response.credential_json)
    return response.sensor, Sensor(SensorCredential.load(path), sensor.counters)  # one counter file: the counter goes on


async def test_old_key_accepted_until_the_deadline_then_retired(clocked_hub, tmp_path):
    live, clock = clocked_hub
    old = await live.add_sensor(tmp_path, "old")
    assert (await deliver(live, old.seal([fresh_readings()]), "batch")).ok
    shown, _new = await rekey(live, old, tmp_path, "new")
    assert shown.old_key_until_ms == shown.rekeyed_at_ms + DEFAULT_OLD_KEY_GRACE_S * 1000 == clock.now_ms() + DEFAULT_OLD_KEY_GRACE_S * 1000
    clock.advance(DEFAULT_OLD_KEY_GRACE_S - 1)
    assert (await deliver(live, old.seal([fresh_readings()]), "stream")).ok  # the sensor has not switched yet
    clock.advance(1)
    for transport in ("batch", "stream", "http"):
        delivery = await deliver(live, old.seal([fresh_readings()]), transport)
        assert_rejected(delivery, "retired_key")
        assert "previous key of sensor" in delivery.message


async def test_grace_zero_refuses_the_old_key_at_once(clocked_hub, tmp_path):
    live, _clock = clocked_hub
    old = await live.add_sensor(tmp_path, "leaked")
    _, new = await rekey(live, old, tmp_path, "new", old_key_grace_seconds=0)
    assert_rejected(await deliver(live, old.seal([fresh_readings()]), "batch"), "retired_key")
    assert (await deliver(live, new.seal([fresh_readings()]), "batch")).ok


async def test_a_second_rekey_before_the_switch_keeps_the_key_the_sensor_holds(clocked_hub, tmp_path):
    live, _clock = clocked_hub
    old = await live.add_sensor(tmp_path, "twice")
    _, unused = await rekey(live, old, tmp_path, "lost")  # its credential was lost, say
    _, new = await rekey(live, old, tmp_path, "second")
    assert (await deliver(live, old.seal([fresh_readings()]), "batch")).ok  # still the sensor's key
    assert_rejected(await deliver(live, unused.seal([fresh_readings()]), "batch"), "authentication_failed")
    assert (await deliver(live, new.seal([fresh_readings()]), "batch")).ok
    assert_rejected(await deliver(live, old.seal([fresh_readings()]), "batch"), "retired_key")
    [stored] = (await live.admin.ListSensors(admin_pb2.ListSensorsRequest(), metadata=live.admin_metadata)).sensors
    assert stored.old_key_until_ms == stored.last_seen_ms  # the switch is stored, not only remembered
    live.hub.ingest.forget(stored.sensor_id)  # as after a restart: read again from the database
    assert_rejected(await deliver(live, old.seal([fresh_readings()]), "batch"), "retired_key")


async def test_an_old_key_frame_after_a_new_key_frame_in_one_batch_is_refused(clocked_hub, tmp_path):
    live, _clock = clocked_hub
    old = await live.add_sensor(tmp_path, "mixed")
    _, new = await rekey(live, old, tmp_path, "new")
    before = (await live.admin.ListSensors(admin_pb2.ListSensorsRequest(), metadata=live.admin_metadata)).sensors[0]
    mixed = [new.seal([fresh_readings()])[0], old.seal([fresh_readings()])[0]]
    assert_rejected(await deliver(live, mixed, "batch"), "retired_key")
    after = (await live.admin.ListSensors(admin_pb2.ListSensorsRequest(), metadata=live.admin_metadata)).sensors[0]
    assert (after.readings, after.old_key_until_ms) == (before.readings, before.old_key_until_ms)  # all or nothing
    assert (await deliver(live, new.seal([fresh_readings()]), "batch")).ok


async def test_a_lorawan_device_is_not_rekeyed(clocked_hub, tmp_path):
    live, _clock = clocked_hub
    added = await live.admin.AddSensor(admin_pb2.AddSensorRequest(
        dataset="air_quality", metrics=["pm25"], latitude=58.9, longitude=5.7, lorawan_dev_eui="70b3d57ed0000001",
        lorawan_app_s_key="00" * 16), metadata=live.admin_metadata)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await live.admin.RekeySensor(admin_pb2.RekeySensorRequest(sensor_id=added.sensor.sensor_id), metadata=live.admin_metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "LoRaWAN device 70b3d57ed0000001" in refused.value.details() and "join" in refused.value.details()
    rows = await live.hub.storage.read(lambda s: s.audit_rows())
    assert not [e for e in (json.loads(r.entry) for r in rows) if e["action"] == "sensor.rekey"]


async def test_grace_longer_than_the_limit_is_refused(clocked_hub, tmp_path):
    live, _clock = clocked_hub
    old = await live.add_sensor(tmp_path, "long")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rekey(live, old, tmp_path, "new", old_key_grace_seconds=91 * 86_400)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "90 days" in refused.value.details()
    assert (await deliver(live, old.seal([fresh_readings()]), "batch")).ok  # the key is unchanged
