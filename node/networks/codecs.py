"""Payload codecs the hub runs itself on the bytes it decrypted: no user code is executed.

* `cayenne`: Cayenne LPP (channel, type, value) records; a channel map names the metric of
  each channel ("1" = "temperature").
* `layout`: a declarative byte layout: fields at offsets with a type, a scale and a metric.
* `json`: the payload is a JSON object of metric -> number (for gateways and NB-IoT devices
  that send JSON, and for a network server's decoded `object`).

Every codec returns {metric: value}; ranges and units are the catalog's job (node/senml.py).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

MAX_FIELDS = 64


class CodecError(ValueError):
    pass


# Cayenne LPP type -> (size in bytes, struct format, divisor). Multi-value types (GPS,
# accelerometer, gyrometer) are decoded into `<metric>_<axis>`.
_LPP_TYPES: dict[int, tuple[str, tuple[str, ...], float]] = {
    0: (">B", ("",), 1),  # digital input
    1: (">B", ("",), 1),  # digital output
    2: (">h", ("",), 100),  # analog input, 0.01 signed
    3: (">h", ("",), 100),  # analog output
    101: (">H", ("",), 1),  # illuminance, lux
    102: (">B", ("",), 1),  # presence
    103: (">h", ("",), 10),  # temperature, 0.1 °C signed
    104: (">B", ("",), 2),  # humidity, 0.5 %
    113: (">hhh", ("_x", "_y", "_z"), 1000),  # accelerometer, 0.001 G
    115: (">H", ("",), 10),  # barometer, 0.1 hPa
    134: (">hhh", ("_x", "_y", "_z"), 100),  # gyrometer, 0.01 °/s
}


def decode_cayenne(payload: bytes, channels: dict[int, str]) -> dict[str, float]:
    values: dict[str, float] = {}
    at = 0
    while at < len(payload):
        if at + 2 > len(payload):
            raise CodecError(f"Cayenne LPP: a record header is cut off at byte {at}")
        channel, lpp_type = payload[at], payload[at + 1]
        suffixes: tuple[str, ...]
        divisors: tuple[float, ...]
        unpacked: tuple[int, ...]
        if lpp_type == 136:  # GPS: 3 bytes each, lat/lon 0.0001°, altitude 0.01 m
            size, suffixes, divisors = 9, ("_lat", "_lon", "_alt"), (1e4, 1e4, 100.0)
            raw = payload[at + 2 : at + 2 + size]
            if len(raw) != size:
                raise CodecError(f"Cayenne LPP: channel {channel} GPS value is cut off")
            unpacked = tuple(int.from_bytes(raw[i : i + 3], "big", signed=True) for i in (0, 3, 6))
        elif lpp_type in _LPP_TYPES:
            fmt, suffixes, divisor = _LPP_TYPES[lpp_type]
            size = struct.calcsize(fmt)
            raw = payload[at + 2 : at + 2 + size]
            if len(raw) != size:
                raise CodecError(f"Cayenne LPP: channel {channel} value of type {lpp_type} is cut off")
            unpacked = struct.unpack(fmt, raw)
            divisors = (divisor,) * len(suffixes)
        else:
            raise CodecError(f"Cayenne LPP: unknown type {lpp_type} on channel {channel}")
        metric = channels.get(channel)
        if metric is None:
            raise CodecError(f"Cayenne LPP: channel {channel} is not mapped to a metric in the device's codec")
        for suffix, value, div in zip(suffixes, unpacked, divisors, strict=True):
            name = metric + suffix
            if name in values:
                raise CodecError(f"Cayenne LPP: metric {name!r} appears twice in one payload")
            values[name] = value / div
        at += 2 + size
    if not values:
        raise CodecError("Cayenne LPP: the payload is empty")
    return values


_FIELD_TYPES = {
    "uint8": ">B", "int8": ">b", "uint16be": ">H", "int16be": ">h", "uint16le": "<H", "int16le": "<h",
    "uint32be": ">I", "int32be": ">i", "uint32le": "<I", "int32le": "<i", "float32be": ">f", "float32le": "<f",
}


@dataclass(frozen=True)
class LayoutField:
    metric: str
    offset: int
    type: str
    scale: float = 1.0
    add: float = 0.0


def decode_layout(payload: bytes, fields: tuple[LayoutField, ...]) -> dict[str, float]:
    values: dict[str, float] = {}
    for f in fields:
        fmt = _FIELD_TYPES[f.type]
        end = f.offset + struct.calcsize(fmt)
        if end > len(payload):
            raise CodecError(f"field {f.metric!r} needs bytes {f.offset}..{end - 1}; the payload has {len(payload)}")
        (raw,) = struct.unpack_from(fmt, payload, f.offset)
        value = raw * f.scale + f.add
        if not math.isfinite(value):
            raise CodecError(f"field {f.metric!r} is not a finite number")
        values[f.metric] = value
    return values


def decode_json_object(payload: bytes | dict[str, object]) -> dict[str, float]:
    try:
        doc = json.loads(payload) if isinstance(payload, bytes | bytearray) else payload
    except (ValueError, UnicodeDecodeError):
        raise CodecError("the payload is not a JSON object") from None
    if not isinstance(doc, dict) or not doc:
        raise CodecError("the payload is not a non-empty JSON object of metric -> number")
    values: dict[str, float] = {}
    for key, value in doc.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"value of {key!r} is not a number")
        values[str(key)] = float(value)
    return values


@dataclass(frozen=True)
class Codec:
    name: str
    kind: str  # cayenne | layout | json
    channels: dict[int, str] = field(default_factory=dict)
    fields: tuple[LayoutField, ...] = ()

    def decode(self, payload: bytes) -> dict[str, float]:
        if self.kind == "cayenne":
            return decode_cayenne(payload, self.channels)
        if self.kind == "layout":
            return decode_layout(payload, self.fields)
        return decode_json_object(payload)


CODEC_KINDS = ("cayenne", "layout", "json")


def codec_from_config(name: str, raw: dict[str, object]) -> Codec:
    """A codec from its networks.toml table; raise CodecError naming the problem."""
    kind = raw.get("kind")
    where = f"codec {name!r}"
    if kind not in CODEC_KINDS:
        raise CodecError(f"{where}: kind must be one of {', '.join(CODEC_KINDS)}; got {kind!r}")
    if kind == "cayenne":
        raw_channels = raw.get("channels")
        if not isinstance(raw_channels, dict) or not raw_channels:
            raise CodecError(f'{where}: give channels = {{ "1" = "metric", ... }}')
        channels: dict[int, str] = {}
        for key, metric in raw_channels.items():
            if not str(key).isdigit() or not 0 <= int(key) <= 255 or not isinstance(metric, str):
                raise CodecError(f"{where}: channel {key!r} must be 0..255 mapped to a metric name")
            channels[int(key)] = metric
        return Codec(name, "cayenne", channels=channels)
    if kind == "layout":
        raw_fields = raw.get("fields")
        if not isinstance(raw_fields, list) or not 0 < len(raw_fields) <= MAX_FIELDS:
            raise CodecError(f"{where}: give 1..{MAX_FIELDS} fields = [ {{ metric, offset, type, scale }} ]")
        fields: list[LayoutField] = []
        for item in raw_fields:
            if not isinstance(item, dict):
                raise CodecError(f"{where}: each field is a table")
            extra = set(item) - {"metric", "offset", "type", "scale", "add"}
            metric, offset, ftype = item.get("metric"), item.get("offset"), item.get("type")
            scale, add = item.get("scale", 1.0), item.get("add", 0.0)
            if extra or not isinstance(metric, str) or not isinstance(offset, int) or not 0 <= offset < 242:
                raise CodecError(f"{where}: field {item!r} needs metric (text) and offset (0..241) and nothing unknown")
            if ftype not in _FIELD_TYPES:
                raise CodecError(f"{where}: field {metric!r} type must be one of {', '.join(_FIELD_TYPES)}")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (scale, add)):
                raise CodecError(f"{where}: field {metric!r} scale and add must be finite numbers")
            fields.append(LayoutField(metric, offset, str(ftype), float(scale), float(add)))
        return Codec(name, "layout", fields=tuple(fields))
    return Codec(name, "json")


BUILTIN_CODECS = {"json": Codec("json", "json")}
