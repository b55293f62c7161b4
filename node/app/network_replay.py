"""`smartregion sensor replay --via chirpstack|tts|span|mqtt`: publish a station CSV as that
network would, through a real MQTT broker, so a hub's network doors can be tried end to end.

* chirpstack / tts: each hour becomes one LoRaWAN uplink from the device (DevEUI, DevAddr): the
  readings encoded as Cayenne LPP (channel i+1 = the i-th metric; temperature as LPP
  temperature, others as LPP analog input), FRMPayload encrypted under the AppSKey as the
  device does, and forwarded still encrypted, as a network server without the AppSKey does
  (ChirpStack with a join server, TTS with payload crypto skipped). With a join-server KEK the
  AppSKey travels along in a key envelope (RFC 3394), as the join server hands it out.
* span / mqtt: the sensor's own sealed frames (its credential), inside Span's JSON output or
  as raw MQTT payloads from a gateway.

Every message is published with QoS 1 and counted as sent only after the broker acknowledged it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby

import aiomqtt
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from node import senml
from node.networks import lorawan

VIAS = ("chirpstack", "tts", "span", "mqtt")
LPP_TEMPERATURE, LPP_ANALOG = 103, 2


class ReplayError(ValueError):
    pass


@dataclass(frozen=True)
class LorawanDevice:
    dev_eui: str
    dev_addr: bytes
    app_s_key: bytes
    kek_label: str = ""
    kek: bytes = b""  # with a KEK, every uplink carries the AppSKey in a key envelope
    application_id: str = "smartregion"
    tenant_id: str = "kommune"


def lpp_encode(values: dict[str, float], metrics: list[str]) -> bytes:
    """Cayenne LPP: channel i+1 for metrics[i]; raise ReplayError if a value does not fit."""
    out = bytearray()
    for channel, metric in enumerate(metrics, start=1):
        if metric not in values:
            continue
        lpp_type, scale = (LPP_TEMPERATURE, 10) if "temperature" in metric else (LPP_ANALOG, 100)
        raw = round(values[metric] * scale)
        if not -32768 <= raw <= 32767:
            raise ReplayError(f"{metric} = {values[metric]} does not fit Cayenne LPP type {lpp_type}")
        out += bytes([channel, lpp_type]) + raw.to_bytes(2, "big", signed=True)
    return bytes(out)


def lpp_codec_toml(name: str, metrics: list[str]) -> str:
    """The networks.toml codec that decodes what `lpp_encode` writes."""
    channels = ", ".join(f'"{i}" = "{m}"' for i, m in enumerate(metrics, start=1))
    return f'[codecs.{name}]\nkind = "cayenne"\nchannels = {{ {channels} }}\n'


def _rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def _hours(readings: Iterable[senml.Reading]) -> Iterator[tuple[int, dict[str, float]]]:
    for time_ms, group in groupby(sorted(readings, key=lambda r: r.time_ms), key=lambda r: r.time_ms):
        yield time_ms, {r.metric: r.value for r in group}


def lorawan_messages(via: str, device: LorawanDevice, readings: Iterable[senml.Reading], metrics: list[str],
                     first_fcnt: int = 0) -> Iterator[tuple[str, bytes]]:
    """(topic, message) per hour, as ChirpStack v4 or The Things Stack v3 publish them."""
    fcnt = first_fcnt
    envelope = aes_key_wrap(device.kek, device.app_s_key) if device.kek else b""
    for time_ms, values in _hours(readings):
        frm = lorawan.frm_payload_cipher(device.app_s_key, device.dev_addr, fcnt, lpp_encode(values, metrics))
        if via == "chirpstack":
            event: dict[str, object] = {
                "time": _rfc3339(time_ms), "deviceInfo": {"applicationId": device.application_id, "devEui": device.dev_eui},
                "devAddr": device.dev_addr.hex(), "fCnt": fcnt, "fPort": 1, "data": base64.b64encode(frm).decode(),
            }
            if envelope:
                event["joinServerContext"] = {"appSKey": {"kekLabel": device.kek_label, "aesKey": base64.b64encode(envelope).decode()}}
            yield f"application/{device.application_id}/device/{device.dev_eui}/event/up", json.dumps(event).encode()
        else:
            up: dict[str, object] = {"f_port": 1, "f_cnt": fcnt, "frm_payload": base64.b64encode(frm).decode(),
                                     "received_at": _rfc3339(time_ms)}
            if envelope:
                up["app_s_key"] = {"kek_label": device.kek_label, "encrypted_key": base64.b64encode(envelope).decode()}
            message = {"end_device_ids": {"device_id": device.dev_eui, "dev_eui": device.dev_eui.upper(),
                                          "dev_addr": device.dev_addr.hex().upper(),
                                          "application_ids": {"application_id": device.application_id}},
                       "received_at": _rfc3339(time_ms), "uplink_message": up}
            yield (f"v3/{device.application_id}@{device.tenant_id}/devices/{device.dev_eui}/up", json.dumps(message).encode())
        fcnt += 1


def frame_messages(via: str, sealed: list[bytes], sensor_id: str, imei: str = "358000000000000") -> Iterator[tuple[str, bytes]]:
    for frame in sealed:
        if via == "span":
            body = {"type": "data", "device": {"deviceId": sensor_id, "collectionId": "smartregion", "imei": imei},
                    "payload": base64.b64encode(frame).decode(), "received": int(time.time() * 1000), "transport": "udp"}
            yield f"smartregion/{sensor_id}", json.dumps(body).encode()
        else:
            yield f"smartregion/frames/{sensor_id}", frame


@dataclass
class PublishSummary:
    messages: int = 0
    seconds: float = 0.0


async def publish(host: str, port: int, messages: Iterable[tuple[str, bytes]], *, client_id: str, username: str = "", password: str = "",
                  progress: Callable[[int], None] | None = None) -> PublishSummary:
    """Publish with QoS 1, each acknowledged by the broker before the next is counted."""
    summary = PublishSummary()
    started = time.monotonic()
    async with aiomqtt.Client(host, port, identifier=client_id, username=username or None, password=password or None,
                              timeout=30) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)
            summary.messages += 1
            if progress:
                progress(1)
    summary.seconds = time.monotonic() - started
    return summary
