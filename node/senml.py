"""SenML (RFC 8428) JSON for sensor readings: encode on the sensor, strict decode at the hub.

Supported: base name `bn`, base time `bt`, base unit `bu`, base value `bv`, version `bver`;
records with name `n`, numeric value `v`, time `t`, unit `u`. Times are seconds since the UNIX
epoch (UTC); per RFC 8428 a resolved time below 2**28 is relative to "now" at the hub. Other
value kinds (`vs`, `vb`, `vd`, `s`) and any must-understand field (ending in `_`) are refused.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import msgspec

from node.catalog import Metric
from node.errors import Reason, Rejected

MAX_RECORDS = 10_000
RELATIVE_TIME_LIMIT = 2**28
LATEST_TIME = 32503680000.0  # year 3000: anything later is a clock or encoding error
_BASE_FIELDS = {"bn", "bt", "bu", "bv", "bver"}
_RECORD_FIELDS = {"n", "v", "t", "u", "ut"}
_UNSUPPORTED_VALUES = {"vs", "vb", "vd", "s", "bs"}
_FLOAT_MAX = sys.float_info.max


@dataclass(frozen=True)
class Reading:
    metric: str
    time_ms: int
    value: float


def encode(readings: Iterable[Reading], units: dict[str, str] | None = None) -> bytes:
    """Compact SenML: the first record carries the base time, the rest are offsets from it.

    Times before 1978-07-05 cannot be sent: RFC 8428 reads a resolved time below 2**28 s as
    relative to "now", so the hub would silently re-date them."""
    records: list[dict[str, Any]] = []
    base_ms: int | None = None
    for r in readings:
        if r.time_ms <= RELATIVE_TIME_LIMIT * 1000:
            raise ValueError(f"reading time {r.time_ms} ms is before 1978-07-05, which SenML reads as relative time")
        record: dict[str, Any] = {"n": r.metric, "v": r.value}
        if base_ms is None:
            base_ms = r.time_ms
            record["bt"] = base_ms / 1000
        elif r.time_ms != base_ms:
            record["t"] = (r.time_ms - base_ms) / 1000
        if units and r.metric in units:
            record["u"] = units[r.metric]
        records.append(record)
    return json.dumps(records, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str) -> NoReturn:
    raise Rejected(Reason.NON_FINITE_VALUE, f"{name} is not a finite number")


def _number(record: dict[str, Any], key: str, index: int) -> float | None:
    if key not in record:
        return None
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(Reason.MALFORMED_SENML, f"record {index}: {key!r} must be a number")
    try:
        value = float(value)
    except OverflowError:  # an integer literal too large for a double, e.g. 1 followed by 400 zeros
        raise Rejected(Reason.NON_FINITE_VALUE, f"record {index}: {key!r} is too large to be finite") from None
    if not math.isfinite(value):
        raise Rejected(Reason.NON_FINITE_VALUE, f"record {index}: {key!r} is not finite")
    return value


def decode(plaintext: bytes, metrics: dict[str, Metric], now: float) -> list[Reading]:
    """Parse and validate; every problem raises Rejected with the record's index."""
    return [Reading(metric, time_ms, value) for metric, time_ms, value in decode_rows(plaintext, metrics, now)]


class _Record(msgspec.Struct, forbid_unknown_fields=True):
    """The record shape sensors send. UNSET (not None) marks an absent field, so an explicit
    null is refused here and left to the general decoder to reject."""

    n: str
    v: float
    t: float | msgspec.UnsetType = msgspec.UNSET
    u: str | msgspec.UnsetType = msgspec.UNSET
    bt: float | msgspec.UnsetType = msgspec.UNSET


_TYPED = msgspec.json.Decoder(list[_Record])


def _limits(metrics: dict[str, Metric]) -> dict[str, tuple[str, float, float]]:
    """metric name -> (unit, lowest, highest); an open bound is the largest float, so a range
    check that passes also proves the value finite (inf and nan fail it)."""
    return {
        name: (m.unit, -_FLOAT_MAX if m.minimum is None else m.minimum, _FLOAT_MAX if m.maximum is None else m.maximum)
        for name, m in metrics.items()
    }


def decode_rows(plaintext: bytes, metrics: dict[str, Metric], now: float) -> list[tuple[str, int, float]]:
    """decode(), returning each reading as a (metric, time_ms, value) tuple: what the hub stores.

    The common case is decoded by msgspec straight into typed records (in C); a pack it does
    not fit, or one failing any check there, is decided by the general decoder below."""
    rows = _decode_typed(plaintext, metrics)
    return rows if rows is not None else _decode_rows_json(plaintext, metrics, now)


def _decode_typed(plaintext: bytes, metrics: dict[str, Metric]) -> list[tuple[str, int, float]] | None:
    """Readings of a pack of plain records, or None if anything is unusual (no side effects)."""
    try:
        records = _TYPED.decode(plaintext)
    except (msgspec.DecodeError, UnicodeDecodeError):  # another shape, or not (UTF-8) JSON at all
        return None
    if not records or len(records) > MAX_RECORDS:
        return None
    limits = _limits(metrics)
    rows: list[tuple[str, int, float]] = []
    append = rows.append
    base_time = 0.0
    last_offset: object = None  # records of one instant (several metrics) share their time
    last_ms: int | None = None
    unset = msgspec.UNSET
    for record in records:
        if record.bt is not unset:
            base_time, last_ms = record.bt, None
        limit = limits.get(record.n)
        if limit is None:
            return None
        unit, lowest, highest = limit
        value = record.v + 0.0  # as the general decoder (adding a base value) does: -0.0 becomes 0.0
        if not lowest <= value <= highest or (record.u is not unset and record.u != unit):
            return None
        offset = 0.0 if record.t is unset else record.t
        if last_ms is not None and offset == last_offset:
            append((record.n, last_ms, value))
            continue
        when = base_time + offset
        if not RELATIVE_TIME_LIMIT <= when <= LATEST_TIME:  # relative, non-finite or out of range
            return None
        last_offset, last_ms = offset, time_ms(when)
        append((record.n, last_ms, value))
    return rows


def time_ms(seconds: float) -> int:
    """The rounding rule (docs/protocol.md): a time in seconds becomes whole milliseconds
    rounded half up (as sensor firmware does), not half to even as Python's round()."""
    return math.floor(seconds * 1000 + 0.5)


def _load_pack(plaintext: bytes) -> list[Any]:
    """The pack as a list of JSON values, or Rejected."""
    try:
        records = json.loads(plaintext, parse_constant=_reject_constant)
    except Rejected:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Rejected(Reason.MALFORMED_SENML, f"not JSON: {exc}") from None
    if not isinstance(records, list) or not records:
        raise Rejected(Reason.MALFORMED_SENML, "a SenML pack is a non-empty JSON array of records")
    if len(records) > MAX_RECORDS:
        raise Rejected(Reason.FRAME_TOO_LARGE, f"{len(records)} records exceed the limit of {MAX_RECORDS}")
    return records


@dataclass
class _Base:
    """The base fields in force (RFC 8428 section 4.1), and the last reading's time for
    records of one instant (several metrics), which share their time offset."""

    name: str = ""
    time: float = 0.0
    unit: str | None = None
    value: float = 0.0
    last_offset: float | None = None
    last_ms: int | None = None


def _fast_reading(record: object, base: _Base, limits: dict[str, tuple[str, float, float]]) -> tuple[str, int, float] | None:
    """The reading of a record of the shape sensors send (n, v with a float value, and u and t
    if given, nothing else) when it passes every check; None when in any doubt (no side
    effect then), for the full validation to decide."""
    if type(record) is not dict:
        return None
    name, value, unit, offset = record.get("n"), record.get("v"), record.get("u"), record.get("t")
    if type(name) is not str or type(value) is not float or len(record) != 2 + (unit is not None) + (offset is not None):
        return None
    if offset is not None and type(offset) is not float:
        return None
    name = base.name + name
    limit = limits.get(name)
    if limit is None:
        return None
    expected_unit, lowest, highest = limit
    value += base.value
    unit = base.unit if unit is None else unit
    if not lowest <= value <= highest or (unit is not None and unit != expected_unit):
        return None
    if base.last_ms is not None and offset == base.last_offset:
        return name, base.last_ms, value
    when = base.time + (offset or 0.0)
    if not RELATIVE_TIME_LIMIT <= when <= LATEST_TIME:  # non-finite, relative or out of range
        return None
    base.last_offset, base.last_ms = offset, time_ms(when)
    return name, base.last_ms, value


def _text(record: dict[str, Any], key: str, index: int) -> str | None:
    """A text field: absent gives None; present, it must be a string (JSON null is refused)."""
    if key not in record:
        return None
    value = record[key]
    if not isinstance(value, str):
        raise Rejected(Reason.MALFORMED_SENML, f"record {index}: {key!r} must be a string, not {json.dumps(value)[:40]}")
    return value


def _check_fields(record: object, index: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise Rejected(Reason.MALFORMED_SENML, f"record {index} is not a JSON object")
    for key in record:
        if key.endswith("_"):
            raise Rejected(Reason.MALFORMED_SENML, f"record {index}: must-understand field {key!r} is not supported")
        if key in _UNSUPPORTED_VALUES:
            raise Rejected(Reason.MALFORMED_SENML, f"record {index}: {key!r} is not supported; send numeric values as 'v'")
    version = record.get("bver")
    if "bver" in record and (not isinstance(version, int) or isinstance(version, bool) or version > 10):
        raise Rejected(Reason.MALFORMED_SENML, f"record {index}: unsupported SenML version {version!r}")
    return record


def _apply_base_fields(record: dict[str, Any], index: int, base: _Base) -> None:
    base_name, base_unit = _text(record, "bn", index), _text(record, "bu", index)
    if base_name is not None:
        base.name = base_name
    if base_unit is not None:
        base.unit = base_unit
    base_time, base_value = _number(record, "bt", index), _number(record, "bv", index)
    if base_time is not None:
        base.time = base_time
    if base_value is not None:
        base.value = base_value
    base.last_ms = None  # the base time may have changed


def _checked_value(record: dict[str, Any], index: int, metric_name: str, metric: Metric, raw: float, base: _Base) -> float:
    unit = _text(record, "u", index)
    unit = base.unit if unit is None else unit
    if unit is not None and unit != metric.unit:
        raise Rejected(Reason.INVALID_READING, f"record {index}: unit {unit!r} is not {metric.unit!r} for {metric_name}")
    value = raw + base.value
    if not math.isfinite(value):
        raise Rejected(Reason.NON_FINITE_VALUE, f"record {index}: the value is not finite")
    if (metric.minimum is not None and value < metric.minimum) or (metric.maximum is not None and value > metric.maximum):
        raise Rejected(
            Reason.INVALID_READING,
            f"record {index}: {metric_name} = {value} is outside [{metric.minimum}, {metric.maximum}] {metric.unit}",
        )
    return value


def _checked_time(record: dict[str, Any], index: int, base: _Base, now: float) -> int:
    when = base.time + (_number(record, "t", index) or 0.0)
    if not math.isfinite(when):
        raise Rejected(Reason.NON_FINITE_VALUE, f"record {index}: the time is not finite")
    if abs(when) < RELATIVE_TIME_LIMIT:
        when += now
    if not 0 <= when <= LATEST_TIME:
        raise Rejected(Reason.INVALID_READING, f"record {index}: time {when} is before 1970 or after 3000")
    return time_ms(when)


def _full_reading(record: object, index: int, base: _Base, metrics: dict[str, Metric], now: float) -> tuple[str, int, float] | None:
    """The reference behaviour: every check, every rejection. None for a base-fields-only record."""
    checked = _check_fields(record, index)
    _apply_base_fields(checked, index, base)
    name = _text(checked, "n", index) or ""
    raw = _number(checked, "v", index)
    if raw is None:
        if set(checked) <= _BASE_FIELDS:
            return None
        raise Rejected(Reason.MALFORMED_SENML, f"record {index} has no numeric value 'v'")
    metric_name = base.name + name
    metric = metrics.get(metric_name)
    if metric is None:
        raise Rejected(
            Reason.UNKNOWN_METRIC,
            f"record {index}: metric {metric_name!r} is not one this sensor is enrolled for ({', '.join(metrics)})",
        )
    value = _checked_value(checked, index, metric_name, metric, raw, base)
    return metric_name, _checked_time(checked, index, base, now), value


def _decode_rows_json(plaintext: bytes, metrics: dict[str, Metric], now: float) -> list[tuple[str, int, float]]:
    """The general decoder: every SenML feature this hub supports, and every rejection.

    A record of the shape sensors send that passes every check takes the fast path; any other
    record, and any failing a check there, goes through the full validation, which raises."""
    records = _load_pack(plaintext)
    base = _Base()
    limits = _limits(metrics)
    readings: list[tuple[str, int, float]] = []
    for index, record in enumerate(records):
        reading = _fast_reading(record, base, limits) or _full_reading(record, index, base, metrics, now)
        if reading is not None:
            readings.append(reading)
    if not readings:
        raise Rejected(Reason.MALFORMED_SENML, "the pack holds no readings")
    return readings
