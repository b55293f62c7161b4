"""The network servers' message formats, turned into `Uplink`s (or sealed frames).

* ChirpStack v4 integration `up` events, JSON (protobuf's JSON mapping) or Protobuf, decoded
  with the `chirpstack-api` package's `integration.UplinkEvent`.
* The Things Stack v3 application uplinks (JSON, as its MQTT server and webhooks send them).
* Lab5e Span data messages (JSON; `payload` base64): the payload is a sealed smartregion frame.

Each parser raises `EventError` for a message that is not of its format; the door refuses it as
`malformed_uplink`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable

from chirpstack_api.integration import integration_pb2
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from node.networks import lorawan
from node.networks.uplink import KeyEnvelope, Uplink

MAX_EVENT_BYTES = 64 * 1024  # a ChirpStack event with rx metadata of many gateways is a few KiB


class EventError(ValueError):
    pass


def _time_ms(text: object, fallback_ms: int) -> int:
    if not isinstance(text, str) or not text:
        return fallback_ms
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EventError(f"time {text!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise EventError(f"time {text!r} has no time zone")
    return int(parsed.timestamp() * 1000)


def _chirpstack_uplink(event: integration_pb2.UplinkEvent, now_ms: int) -> Uplink:
    if not event.device_info.dev_eui:
        raise EventError("the event has no deviceInfo.devEui")
    envelope = None
    if event.HasField("join_server_context") and event.join_server_context.HasField("app_s_key"):
        key = event.join_server_context.app_s_key
        envelope = KeyEnvelope(key.kek_label, bytes(key.aes_key), event.join_server_context.session_key_id)
    try:
        dev_eui = lorawan.normalise_eui(event.device_info.dev_eui)
        dev_addr = lorawan.parse_dev_addr(event.dev_addr) if event.dev_addr else None
    except lorawan.LorawanError as exc:
        raise EventError(str(exc)) from None
    time_ms = event.time.ToMilliseconds() if event.HasField("time") else now_ms
    decoded = json_format.MessageToDict(event.object) if event.HasField("object") else None
    return Uplink("chirpstack", dev_eui, event.f_cnt, event.f_port, bytes(event.data), time_ms, dev_addr, envelope, decoded)


def chirpstack_json(body: bytes, now_ms: int) -> Uplink:
    event = integration_pb2.UplinkEvent()
    try:
        json_format.Parse(body, event, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
        raise EventError(f"not a ChirpStack uplink event (JSON): {exc}") from None
    return _chirpstack_uplink(event, now_ms)


def chirpstack_protobuf(body: bytes, now_ms: int) -> Uplink:
    event = integration_pb2.UplinkEvent()
    try:
        event.ParseFromString(body)
    except DecodeError as exc:
        raise EventError(f"not a ChirpStack uplink event (Protobuf): {exc}") from None
    return _chirpstack_uplink(event, now_ms)


def _json_object(body: bytes, what: str) -> dict[str, object]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise EventError(f"not a {what} message: the body is not JSON") from None
    if not isinstance(doc, dict):
        raise EventError(f"not a {what} message: the body is not a JSON object")
    return doc


def _b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise EventError(f"{where} is not a base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EventError(f"{where} is not valid base64") from None


def _uint(value: object, where: str, default: int | None = None) -> int:
    if value is None and default is not None:
        return default  # TTS omits zero values ("Empty fields are omitted")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise EventError(f"{where} is not an unsigned 32-bit integer")
    return value


def tts_json(body: bytes, now_ms: int) -> Uplink:
    doc = _json_object(body, "The Things Stack uplink")
    ids, up = doc.get("end_device_ids"), doc.get("uplink_message")
    if not isinstance(ids, dict) or not isinstance(up, dict):
        raise EventError("not a The Things Stack uplink: needs end_device_ids and uplink_message")
    try:
        dev_eui = lorawan.normalise_eui(str(ids.get("dev_eui", "")))
        dev_addr = lorawan.parse_dev_addr(str(ids["dev_addr"])) if ids.get("dev_addr") else None
    except lorawan.LorawanError as exc:
        raise EventError(str(exc)) from None
    envelope = None
    raw_key = up.get("app_s_key")
    if isinstance(raw_key, dict) and raw_key.get("encrypted_key"):
        envelope = KeyEnvelope(str(raw_key.get("kek_label", "")), _b64(raw_key["encrypted_key"], "app_s_key.encrypted_key"),
                               str(up.get("session_key_id", "")))
    payload = _b64(up["frm_payload"], "uplink_message.frm_payload") if "frm_payload" in up else b""
    decoded = up.get("decoded_payload")
    return Uplink(
        "tts", dev_eui, _uint(up.get("f_cnt"), "f_cnt", 0), _uint(up.get("f_port"), "f_port", 0), payload,
        _time_ms(up.get("received_at") or doc.get("received_at"), now_ms), dev_addr, envelope,
        decoded if isinstance(decoded, dict) else None,
    )


def span_frame(body: bytes) -> bytes:
    """The sealed frame inside a Span data message (its base64 `payload`)."""
    doc = _json_object(body, "Span")
    if doc.get("type", "data") != "data":
        raise EventError(f"a Span {doc.get('type')!r} message carries no data")
    device = doc.get("device")
    if not isinstance(device, dict):
        raise EventError("not a Span data message: no device")
    return _b64(doc.get("payload"), "payload")


def is_span_keepalive(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("type") == "keepalive"


UPLINK_PARSERS: dict[tuple[str, str], Callable[[bytes, int], Uplink]] = {
    ("chirpstack", "json"): chirpstack_json,
    ("chirpstack", "protobuf"): chirpstack_protobuf,
    ("tts", "json"): tts_json,
}
