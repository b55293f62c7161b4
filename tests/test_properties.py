"""Property tests (hypothesis): SenML and sealed frames round-trip, tampering is always
detected, and the hub's SenML decoder fails only with `Rejected`, whatever it is given."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from node import frames, senml
from node.catalog import DATASETS
from node.errors import Rejected

AIR = DATASETS["air_quality"].metrics
UNITS = {name: m.unit for name, m in AIR.items()}
NOW = 1_700_000_000.0  # a fixed "now" for relative SenML times
LATEST_MS = int(senml.LATEST_TIME * 1000)
# RFC 8428: a time below 2**28 s (1978-07-04) is relative to "now", so absolute times are
# representable in SenML only from there on (plus a second: base time + offset is computed
# in floating point, and a time right at the limit can land just below it).
EARLIEST_ABSOLUTE_MS = senml.RELATIVE_TIME_LIMIT * 1000 + 1000

# Applied per test (not as a global profile, which would change other modules' settings).
PROPERTY = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


def reading_of(metric: str, min_ms: int = EARLIEST_ABSOLUTE_MS):
    m = AIR[metric]
    values = st.floats(min_value=m.minimum, max_value=m.maximum, allow_nan=False, allow_infinity=False)
    return st.builds(senml.Reading, st.just(metric), st.integers(min_ms, LATEST_MS), values)


readings = st.sampled_from(sorted(AIR)).flatmap(reading_of)
reading_lists = st.lists(readings, min_size=1, max_size=40)


# -- SenML round trip -------------------------------------------------------------------


@PROPERTY
@given(reading_lists, st.booleans())
@example([senml.Reading("pm25", EARLIEST_ABSOLUTE_MS, -0.0)], True)
@example([senml.Reading("rain", LATEST_MS, 500.0), senml.Reading("rain", EARLIEST_ABSOLUTE_MS, 0.0)], False)
@example([senml.Reading("temperature", 1546300800001, 5e-324)], True)
def test_senml_round_trips_valid_readings(batch, with_units):
    encoded = senml.encode(batch, UNITS if with_units else None)
    assert senml.decode(encoded, AIR, now=NOW) == batch


@PROPERTY
@given(reading_lists)
def test_senml_decoding_does_not_depend_on_now_for_absolute_times(batch):
    encoded = senml.encode(batch, UNITS)
    assert senml.decode(encoded, AIR, now=NOW) == senml.decode(encoded, AIR, now=NOW + 12345.678)


@settings(PROPERTY, max_examples=50)
@given(st.lists(st.sampled_from(sorted(AIR)).flatmap(lambda m: reading_of(m, min_ms=0)), min_size=1, max_size=10))
@example([senml.Reading("pm25", 0, 1.0)])
@example([senml.Reading("no2", 451_583_999_520, 0.0), senml.Reading("no2", 268_435_456_000, 0.0)])  # exactly 2**28 s
def test_senml_round_trips_times_from_1970(batch):
    try:
        encoded = senml.encode(batch, UNITS)
    except ValueError:
        return  # refusing an unrepresentable time is a correct answer
    assert senml.decode(encoded, AIR, now=NOW) == batch


# -- sealed frames ----------------------------------------------------------------------

keys = st.binary(min_size=frames.KEY_SIZE, max_size=frames.KEY_SIZE)
ids16 = st.binary(min_size=16, max_size=16)
counters = st.integers(1, frames.MAX_COUNTER)
headers = st.builds(frames.FrameHeader, ids16, ids16, counters)
plaintexts = st.binary(max_size=2048)


@PROPERTY
@given(keys, headers, plaintexts)
@example(b"\x00" * 32, frames.FrameHeader(b"\x00" * 16, b"\xff" * 16, frames.MAX_COUNTER), b"")
def test_frames_round_trip(key, header, plaintext):
    sealed = frames.seal(key, header, plaintext)
    assert len(sealed) == frames.HEADER_SIZE + len(plaintext) + frames.TAG_SIZE
    assert frames.parse_header(sealed) == header
    assert frames.open_frame(key, sealed) == (header, plaintext)


@PROPERTY
@given(keys, headers, plaintexts, st.data())
def test_flipping_any_bit_of_a_frame_is_detected(key, header, plaintext, data):
    sealed = frames.seal(key, header, plaintext)
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1), label="bit")
    tampered = bytearray(sealed)
    tampered[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((frames.InvalidTag, frames.FrameError)):
        frames.open_frame(key, bytes(tampered))


@PROPERTY
@given(keys, headers, st.binary(max_size=64), st.data())
def test_every_bit_of_a_short_frame_is_covered(key, header, plaintext, data):
    """Exhaustively, for short frames: no single-bit change goes unnoticed."""
    sealed = frames.seal(key, header, plaintext)
    for bit in range(len(sealed) * 8):
        tampered = bytearray(sealed)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((frames.InvalidTag, frames.FrameError)):
            frames.open_frame(key, bytes(tampered))


@PROPERTY
@given(keys, keys, headers, plaintexts)
def test_a_frame_does_not_open_under_another_key(key, other, header, plaintext):
    assume(key != other)
    with pytest.raises(frames.InvalidTag):
        frames.open_frame(other, frames.seal(key, header, plaintext))


@PROPERTY
@given(keys, headers, plaintexts, st.data())
def test_a_truncated_or_extended_frame_is_detected(key, header, plaintext, data):
    sealed = frames.seal(key, header, plaintext)
    cut = data.draw(st.integers(0, len(sealed) - 1), label="cut")
    with pytest.raises((frames.InvalidTag, frames.FrameError)):
        frames.open_frame(key, sealed[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=16), label="extra")
    with pytest.raises((frames.InvalidTag, frames.FrameError)):
        frames.open_frame(key, sealed + extra)


# -- the decoder only ever rejects ------------------------------------------------------

SENML_KEYS = ["bn", "bt", "bu", "bv", "bver", "n", "v", "t", "u", "ut", "vs", "vb", "vd", "s", "bs", "x_", "bt_"]
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)  # beyond a float
    | st.integers(max_value=-(10**300), min_value=-(10**400))
    | st.floats()  # NaN and infinities too: json.dumps writes them as NaN/Infinity
    | st.sampled_from([2**28 - 1, 2**28, senml.LATEST_TIME, 1e308, -1e308, 5e-324, 0, -0.0])
    | st.sampled_from(sorted(AIR) + sorted(set(UNITS.values())) + ["", "pm", "25"])
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
senml_records = st.dictionaries(st.sampled_from(SENML_KEYS) | st.text(max_size=4), json_values | json_leaves, max_size=6)
senml_packs = st.lists(senml_records | json_values, max_size=8) | json_values


def decode_only_rejects(plaintext: bytes) -> None:
    try:
        result = senml.decode(plaintext, AIR, now=NOW)
    except Rejected:
        return
    # If it was accepted, it must be a list of valid readings.
    assert result and all(isinstance(r, senml.Reading) for r in result)
    for r in result:
        metric = AIR[r.metric]
        assert math.isfinite(r.value) and metric.minimum <= r.value <= metric.maximum
        assert 0 <= r.time_ms <= LATEST_MS


@PROPERTY
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xff\xfe[\x00")
@example(b"[" * 100_000)
@example(b"NaN")
@example(b'[{"n":"pm25","v":1e999}]')
def test_decode_of_arbitrary_bytes_only_rejects(data):
    decode_only_rejects(data)


@PROPERTY
@given(senml_packs)
@example([{"n": "pm25", "v": 10**400}])
@example([{"n": "pm25", "v": 1, "bt": -(10**400)}])
@example([{"bver": 10**400, "n": "pm25", "v": 1}])
@example([{"n": "pm25", "v": 1, "t": 1e308, "bt": 1e308}])
@example([{"bv": 1e308, "n": "pm25", "v": 1e308}])
@example([{"n": "pm25", "v": 1, "u": ["ug/m3"]}])
@example([{"n": "pm25", "v": 1, "u": {"x": 1}}])
@example([{"bn": "pm", "n": "25", "v": 1.5}])
def test_decode_of_arbitrary_json_only_rejects(pack):
    decode_only_rejects(json.dumps(pack).encode())


@PROPERTY
@given(st.lists(st.fixed_dictionaries(
    {"n": st.sampled_from(sorted(AIR)), "v": st.floats() | st.integers()},
    optional={"t": st.floats() | st.integers(), "bt": st.floats() | st.integers(), "u": st.sampled_from(sorted(set(UNITS.values()))),
              "bv": st.floats(), "bn": st.sampled_from(["", "pm"])},
), min_size=1, max_size=10))
def test_decode_of_near_valid_senml_only_rejects(pack):
    decode_only_rejects(json.dumps(pack).encode())
