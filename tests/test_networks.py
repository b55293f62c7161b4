"""Network doors end to end: a real Mosquitto, real HTTP requests, LoRaWAN frames from an
independent encoder (lora-packet), into a real hub; every refusal of issue 10 counted with its
reason, nothing of it stored, the hub still serving."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections import Counter

import aiohttp
import aiomqtt
import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from hypothesis import given, settings
from hypothesis import strategies as st

from node.api.v1 import admin_pb2
from node.app import network_doors as doors
from node.clock import SYSTEM_CLOCK, ManualClock
from node.networks import codecs, lorawan
from tests.conftest import make_hub_dir, start_live_hub
from tests.network_helpers import LoraEncoder, Mosquitto, chirpstack_up, tts_up

APP_S_KEY = "2b7e151628aed2a6abf7158809cf4f3c"
DEV_ADDR = "26011bda"
KEK = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
SECRET = "chirpstack-shared-secret-0123456789"
T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z


@pytest.fixture(scope="module")
def encoder():
    enc = LoraEncoder()
    yield enc
    enc.close()


@pytest.fixture
def broker(tmp_path):
    mosquitto = Mosquitto(tmp_path / "broker").start()
    yield mosquitto
    mosquitto.stop()


def lpp(pm25: float, temperature: float) -> bytes:
    """Cayenne LPP: channel 1 analog input (0.01), channel 2 temperature (0.1 °C)."""
    pm = round(pm25 * 100).to_bytes(2, "big", signed=True)
    return bytes([1, 2]) + pm + bytes([2, 103]) + round(temperature * 10).to_bytes(2, "big", signed=True)


def networks_toml(data_dir, broker_port: int | None) -> None:
    (data_dir / "http.secret").write_text(SECRET)
    text = """
[codecs.air-lpp]
kind = "cayenne"
channels = { "1" = "pm25", "2" = "temperature" }

[http.chirpstack]
secret_file = "http.secret"

[http.tts]
secret_file = "http.secret"
"""
    if broker_port:
        text += f"""
[[mqtt]]
name = "regional-lorawan"
format = "chirpstack"
host = "127.0.0.1"
port = {broker_port}
tls = false
topics = ["application/app1/device/+/event/up"]
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5

[[mqtt]]
name = "tts"
format = "tts"
host = "127.0.0.1"
port = {broker_port}
tls = false
topics = ["v3/porsgrunn-air@ttn/devices/+/up"]
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5

[[mqtt]]
name = "gateway"
format = "frames"
host = "127.0.0.1"
port = {broker_port}
tls = false
topics = ["smartregion/frames/+"]
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5

[[mqtt]]
name = "span"
format = "span"
host = "127.0.0.1"
port = {broker_port}
tls = false
topics = ["span/+/+"]
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5
"""
    (data_dir / "networks.toml").write_text(text)


async def enrol(live, dev_eui: str, *, app_s_key: str = APP_S_KEY, confidentiality: str = "end-to-end", codec: str = "air-lpp"):
    response = await live.admin.AddSensor(
        admin_pb2.AddSensorRequest(dataset="air_quality", metrics=["pm25", "temperature"], latitude=59.14, longitude=9.65,
                                   label="Knarrdalstranda", lorawan_dev_eui=dev_eui, lorawan_app_s_key=app_s_key,
                                   confidentiality=confidentiality, codec=codec),
        metadata=live.admin_metadata,
    )
    return response.sensor


async def stored(live, sensor_id: str) -> int:
    record = await live.hub.storage.read(lambda s: s.get_sensor(sensor_id))
    return record.readings


async def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def rejections(live) -> dict[str, int]:
    return await live.hub.ingest.rejection_counts()  # stored, plus those tallied but not yet written


async def post(live, path: str, body: bytes | dict, *, secret: str = SECRET, content_type: str = "application/json"):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{live.hub.endpoint.http_url}{path}", data=data,
                             headers={"Authorization": f"Bearer {secret}", "Content-Type": content_type}) as response:
            return response.status, await response.json()


# -- LoRaWAN cryptography against independent implementations ----------------------------------

@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=0, max_size=242), fcnt=st.integers(0, 65535), key=st.binary(min_size=16, max_size=16),
       dev_addr=st.binary(min_size=4, max_size=4))
def test_frm_payload_decryption_matches_lora_packet(encoder, payload, fcnt, key, dev_addr):
    encrypted = encoder.encrypt(dev_addr=dev_addr.hex(), fcnt=fcnt, payload=payload, app_s_key=key.hex())
    assert lorawan.frm_payload_cipher(key, dev_addr, fcnt, encrypted) == payload


def test_published_vectors():
    # lora-packet's README: "test", DevAddr 01020304, FCnt 3, AppSKey ec92... -> FRMPayload 98a92f3b.
    key = bytes.fromhex("ec925802ae430ca77fd3dd73cb2cc588")
    assert lorawan.frm_payload_cipher(key, bytes.fromhex("01020304"), 3, bytes.fromhex("98a92f3b")) == b"test"
    # RFC 3394 §4.1: 128-bit key data wrapped with a 128-bit KEK.
    wrapped = bytes.fromhex("1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5")
    assert lorawan.unwrap_app_s_key(KEK, wrapped) == bytes.fromhex("00112233445566778899aabbccddeeff")
    with pytest.raises(lorawan.LorawanError):
        lorawan.unwrap_app_s_key(bytes(16), wrapped)
    # Cayenne LPP reference example: two temperature sensors, 27.2 °C and 25.5 °C.
    assert codecs.decode_cayenne(bytes.fromhex("03670110056700FF"), {3: "a", 5: "b"}) == {"a": 27.2, "b": 25.5}


# -- ChirpStack over MQTT: end to end, the network cannot read the payload ----------------------

async def test_chirpstack_mqtt_uplinks_are_decrypted_by_the_hub(tmp_path, broker, encoder):
    data_dir = make_hub_dir(tmp_path / "hub", "4001")
    networks_toml(data_dir, broker.port)
    live = await start_live_hub(data_dir, insecure=True)
    try:
        dev_eui = "70b3d57ed005a1b2"
        sensor = await enrol(live, dev_eui)
        assert sensor.confidentiality == "end-to-end" and sensor.lorawan_dev_eui == dev_eui
        for sub in live.running.networks.subscriptions:
            await asyncio.wait_for(sub.subscribed.wait(), 20)
        async with aiomqtt.Client("127.0.0.1", broker.port) as publisher:
            # Refused on the way, counted, and the subscription goes on with the next message.
            topic = f"application/app1/device/{dev_eui}/event/up"
            await publisher.publish(topic, b"{not json", qos=1)
            await publisher.publish(topic, b"x" * 70_000, qos=1)
            await publisher.publish(topic, json.dumps(chirpstack_up("ffffffffffffffff", 0, b"\x00", T0, dev_addr=DEV_ADDR)), qos=1)
            for fcnt in range(10):
                plain = lpp(5.0 + fcnt, -3.5 + fcnt / 10)
                frm = encoder.encrypt(dev_addr=DEV_ADDR, fcnt=fcnt, payload=plain, app_s_key=APP_S_KEY)
                assert frm != plain
                event = chirpstack_up(dev_eui.upper(), fcnt, frm, T0 + fcnt * 3_600_000, dev_addr=DEV_ADDR)
                await publisher.publish(f"application/app1/device/{dev_eui}/event/up", json.dumps(event), qos=1)
        await wait_for(lambda: _equals(stored(live, sensor.sensor_id), 20))
        rows = await live.hub.storage.read(lambda s: s.readings(_filter(sensor.sensor_id)))
        values = sorted((r.metric, r.time_ms, round(r.value, 2)) for r in rows)
        assert ("pm25", T0, 5.0) in values and ("temperature", T0 + 9 * 3_600_000, -2.6) in values
        record = await live.hub.storage.read(lambda s: s.get_sensor(sensor.sensor_id))
        assert record.last_counter == 10  # FCnt 9 + 1
        counts = await rejections(live)
        assert (counts["malformed_uplink"], counts["frame_too_large"], counts["unknown_device"]) == (1, 1, 1)
        # The Things Stack over MQTT (QoS 0), a network-decrypted device: the network's decoding is accepted.
        tts_sensor = await enrol(live, "70b3d57ed0000009", app_s_key="", confidentiality="network-decrypted", codec="json")
        async with aiomqtt.Client("127.0.0.1", broker.port) as publisher:
            for fcnt in (1, 2, 5):
                message = tts_up("70b3d57ed0000009", fcnt, json.dumps({"pm25": float(fcnt)}).encode(), T0 + fcnt * 60_000)
                await publisher.publish("v3/porsgrunn-air@ttn/devices/station/up", json.dumps(message), qos=0)
        await wait_for(lambda: _equals(stored(live, tts_sensor.sensor_id), 3))
        assert 'smartregion_network_fcnt_gaps_total{door="tts"} 2.0' in live.hub.metrics.exposition().decode()
    finally:
        await live.stop()


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected


def _filter(sensor_id: str):
    from node.storage.base import ReadingFilter

    return ReadingFilter(sensor_id=sensor_id)


# -- every refusal: counted with its reason, nothing stored, the hub still serving --------------

async def test_every_bad_uplink_is_refused_counted_and_stores_nothing(tmp_path, encoder):
    data_dir = make_hub_dir(tmp_path / "hub", "3107")
    networks_toml(data_dir, None)
    live = await start_live_hub(data_dir, insecure=True)
    try:
        held = await enrol(live, "0004a30b001c0530")  # AppSKey held by the hub
        enveloped = await enrol(live, "0004a30b001c0531", app_s_key="")  # AppSKey from the join server's envelope
        await live.admin.AddLorawanKek(admin_pb2.AddLorawanKekRequest(label="js-telemark", kek=KEK), metadata=live.admin_metadata)
        session_key = secrets.token_bytes(16)
        envelope = ("js-telemark", aes_key_wrap(KEK, session_key))

        def up(dev_eui, fcnt, plain, key=APP_S_KEY, **extra):
            frm = encoder.encrypt(dev_addr=DEV_ADDR, fcnt=fcnt, payload=plain, app_s_key=key)
            return chirpstack_up(dev_eui, fcnt, frm, T0 + fcnt * 60_000, dev_addr=DEV_ADDR, **extra)

        # Good uplinks first: one from each device (the envelope one decrypted with the unwrapped session key).
        assert (await post(live, "/v1/networks/chirpstack?event=up", up(held.lorawan_dev_eui, 5, lpp(7.5, 1.0))))[0] == 200
        status, body = await post(live, "/v1/networks/chirpstack?event=up",
                                  up(enveloped.lorawan_dev_eui, 1, lpp(8.0, 2.0), key=session_key.hex(), key_envelope=envelope))
        assert (status, body["readings_stored"]) == (200, 2)

        from chirpstack_api.integration import integration_pb2
        from google.protobuf import json_format
        good_pb = json_format.Parse(json.dumps(up(held.lorawan_dev_eui, 9, lpp(3.0, 3.0))), integration_pb2.UplinkEvent(),
                                    ignore_unknown_fields=True).SerializeToString()

        cases = [
            ("malformed JSON", "/v1/networks/chirpstack?event=up", b'{"deviceInfo": {', {}, "malformed_uplink", 400),
            ("not an event", "/v1/networks/chirpstack?event=up", json.dumps({"fCnt": "many"}).encode(), {}, "malformed_uplink", 400),
            ("malformed Protobuf", "/v1/networks/chirpstack?event=up", b"\x0a\xff\xff\xff", {"content_type": "application/octet-stream"},
             "malformed_uplink", 400),
            ("unknown DevEUI", "/v1/networks/chirpstack?event=up", up("0004a30b001c05ff", 1, lpp(1, 1)), {}, "unknown_device", 401),
            ("replayed FCnt", "/v1/networks/chirpstack?event=up", up(held.lorawan_dev_eui, 5, lpp(7.5, 1.0)), {}, "replayed", 409),
            ("reordered FCnt", "/v1/networks/chirpstack?event=up", up(held.lorawan_dev_eui, 4, lpp(7.5, 1.0)), {}, "replayed", 409),
            ("unknown KEK label", "/v1/networks/chirpstack?event=up",
             up(enveloped.lorawan_dev_eui, 2, lpp(1, 1), key=session_key.hex(), key_envelope=("js-other", envelope[1])), {},
             "unknown_kek", 412),
            ("envelope altered", "/v1/networks/chirpstack?event=up",
             up(enveloped.lorawan_dev_eui, 2, lpp(1, 1), key=session_key.hex(), key_envelope=("js-telemark", bytes(24))), {},
             "unknown_kek", 412),
            ("codec fails", "/v1/networks/chirpstack?event=up", up(held.lorawan_dev_eui, 6, bytes([1, 2, 0])), {},
             "undecodable_payload", 422),
            ("unmapped channel", "/v1/networks/chirpstack?event=up", up(held.lorawan_dev_eui, 6, bytes([9, 103, 0, 10])), {},
             "undecodable_payload", 422),
            ("wrong AppSKey", "/v1/networks/chirpstack?event=up", up(held.lorawan_dev_eui, 6, lpp(1, 1), key="00" * 16), {},
             "undecodable_payload", 422),
            ("out of range", "/v1/networks/chirpstack?event=up", up(held.lorawan_dev_eui, 6, lpp(1, 95.0)), {}, "invalid_reading", 422),
            ("wrong secret", "/v1/networks/chirpstack?event=up", up(held.lorawan_dev_eui, 6, lpp(1, 1)), {"secret": "guess" * 8},
             "unauthenticated", 401),
            ("wrong webhook secret", "/v1/networks/tts", tts_up(held.lorawan_dev_eui, 6, b"", T0), {"secret": ""},
             "unauthenticated", 401),
            ("oversized", "/v1/networks/chirpstack?event=up", b"{" + b" " * 70_000 + b"}", {}, "frame_too_large", 413),
        ]
        for name, path, body, options, reason, http_status in cases:
            before_counts = await rejections(live)
            before = [await stored(live, s.sensor_id) for s in (held, enveloped)]
            status, answer = await post(live, path, body, **options)
            assert (status, answer.get("error")) == (http_status, reason), (name, answer)
            after_counts = await rejections(live)
            assert after_counts.get(reason, 0) == before_counts.get(reason, 0) + 1, name
            assert sum(after_counts.values()) == sum(before_counts.values()) + 1, name  # counted once, under that reason
            assert [await stored(live, s.sensor_id) for s in (held, enveloped)] == before, name
        # Still serving: the next good uplinks of both devices, over JSON and Protobuf, are stored.
        status, body = await post(live, "/v1/networks/chirpstack?event=up", good_pb, content_type="application/octet-stream")
        assert (status, body["readings_stored"], body["counter"]) == (200, 2, 10)
        status, body = await post(live, "/v1/networks/chirpstack?event=up",
                                  up(enveloped.lorawan_dev_eui, 2, lpp(9.0, 2.0), key=session_key.hex(), key_envelope=envelope))
        assert status == 200
        # Other ChirpStack events on the same URL are acknowledged and ignored.
        assert (await post(live, "/v1/networks/chirpstack?event=status", {"margin": 10}))[0] == 200
        metrics = (await live.hub.storage.read(lambda s: s.rejection_counts()))
        assert metrics["unknown_device"] == 1
    finally:
        await live.stop()


async def test_tts_webhook_network_decrypted_and_shown_as_such(tmp_path):
    data_dir = make_hub_dir(tmp_path / "hub", "3905")
    networks_toml(data_dir, None)
    live = await start_live_hub(data_dir, insecure=True)
    try:
        sensor = await enrol(live, "70b3d57ed0000001", app_s_key="", confidentiality="network-decrypted", codec="json")
        assert sensor.confidentiality == "network-decrypted"
        # The Things Stack decrypted and decoded it (its payload formatter's decoded_payload); plaintext JSON FRMPayload.
        first = tts_up("70b3d57ed0000001", 1, json.dumps({"pm25": 4.5}).encode(), T0, dev_addr=DEV_ADDR)
        status, body = await post(live, "/v1/networks/tts", first)
        assert (status, body["readings_stored"]) == (200, 1), body
        decoded_only = tts_up("70b3d57ed0000001", 4, b"", T0 + 60_000, decoded={"pm25": 5.5, "temperature": 2.0})
        del decoded_only["uplink_message"]["frm_payload"]
        assert (await post(live, "/v1/networks/tts", decoded_only))[0] == 200
        listed = await live.admin.ListSensors(admin_pb2.ListSensorsRequest(), metadata=live.admin_metadata)
        (shown,) = [s for s in listed.sensors if s.sensor_id == sensor.sensor_id]
        assert (shown.confidentiality, shown.lorawan_dev_eui, shown.readings) == ("network-decrypted", "70b3d57ed0000001", 3)
        exposition = live.hub.metrics.exposition().decode()
        assert 'smartregion_network_fcnt_gaps_total{door="tts"} 2.0' in exposition  # FCnt 2 and 3 never came
        assert 'smartregion_network_uplinks_total{door="tts",outcome="stored"} 2.0' in exposition
    finally:
        await live.stop()


async def test_enrolment_refusals(tmp_path):
    data_dir = make_hub_dir(tmp_path / "hub", "4001")
    networks_toml(data_dir, None)
    live = await start_live_hub(data_dir, insecure=True)
    try:
        await enrol(live, "0102030405060708")
        for kwargs, detail in [
            ({"dev_eui": "0102030405060708"}, "already"),
            ({"dev_eui": "01020304"}, "16 hex digits"),
            ({"dev_eui": "0102030405060709", "codec": "nope"}, "no codec"),
            ({"dev_eui": "0102030405060709", "app_s_key": "abcd"}, "AppSKey"),
            ({"dev_eui": "0102030405060709", "confidentiality": "network-decrypted"}, "needs no AppSKey"),
            ({"dev_eui": "0102030405060709", "confidentiality": "secret", "app_s_key": ""}, "end-to-end or network-decrypted"),
        ]:
            with pytest.raises(Exception) as raised:
                await enrol(live, **kwargs)
            assert detail in str(raised.value), (kwargs, raised.value)
        assert len(await live.hub.storage.read(lambda s: s.list_lorawan_devices())) == 1
        assert len(await live.hub.storage.read(lambda s: s.list_sensors())) == 1  # nothing half-enrolled
        meta = live.admin_metadata
        await live.admin.AddLorawanKek(admin_pb2.AddLorawanKekRequest(label="js1", kek=KEK), metadata=meta)
        for label, kek, detail in [("js1", KEK, "held already"), ("bad label!", KEK, "label"), ("js2", b"short", "16, 24 or 32")]:
            with pytest.raises(Exception) as raised:
                await live.admin.AddLorawanKek(admin_pb2.AddLorawanKekRequest(label=label, kek=kek), metadata=meta)
            assert detail in str(raised.value)
        # The KEK is stored wrapped, never in clear.
        wrapped = await live.hub.storage.read(lambda s: s.get_lorawan_kek("js1"))
        assert KEK not in wrapped and len(wrapped) == 12 + 16 + 16
    finally:
        await live.stop()


# -- generic MQTT gateway and Span: sealed frames; a broker restart mid-stream loses nothing -------

async def _publish_reliably(broker: Mosquitto, topic: str, payloads: list[bytes], client_id: str) -> None:
    """Publish each payload with QoS 1 until the broker acknowledged it, reconnecting as a
    gateway does (a payload whose PUBACK was lost may go twice: the hub stores it once)."""
    pending = list(payloads)
    while pending:
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier=client_id, clean_session=False, timeout=5) as client:
                while pending:
                    await client.publish(topic, pending[0], qos=1)
                    pending.pop(0)
        except aiomqtt.MqttError:
            await asyncio.sleep(0.05)


async def test_gateway_frames_survive_a_broker_restart_in_a_hub_process(tmp_path, broker):
    from node.app.sensor_client import Sensor, SensorCredential
    from node.senml import Reading
    from tests.region_helpers import ProcessHub

    hub = ProcessHub(tmp_path / "hub", "4001")
    networks_toml(hub.hub_dir.path, broker.port)
    await asyncio.to_thread(hub.launch)
    hub.connect()
    try:
        sensors = []
        for name in ("gateway", "nb-iot"):
            response = await hub.admin("AddSensor", admin_pb2.AddSensorRequest(
                dataset="air_quality", metrics=["pm25"], latitude=59.1, longitude=9.6, label=name))
            (tmp_path / f"{name}.json").write_bytes(response.credential_json)
            sensors.append(Sensor(SensorCredential.load(tmp_path / f"{name}.json")))
        frames = sensors[0].seal([[Reading("pm25", T0 + (i * 10 + j) * 60_000, float(j)) for j in range(10)] for i in range(120)])
        await _publish_reliably(broker, "smartregion/frames/gw1", frames[:70], "gw1")
        # The broker goes down in the middle of the stream (the hub has not taken every message yet) ...
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(broker.start)
        # ... and the gateway goes on.
        await _publish_reliably(broker, "smartregion/frames/gw1", frames[70:], "gw1")
        # An NB-IoT device's frames through Span's MQTT output (JSON, base64 payload), with a keepalive.
        nb_frames = sensors[1].seal([[Reading("pm25", T0 + (i * 10 + j) * 60_000, 1.0) for j in range(10)] for i in range(20)])
        span_messages = [json.dumps({"type": "data", "device": {"deviceId": "d1", "collectionId": "c1", "imei": "358000000000001"},
                                     "payload": base64.b64encode(f).decode(), "received": T0, "transport": "udp"}).encode()
                         for f in nb_frames]
        keepalive = json.dumps({"type": "keepalive"}).encode()
        await _publish_reliably(broker, "span/c1/d1", [keepalive, *span_messages], "span-test")

        async def all_stored() -> bool:
            listed = await hub.admin("ListSensors", admin_pb2.ListSensorsRequest())
            return [s.readings for s in listed.sensors] == [1200, 200]
        await wait_for(all_stored, timeout=60)
        listed = await hub.admin("ListSensors", admin_pb2.ListSensorsRequest())
        assert listed.sensors[0].last_counter == int.from_bytes(frames[-1][33:41], "big")
        assert {s.confidentiality for s in listed.sensors} == {"end-to-end"}
    finally:
        await hub.stop()


async def test_a_new_join_session_restarts_fcnt_and_old_sessions_stay_refused(tmp_path, encoder):
    data_dir = make_hub_dir(tmp_path / "hub", "4001")
    networks_toml(data_dir, None)
    live = await start_live_hub(data_dir, insecure=True)
    try:
        device = await enrol(live, "0004a30b001c0777", app_s_key="")
        await live.admin.AddLorawanKek(admin_pb2.AddLorawanKekRequest(label="js", kek=KEK), metadata=live.admin_metadata)
        sessions = {name: secrets.token_bytes(16) for name in ("first", "second")}

        async def send(session: str, fcnt: int, minute: int):
            key = sessions[session]
            frm = encoder.encrypt(dev_addr=DEV_ADDR, fcnt=fcnt, payload=lpp(5.0, 1.0), app_s_key=key.hex())
            event = chirpstack_up(device.lorawan_dev_eui, fcnt, frm, T0 + minute * 60_000, dev_addr=DEV_ADDR,
                                  key_envelope=("js", aes_key_wrap(KEK, key), f"session-{session}"))
            return await post(live, "/v1/networks/chirpstack?event=up", event)

        assert [(await send("first", fcnt, fcnt))[0] for fcnt in range(3)] == [200, 200, 200]
        assert (await send("second", 0, 10))[0] == 200  # the device joined again: FCnt 0 of a new session
        assert (await send("second", 1, 11))[0] == 200
        assert (await send("first", 3, 12))[1]["error"] == "replayed"  # a late uplink of the earlier session
        assert (await send("second", 1, 11))[1]["error"] == "replayed"
        assert await stored(live, device.sensor_id) == 10
    finally:
        await live.stop()


def _certificates(directory):
    """A CA, the broker's certificate (127.0.0.1) and the hub's client certificate, all PEM."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def make(name, issuer_name, issuer_key, *, ca=False, san=None, usage=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        return key, cert

    ca_key, ca = make("test-ca", None, None, ca=True)
    server_key, server = make("broker", ca.subject, ca_key, san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                              usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    client_key, client = make("porsgrunn-hub", ca.subject, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    files = {}
    for name, obj in (("ca.pem", ca), ("server.pem", server), ("client.pem", client)):
        files[name] = directory / name
        files[name].write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    for name, key in (("server.key", server_key), ("client.key", client_key)):
        files[name] = directory / name
        files[name].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return files


async def test_the_hub_subscribes_over_tls_with_a_client_certificate(tmp_path, encoder):
    certs_dir = tmp_path / "certs"
    certs_dir.mkdir()
    files = _certificates(certs_dir)
    tls_broker = Mosquitto(tmp_path / "tls-broker", anonymous=False, listener_options=(
        f"cafile {files['ca.pem']}\ncertfile {files['server.pem']}\nkeyfile {files['server.key']}\n"
        "require_certificate true\nuse_identity_as_username true")).start()
    try:
        data_dir = make_hub_dir(tmp_path / "hub", "4001")
        (data_dir / "networks.toml").write_text(f"""
[codecs.air-lpp]
kind = "cayenne"
channels = {{ "1" = "pm25", "2" = "temperature" }}

[[mqtt]]
name = "lorawan-tls"
format = "chirpstack"
host = "127.0.0.1"
port = {tls_broker.port}
ca_file = "{files['ca.pem']}"
cert_file = "{files['client.pem']}"
key_file = "{files['client.key']}"
topics = ["application/app1/device/+/event/up"]
""")
        live = await start_live_hub(data_dir, insecure=True)
        try:
            sensor = await enrol(live, "70b3d57ed005a1c3")
            await asyncio.wait_for(live.running.networks.subscriptions[0].subscribed.wait(), 20)
            frm = encoder.encrypt(dev_addr=DEV_ADDR, fcnt=0, payload=lpp(6.5, 0.5), app_s_key=APP_S_KEY)
            event = chirpstack_up(sensor.lorawan_dev_eui, 0, frm, T0, dev_addr=DEV_ADDR)
            import ssl

            context = ssl.create_default_context(cafile=str(files["ca.pem"]))
            context.load_cert_chain(str(files["client.pem"]), str(files["client.key"]))
            async with aiomqtt.Client("127.0.0.1", tls_broker.port, tls_context=context) as publisher:
                await publisher.publish(f"application/app1/device/{sensor.lorawan_dev_eui}/event/up", json.dumps(event), qos=1)
            await wait_for(lambda: _equals(stored(live, sensor.sensor_id), 2))
            # A client without a certificate is turned away by the broker.
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", tls_broker.port, tls_context=ssl.create_default_context(cafile=str(files["ca.pem"])),
                                          timeout=5):
                    pass
        finally:
            await live.stop()
    finally:
        tls_broker.stop()


async def test_an_mqtt_subscription_carrying_garbage_is_bounded_like_an_http_source(tmp_path, broker, encoder):
    """A broker's subscription is one source: after REFUSALS_BURST refused messages it is read
    no further (`too_many_refusals`, before decoding) until its bucket refills, honest uplinks
    on it included (the documented price of not reading a flood), and then it is served again.
    The flood is one audit entry for the subscription."""
    data_dir = make_hub_dir(tmp_path / "hub", "3805")
    networks_toml(data_dir, broker.port)
    clock = ManualClock(SYSTEM_CLOCK.now_ms())
    live = await start_live_hub(data_dir, insecure=True, clock=clock)
    try:
        dev_eui = "70b3d57ed005a1c3"
        sensor = await enrol(live, dev_eui)
        for sub in live.running.networks.subscriptions:
            await asyncio.wait_for(sub.subscribed.wait(), 20)
        topic = f"application/app1/device/{dev_eui}/event/up"

        def uplink(fcnt: int) -> bytes:
            frm = encoder.encrypt(dev_addr=DEV_ADDR, fcnt=fcnt, payload=lpp(5.0 + fcnt, 1.0), app_s_key=APP_S_KEY)
            return json.dumps(chirpstack_up(dev_eui, fcnt, frm, T0 + fcnt * 3_600_000, dev_addr=DEV_ADDR)).encode()

        flood = doors.REFUSALS_BURST + 60
        async with aiomqtt.Client("127.0.0.1", broker.port) as publisher:
            for _ in range(flood):
                await publisher.publish(topic, b"{not json", qos=1)
            await publisher.publish(topic, uplink(1), qos=1)  # honest, but on the throttled subscription

        async def refused() -> bool:
            counts = await rejections(live)
            return counts.get("malformed_uplink", 0) + counts.get("too_many_refusals", 0) == flood + 1

        await wait_for(refused)
        counts = await rejections(live)
        assert (counts["malformed_uplink"], counts["too_many_refusals"]) == (doors.REFUSALS_BURST + 1, 60), counts
        assert await stored(live, sensor.sensor_id) == 0
        clock.advance(60.0)  # the bucket refills (and the minute of refusals ends)
        async with aiomqtt.Client("127.0.0.1", broker.port) as publisher:
            await publisher.publish(topic, uplink(2), qos=1)
        await wait_for(lambda: _equals(stored(live, sensor.sensor_id), 2))  # pm25 and temperature of one uplink
        await live.running.federation.refusals.flush()
        rows = await live.hub.storage.read(lambda s: s.audit_rows())
        entries = [json.loads(r.entry) for r in rows if json.loads(r.entry)["actor"] == "source:mqtt:regional-lorawan"]
        assert len(entries) == 1 and entries[0]["detail"].startswith(f"{flood + 1} refused"), entries
    finally:
        await live.stop()


async def test_a_source_of_refused_uplinks_is_bounded_counted_and_audited_once_a_minute(tmp_path, encoder):
    """Before: every refused uplink cost a decode and a log line, from any source, without
    bound. Now a source (here 127.0.0.2, guessing the webhook secret) has REFUSALS_BURST
    refusals, then REFUSALS_PER_SECOND: beyond them it is refused at once with
    `too_many_refusals` (429), while the network server on 127.0.0.1 is served; the refusals
    are one audit entry for the source, not one per request."""
    data_dir = make_hub_dir(tmp_path / "hub", "3107")
    networks_toml(data_dir, None)
    clock = ManualClock(SYSTEM_CLOCK.now_ms())
    live = await start_live_hub(data_dir, insecure=True, clock=clock)
    url = f"{live.hub.endpoint.http_url}/v1/networks/chirpstack?event=up"
    try:
        device = await enrol(live, "0004a30b001c0530")
        flood = doors.REFUSALS_BURST + 60
        statuses = Counter()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as attacker:
            async def guess(i: int) -> tuple[int, str]:
                async with attacker.post(url, data=b"{}", headers={"Authorization": f"Bearer guess-{i:04d}-{'x' * 20}"}) as r:
                    return r.status, (await r.json())["error"]

            for i in range(flood):
                statuses[await guess(i)] += 1
            # The burst, and the one refusal that finds the bucket empty, are read; the rest are not.
            assert statuses == {(401, "unauthenticated"): doors.REFUSALS_BURST + 1, (429, "too_many_refusals"): 59}, statuses
            # The honest network server, elsewhere, is served meanwhile.
            frm = encoder.encrypt(dev_addr=DEV_ADDR, fcnt=1, payload=lpp(7.5, 1.0), app_s_key=APP_S_KEY)
            status, body = await post(live, "/v1/networks/chirpstack?event=up", chirpstack_up(device.lorawan_dev_eui, 1, frm, T0,
                                                                                            dev_addr=DEV_ADDR))
            assert (status, body["readings_stored"]) == (200, 2)
            # The bucket refills at its rate: one second later, that many more refusals are read.
            clock.advance(1.0)
            again = Counter([await guess(flood + i) for i in range(int(doors.REFUSALS_PER_SECOND) + 5)])
            assert again == {(401, "unauthenticated"): int(doors.REFUSALS_PER_SECOND) + 1, (429, "too_many_refusals"): 4}, again
        counts = await rejections(live)
        assert counts["too_many_refusals"] == 63 and counts["unauthenticated"] == doors.REFUSALS_BURST + 22
        await live.running.federation.refusals.flush()
        rows = await live.hub.storage.read(lambda s: s.audit_rows())
        entries = [json.loads(r.entry) for r in rows if json.loads(r.entry)["actor"] == "source:http:127.0.0.2"]
        assert len(entries) == 1 and entries[0]["detail"].startswith(f"{flood + 25} refused"), entries
        print(f"\n{flood + 25} refused uplinks from one source: {doors.REFUSALS_BURST + 22} read and refused, 63 refused "
              "unread (too_many_refusals); one audit entry; the network server served meanwhile")
    finally:
        await live.stop()
