"""Every bad frame is refused by a live hub (real gRPC server with TLS, real HTTP server, real
SQLite) with the precise gRPC / HTTP status, nothing of it is stored, and the hub keeps serving.

Each case is sent over each transport: SubmitBatch, StreamFrames and HTTP POST /v1/frames.
The single-hub tests share one live hub per module (this module's `live_hub` overrides
conftest's: started the same way, but once, so the file stays fast); every test enrols its own sensors and compares
the hub's state before and after, so earlier tests cannot hide or fake a result. Sharing it
also means the "keeps serving" checks run against a hub that has refused every case before.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest
import pytest_asyncio
from conftest import make_hub_dir, start_live_hub
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from ingest_helpers import (
    TRANSPORTS,
    assert_nothing_stored,
    assert_rejected,
    assert_still_serving,
    deliver,
    fresh_readings,
    http_post,
    seal_raw,
    senml_json,
    snapshot,
)

from node import frames, ingest, senml
from node.api.v1 import admin_pb2
from node.app.sensor_client import Sensor
from node.sensors import wrap_key
from node.storage.base import SensorRecord

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture
def live_hub(module_hub):
    return module_hub


@pytest_asyncio.fixture(loop_scope="module")
async def sensor(live_hub, tmp_path):
    return await live_hub.add_sensor(tmp_path, "station")




@pytest_asyncio.fixture(loop_scope="module")
async def other(live_hub, tmp_path) -> Sensor:
    return await live_hub.add_sensor(tmp_path, "neighbour")


def valid_pack() -> bytes:
    """A valid SenML pack (as hand-written plaintext), at a time never used before."""
    a, b = fresh_readings(2)
    return senml_json([{"bt": a.time_ms / 1000, "n": "pm25", "v": 5.3, "u": "ug/m3"},
                       {"n": "temperature", "v": 4.6, "t": (b.time_ms - a.time_ms) / 1000}])


def flip(frame: bytes, index: int) -> bytes:
    b = bytearray(frame)
    b[index] ^= 0x01
    return bytes(b)


@dataclass
class Ctx:
    live: object
    sensor: Sensor
    other: Sensor
    serving: Sensor  # the sensor that proves afterwards that the hub still accepts frames


async def accepted(ctx: Ctx, sealed: bytes) -> None:
    delivery = await deliver(ctx.live, sealed, "batch")
    assert delivery.ok, delivery.message


# -- frame-level cases: each builds (and sets up for) one bad frame -----------------------------

async def flipped_ciphertext_byte(ctx):
    return flip(seal_raw(ctx.sensor, valid_pack()), frames.HEADER_SIZE)


async def flipped_tag_byte(ctx):
    return flip(seal_raw(ctx.sensor, valid_pack()), -1)


async def counter_rewritten_in_header(ctx):
    sealed = seal_raw(ctx.sensor, valid_pack())
    h = frames.parse_header(sealed)
    return frames.FrameHeader(h.hub_id, h.sensor_id, h.counter + 1).pack() + sealed[frames.HEADER_SIZE:]


async def sealed_with_another_sensors_key(ctx):
    return seal_raw(ctx.sensor, valid_pack(), key=ctx.other.credential.key)


async def replayed_frame(ctx):
    sealed = ctx.sensor.seal([fresh_readings(2)])[0]
    await accepted(ctx, sealed)
    return sealed


async def reordered_frame(ctx):
    first, second = ctx.sensor.seal([fresh_readings(2), fresh_readings(2)])
    await accepted(ctx, second)
    return first  # a lower counter after a higher one


async def unknown_sensor(ctx):
    return seal_raw(ctx.sensor, valid_pack(), sensor_id=os.urandom(16), key=os.urandom(32))


def revoked_sensor(sends: str):
    """Revoke the sensor (via the admin RPC) after the hub has cached it as active, then have it
    send a new valid frame, its last accepted frame again, or a frame with bad SenML: whatever a
    revoked sensor sends is refused as revoked."""

    async def build(ctx):
        earlier = ctx.sensor.seal([fresh_readings(2)])[0]
        await accepted(ctx, earlier)
        await ctx.live.admin.RevokeSensor(admin_pb2.RevokeSensorRequest(sensor_id=ctx.sensor.credential.sensor_id),
                                          metadata=ctx.live.admin_metadata)
        ctx.serving = ctx.other
        if sends == "new":
            return ctx.sensor.seal([fresh_readings(2)])[0]
        if sends == "replay":
            return earlier
        return seal_raw(ctx.sensor, b"[]")

    return build


async def too_short(ctx):
    return seal_raw(ctx.sensor, valid_pack())[: frames.HEADER_SIZE + frames.TAG_SIZE - 1]


async def empty_frame(ctx):
    return b""


async def counter_zero(ctx):
    """Correctly sealed under the sensor's key, but with the reserved counter 0."""
    cred = ctx.sensor.credential
    header = frames.HEADER.pack(frames.VERSION, bytes.fromhex(cred.hub_id), bytes.fromhex(cred.sensor_id), 0)
    return header + AESGCM(cred.key).encrypt(frames.nonce_for(0), valid_pack(), frames.AAD_DOMAIN + header)


async def larger_than_max_frame(ctx):
    header = seal_raw(ctx.sensor, valid_pack())[: frames.HEADER_SIZE]
    return header + os.urandom(frames.MAX_FRAME - frames.HEADER_SIZE + 1)


async def too_many_records(ctx):
    # `{}` is a valid (empty) base record, so only the count is wrong.
    return seal_raw(ctx.sensor, b"[" + b",".join([b"{}"] * (senml.MAX_RECORDS + 1)) + b"]")


def _version(v):
    async def build(ctx):
        sealed = bytearray(seal_raw(ctx.sensor, valid_pack()))
        sealed[0] = v
        return bytes(sealed)
    return build


FRAME_CASES = [
    pytest.param(flipped_ciphertext_byte, "authentication_failed", id="flipped-ciphertext-byte"),
    pytest.param(flipped_tag_byte, "authentication_failed", id="flipped-tag-byte"),
    pytest.param(counter_rewritten_in_header, "authentication_failed", id="counter-rewritten-in-header"),
    pytest.param(sealed_with_another_sensors_key, "authentication_failed", id="another-sensors-key"),
    pytest.param(replayed_frame, "replayed", id="replayed"),
    pytest.param(reordered_frame, "replayed", id="reordered"),
    pytest.param(unknown_sensor, "unknown_sensor", id="unknown-sensor"),
    pytest.param(revoked_sensor("new"), "revoked_sensor", id="revoked-sensor"),
    pytest.param(revoked_sensor("replay"), "revoked_sensor", id="revoked-sensor-replaying"),
    pytest.param(revoked_sensor("bad-senml"), "revoked_sensor", id="revoked-sensor-bad-senml"),
    pytest.param(too_short, "malformed_frame", id="too-short"),
    pytest.param(empty_frame, "malformed_frame", id="empty"),
    pytest.param(_version(0x02), "malformed_frame", id="version-0x02"),
    pytest.param(_version(0x00), "malformed_frame", id="version-0x00"),
    pytest.param(counter_zero, "malformed_frame", id="counter-0"),
    pytest.param(larger_than_max_frame, "frame_too_large", id="larger-than-MAX_FRAME"),
    pytest.param(too_many_records, "frame_too_large", id="too-many-senml-records"),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("build, reason", FRAME_CASES)
async def test_bad_frame_is_rejected_and_nothing_stored(live_hub, sensor, other, build, reason, transport):
    ctx = Ctx(live_hub, sensor, other, serving=sensor)
    bad = await build(ctx)
    before = await snapshot(live_hub)

    delivery = await deliver(live_hub, bad, transport)

    assert_rejected(delivery, reason)
    await assert_nothing_stored(live_hub, before, reason)
    await assert_still_serving(live_hub, ctx.serving, transport)


# -- SenML cases: a correctly sealed frame whose plaintext is wrong -----------------------------

OK = b'{"n":"temperature","v":4.6}'  # a valid record, put before some bad ones: it must not be stored either

SENML_CASES = [
    # not SenML at all
    pytest.param(b"pm25=5.3", "malformed_senml", 'not JSON', id="not-json"),
    pytest.param(b'[{"n":"pm25","v":5.3}', "malformed_senml", 'not JSON', id="truncated-json"),
    pytest.param(b'[{"n":"pm25","v":5.3,"u":"\xff"}]', "malformed_senml", 'not JSON', id="not-utf8"),
    pytest.param(b'{"n":"pm25","v":5.3}', "malformed_senml", 'non-empty JSON array', id="object-not-array"),
    pytest.param(b'"pm25"', "malformed_senml", 'non-empty JSON array', id="string-not-array"),
    pytest.param(b"[]", "malformed_senml", 'non-empty JSON array', id="empty-array"),
    pytest.param(b"[" + OK + b",42]", "malformed_senml", 'record 1 is not a JSON object', id="record-is-number"),
    pytest.param(b'[["pm25",5.3]]', "malformed_senml", 'record 0 is not a JSON object', id="record-is-array"),
    # records SenML allows but this hub must refuse
    pytest.param(b"[" + OK + b',{"n":"pm25","vs":"5.3"}]', "malformed_senml", "record 1: 'vs'", id="vs-string-value"),
    pytest.param(b'[{"n":"pm25","vb":true}]', "malformed_senml", "record 0: 'vb'", id="vb-boolean-value"),
    pytest.param(b"[" + OK + b',{"n":"pm25","v":5.3,"foo_":1}]', "malformed_senml", "record 1: must-understand field 'foo_'",
                 id="must-understand-field"),
    pytest.param(b'[{"bn":"","bfoo_":1},{"n":"pm25","v":5.3}]', "malformed_senml", "record 0: must-understand field 'bfoo_'",
                 id="must-understand-base-field"),
    pytest.param(b'[{"bver":99,"n":"pm25","v":5.3}]', "malformed_senml", 'record 0: unsupported SenML version', id="unsupported-bver"),
    # wrongly typed or missing fields
    pytest.param(b"[" + OK + b',{"n":"pm25","v":"5.3"}]', "malformed_senml", "record 1: 'v' must be a number", id="value-is-string"),
    pytest.param(b'[{"n":"pm25","v":true}]', "malformed_senml", "record 0: 'v' must be a number", id="value-is-boolean"),
    pytest.param(b'[{"n":"pm25","v":null}]', "malformed_senml", "record 0: 'v' must be a number", id="value-is-null"),
    pytest.param(b'[{"n":25,"v":5.3}]', "malformed_senml", "record 0: 'n' must be a string", id="name-is-number"),
    pytest.param(b'[{"n":"pm25"}]', "malformed_senml", 'record 0 has no numeric value', id="no-value"),
    pytest.param(b'[{"bn":"pm25"}]', "malformed_senml", 'no readings', id="base-fields-only"),
    # metrics
    pytest.param(b"[" + OK + b',{"n":"pm10","v":5.3}]', "unknown_metric", "record 1: metric 'pm10'", id="metric-not-enrolled"),
    pytest.param(b'[{"n":"co2","v":400}]', "unknown_metric", "record 0: metric 'co2'", id="metric-not-in-catalog"),
    pytest.param(b'[{"bn":"urn:dev:x:","n":"pm25","v":5.3}]', "unknown_metric", "metric 'urn:dev:x:pm25'",
                 id="base-name-makes-unknown-metric"),
    # non-finite numbers
    pytest.param(b"[" + OK + b',{"n":"pm25","v":NaN}]', "non_finite_value", 'NaN', id="NaN-literal"),
    pytest.param(b'[{"n":"pm25","v":Infinity}]', "non_finite_value", 'Infinity', id="Infinity-literal"),
    pytest.param(b'[{"n":"temperature","v":-Infinity}]', "non_finite_value", '-Infinity', id="minus-Infinity-literal"),
    pytest.param(b"[" + OK + b',{"n":"pm25","v":1e400}]', "non_finite_value", "record 1: 'v'", id="1e400"),
    pytest.param(b'[{"n":"temperature","v":-1e400}]', "non_finite_value", "record 0: 'v'", id="minus-1e400"),
    pytest.param(b'[{"n":"pm25","v":1' + b"0" * 400 + b"}]", "non_finite_value", "record 0: 'v'", id="integer-too-large-for-a-float"),
    pytest.param(b'[{"n":"pm25","v":5.3,"t":1e400}]', "non_finite_value", "record 0: 't'", id="time-1e400"),
    pytest.param(b'[{"bt":1' + b"0" * 400 + b',"n":"pm25","v":5.3}]', "non_finite_value", "record 0: 'bt'",
                 id="base-time-integer-too-large"),
    pytest.param(b'[{"bt":Infinity,"n":"pm25","v":5.3}]', "non_finite_value", 'Infinity', id="base-time-Infinity"),
    pytest.param(b'[{"n":"pm25","v":5.3,"x":NaN}]', "non_finite_value", "NaN", id="NaN-in-an-ignored-field"),
    pytest.param(b'[{"bv":NaN,"n":"pm25","v":5.3}]', "non_finite_value", 'NaN', id="base-value-NaN"),
    pytest.param(b'[{"bv":1e308,"n":"pm25","v":1e308}]', "non_finite_value", 'record 0', id="value-plus-base-value-overflows"),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("plaintext, reason, detail", SENML_CASES)
async def test_bad_senml_is_rejected_and_nothing_stored(live_hub, sensor, plaintext, reason, detail, transport):
    sealed = seal_raw(sensor, plaintext)  # authentic, addressed right, fresh counter: only the content is bad
    before = await snapshot(live_hub)

    delivery = await deliver(live_hub, sealed, transport)

    assert_rejected(delivery, reason)
    # The message says which frame and which sensor (the readings are the sensor's business).
    assert delivery.message.startswith("frame 0: ") and sensor.credential.sensor_id in delivery.message
    assert detail in delivery.message  # ... and what is wrong, with the record's index where there is one
    await assert_nothing_stored(live_hub, before, reason)
    await assert_still_serving(live_hub, sensor, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hand_sealed_baseline_is_accepted(live_hub, sensor, transport):
    """The control for the cases above: the hand-built plaintext and seal_raw are valid as such."""
    delivery = await deliver(live_hub, seal_raw(sensor, valid_pack()), transport)
    assert delivery.ok, delivery.message
    assert delivery.stored == 2


# -- size limits -------------------------------------------------------------------------------

def padded_to(plaintext: bytes, size: int) -> bytes:
    assert len(plaintext) <= size
    return plaintext + b" " * (size - len(plaintext))  # JSON allows trailing whitespace


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_frame_of_exactly_max_frame_is_accepted(live_hub, sensor, transport):
    sealed = seal_raw(sensor, padded_to(valid_pack(), frames.MAX_PLAINTEXT))
    assert len(sealed) == frames.MAX_FRAME
    delivery = await deliver(live_hub, sealed, transport)
    assert delivery.ok, delivery.message
    assert delivery.stored == 2


async def trickle(data: bytes, pieces: int = 4, pause: float = 0.05):
    """The body in a few pieces with pauses between them, as a slow link delivers it."""
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        yield data[i : i + step]
        await asyncio.sleep(pause)


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "chunked"])
async def test_http_frame_arriving_in_pieces_is_read_whole(live_hub, sensor, content_length):
    """The hub must read the whole body, not whatever part of it has arrived."""
    sealed = seal_raw(sensor, padded_to(valid_pack(), frames.MAX_PLAINTEXT))
    headers = {"Content-Length": str(len(sealed))} if content_length else {}
    delivery = await http_post(live_hub, trickle(sealed), headers=headers)
    assert delivery.ok, (delivery.http_status, delivery.message)
    assert delivery.stored == 2


async def test_http_oversized_body_without_content_length_is_rejected(live_hub, sensor):
    """Chunked transfer encoding: the hub cannot refuse by Content-Length and must count bytes."""
    sealed = seal_raw(sensor, padded_to(valid_pack(), frames.MAX_PLAINTEXT))
    before = await snapshot(live_hub)
    delivery = await http_post(live_hub, trickle(sealed + b"\x00"))
    assert_rejected(delivery, "frame_too_large")
    await assert_nothing_stored(live_hub, before, "frame_too_large")
    await assert_still_serving(live_hub, sensor, "http")


async def test_batch_over_the_frame_limit_is_rejected(live_hub, sensor):
    limit = ingest.MAX_FRAMES_PER_BATCH
    sealed = sensor.seal([fresh_readings(1) for _ in range(limit + 1)])
    before = await snapshot(live_hub)

    delivery = await deliver(live_hub, sealed, "batch")

    assert_rejected(delivery, "frame_too_large")
    assert str(limit) in delivery.message
    await assert_nothing_stored(live_hub, before, "frame_too_large")
    # The limit is exact, and none of the refused frames was consumed: the first `limit` of them are accepted now.
    delivery = await deliver(live_hub, sealed[:limit], "batch")
    assert delivery.ok, delivery.message
    assert len(delivery.response.receipts) == limit and delivery.stored == limit


# -- frames addressed to another hub ------------------------------------------------------------

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def two_hubs(tmp_path_factory):
    """Hubs A (Stavanger) and B (Sandnes), each in its own data directory; stopped at the end."""
    base = tmp_path_factory.mktemp("two-hubs")
    hub_a = await start_live_hub(make_hub_dir(base / "hub-a", "1103"))
    try:
        hub_b = await start_live_hub(make_hub_dir(base / "hub-b", "1108"))
    except BaseException:
        await hub_a.stop()
        raise
    try:
        yield hub_a, hub_b
    finally:
        await asyncio.gather(hub_a.stop(), hub_b.stop())


def with_hub_id(sealed: bytes, hub_id: bytes) -> bytes:
    h = frames.parse_header(sealed)
    return frames.FrameHeader(hub_id, h.sensor_id, h.counter).pack() + sealed[frames.HEADER_SIZE:]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_frame_for_another_hub_is_refused_and_unreadable(two_hubs, tmp_path, transport):
    hub_a, hub_b = two_hubs
    assert hub_a.hub.identity.hub_id != hub_b.hub.identity.hub_id
    sensor_a = await hub_a.add_sensor(tmp_path, "at-a")
    sensor_b = await hub_b.add_sensor(tmp_path, "at-b")
    for_a = sensor_a.seal([fresh_readings(2)])[0]
    a_before, b_before = await snapshot(hub_a), await snapshot(hub_b)

    # Delivered to the wrong hub: refused as addressed elsewhere; B stores nothing.
    assert_rejected(await deliver(hub_b, for_a, transport), "wrong_hub")
    await assert_nothing_stored(hub_b, b_before, "wrong_hub")

    # B cannot read it: with the hub id rewritten to B's, B has no key for the sensor ...
    rewritten = with_hub_id(for_a, hub_b.hub.identity.hub_id)
    b_before = await snapshot(hub_b)
    assert_rejected(await deliver(hub_b, rewritten, transport), "unknown_sensor")
    await assert_nothing_stored(hub_b, b_before, "unknown_sensor")

    # ... and even if B held the sensor's key, the rewritten frame would not authenticate,
    # because the hub id is part of the associated data.
    await enrol_copy_of(hub_b, sensor_a)
    b_keyed = await snapshot(hub_b)
    assert_rejected(await deliver(hub_b, rewritten, transport), "authentication_failed")
    await assert_nothing_stored(hub_b, b_keyed, "authentication_failed")
    # (Control: the key B now holds is the right one: a frame sealed for B with it is accepted.)
    ok = await deliver(hub_b, seal_raw(sensor_a, valid_pack(), hub_id=hub_b.hub.identity.hub_id), transport)
    assert ok.ok, ok.message

    # A was not touched by any of this, and the original frame is still good at A.
    assert (await snapshot(hub_a)) == a_before
    delivered = await deliver(hub_a, for_a, transport)
    assert delivered.ok, delivered.message
    assert delivered.stored == 2
    await assert_still_serving(hub_b, sensor_b, transport)


async def enrol_copy_of(live, sensor: Sensor) -> None:
    """Give `live` the same sensor id and key as `sensor` (enrolled at another hub), wrapped
    under this hub's key-encryption key, written straight into its storage."""
    ident = live.hub.identity
    sensor_id = bytes.fromhex(sensor.credential.sensor_id)
    record = SensorRecord(
        sensor_id=sensor.credential.sensor_id,
        dataset="air_quality",
        metrics=list(sensor.credential.metrics),
        latitude=58.97,
        longitude=5.73,
        wrapped_key=wrap_key(ident.key_encryption_key, ident.hub_id, sensor_id, sensor.credential.key),
        enrolled_at_ms=0,
    )
    await live.hub.storage.write(lambda s: s.add_sensor(record))
