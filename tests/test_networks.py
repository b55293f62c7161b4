"""Network doors end to end: a real Mosquitto, real HTTP requests, LoRaWAN frames from an
independent encoder (lora-packet), into a real hub; every refusal of issue 10 counted with its
reason, nothing of it stored, the hub still serving."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.api.v1 import admin_pb2
from node.networks import codecs, lorawan
from tests.conftest import make_hub_dir, start_live_hub
from tests.network_helpers import LoraEncoder, Mosquitto, chirpstack_up

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
    return await live.hub.storage.read(lambda s: s.rejection_counts())


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
    finally:
        await live.stop()


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected


def _filter(sensor_id: str):
    from node.storage.base import ReadingFilter

    return ReadingFilter(sensor_id=sensor_id)
