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
    records: list[dict] = []
    base_ms: int | None = None
    for r in readings:
        if r.time_ms <= RELATIVE_TIME_LIMIT * 1000:
            raise ValueError(f"reading time {r.time_ms} ms is before 1978-07-05, which SenML reads as relative time")
        record: dict = {"n": r.metric, "v": r.value}
        if base_ms is None:
            base_ms = r.time_ms
            record["bt"] = base_ms / 1000
        elif r.time_ms != base_ms:
            record["t"] = (r.time_ms - base_ms) / 1000
        if units and r.metric in units:
            record["u"] = units[r.metric]
        records.append(record)
    return json.dumps(records, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str):
    raise Rejected(Reason.NON_FINITE_VALUE, f"{name} is not a finite number")


def _number(record: dict, key: str, index: int) -> float | None:
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
        last_offset, last_ms = offset, round(when * 1000)
        append((record.n, last_ms, value))
    return rows


def _decode_rows_json(plaintext: bytes, metrics: dict[str, Metric], now: float) -> list[tuple[str, int, float]]:
    """The general decoder: every SenML feature this hub supports, and every rejection.

    Records of the shape sensors send (n, v and optionally u and t, with float values, no
    other field) that pass every check take a fast path; any other record, and any record
    failing a check there, goes through the full validation below, which raises the errors."""
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
    base_name, base_time, base_unit, base_value = "", 0.0, None, 0.0
    readings: list[tuple[str, int, float]] = []
    append = readings.append
    last_offset: float | None = None  # the fast path's last time offset, and its time in ms
    last_ms: int | None = None
    limits = _limits(metrics)
    for index, record in enumerate(records):
        # Fast path: no side effect until the reading is appended; any doubt falls through.
        if type(record) is dict:
            name = record.get("n")
            value = record.get("v")
            given_unit = record.get("u")
            offset = record.get("t")
            # Exactly the fields n and v, and u and t if given: nothing else to check or refuse.
            if (
                type(name) is str
                and type(value) is float
                and len(record) == 2 + (given_unit is not None) + (offset is not None)
            ):
                if base_name:
                    name = base_name + name
                limit = limits.get(name)
                if limit is not None:
                    unit, lowest, highest = limit
                    value += base_value
                    if given_unit is None:
                        given_unit = base_unit
                    if lowest <= value <= highest and (given_unit is None or given_unit == unit):
                        if offset is None or type(offset) is float:
                            # Records of one instant (several metrics) share their time.
                            if last_ms is not None and offset == last_offset:
                                append((name, last_ms, value))
                                continue
                            when = base_time + (offset or 0.0)
                            # A time that fails this (non-finite, relative, out of range) falls through.
                            if RELATIVE_TIME_LIMIT <= when <= LATEST_TIME:
                                last_offset, last_ms = offset, round(when * 1000)
                                append((name, last_ms, value))
                                continue
        # Full validation (the reference behaviour).
        last_ms = None  # it may change the base time
        if not isinstance(record, dict):
            raise Rejected(Reason.MALFORMED_SENML, f"record {index} is not a JSON object")
        for key in record:
            if key.endswith("_"):
                raise Rejected(Reason.MALFORMED_SENML, f"record {index}: must-understand field {key!r} is not supported")
            if key in _UNSUPPORTED_VALUES:
                raise Rejected(Reason.MALFORMED_SENML, f"record {index}: {key!r} is not supported; send numeric values as 'v'")
        if "bver" in record and (not isinstance(record["bver"], int) or isinstance(record["bver"], bool) or record["bver"] > 10):
            raise Rejected(Reason.MALFORMED_SENML, f"record {index}: unsupported SenML version {record['bver']!r}")
        if "bn" in record:
            if not isinstance(record["bn"], str):
                raise Rejected(Reason.MALFORMED_SENML, f"record {index}: 'bn' must be a string")
            base_name = record["bn"]
        if "bu" in record:
            if not isinstance(record["bu"], str):
                raise Rejected(Reason.MALFORMED_SENML, f"record {index}: 'bu' must be a string")
            base_unit = record["bu"]
        base_time = _number(record, "bt", index) if "bt" in record else base_time
        base_value = _number(record, "bv", index) if "bv" in record else base_value
        name = record.get("n", "")
        if not isinstance(name, str):
            raise Rejected(Reason.MALFORMED_SENML, f"record {index}: 'n' must be a string")
        value = _number(record, "v", index)
        if value is None:
            if set(record) <= _BASE_FIELDS:
                continue  # a record of base fields only
            raise Rejected(Reason.MALFORMED_SENML, f"record {index} has no numeric value 'v'")
        metric_name = base_name + name
        metric = metrics.get(metric_name)
        if metric is None:
            raise Rejected(
                Reason.UNKNOWN_METRIC,
                f"record {index}: metric {metric_name!r} is not one this sensor is enrolled for "
                f"({', '.join(metrics)})",
            )
        unit = record.get("u", base_unit)
        if unit is not None and unit != metric.unit:
            raise Rejected(Reason.INVALID_READING, f"record {index}: unit {unit!r} is not {metric.unit!r} for {metric_name}")
        value += base_value
        if not math.isfinite(value):
            raise Rejected(Reason.NON_FINITE_VALUE, f"record {index}: the value is not finite")
        if (metric.minimum is not None and value < metric.minimum) or (metric.maximum is not None and value > metric.maximum):
            raise Rejected(
                Reason.INVALID_READING,
                f"record {index}: {metric_name} = {value} is outside [{metric.minimum}, {metric.maximum}] {metric.unit}",
            )
        when = base_time + (_number(record, "t", index) or 0.0)
        if not math.isfinite(when):
            raise Rejected(Reason.NON_FINITE_VALUE, f"record {index}: the time is not finite")
        if abs(when) < RELATIVE_TIME_LIMIT:
            when += now
        if not 0 <= when <= LATEST_TIME:
            raise Rejected(Reason.INVALID_READING, f"record {index}: time {when} is before 1970 or after 3000")
        append((metric_name, round(when * 1000), value))
    if not readings:
        raise Rejected(Reason.MALFORMED_SENML, "the pack holds no readings")
    return readings
