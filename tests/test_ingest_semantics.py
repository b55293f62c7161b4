"""Ingest semantics through a live hub: SubmitBatch is all-or-nothing, StreamFrames commits
every frame before the first bad one, re-sent readings are stored once, and a frame raced
against itself is accepted exactly once.

The tests share one live hub (this module's `live_hub` overrides conftest's: started the
same way, once per module); each enrols its own sensor and compares before and after.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import pytest_asyncio
from ingest_helpers import (
    TRANSPORTS,
    assert_nothing_stored,
    assert_rejected,
    deliver,
    fresh_readings,
    seal_raw,
    snapshot,
)

from node import frames, ingest

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture
def live_hub(module_hub):
    return module_hub


@pytest_asyncio.fixture(loop_scope="module")
async def sensor(live_hub, tmp_path):
    return await live_hub.add_sensor(tmp_path, "station")




def counter_of(sealed: bytes) -> int:
    return frames.parse_header(sealed).counter


def flipped(sealed: bytes) -> bytes:
    b = bytearray(sealed)
    b[frames.HEADER_SIZE] ^= 0x01
    return bytes(b)


def rows_of(sensor, readings) -> set:
    return {(sensor.credential.sensor_id, r.metric, r.time_ms, r.value) for r in readings}


# -- SubmitBatch: all or nothing ---------------------------------------------------------------

def bad_auth(sensor, first):
    return flipped(sensor.seal([fresh_readings(2)])[0])


def bad_senml(sensor, first):
    return seal_raw(sensor, b'[{"n":"pm25","v":5.3},{"n":"pm25","v":NaN}]')


def bad_metric(sensor, first):
    return seal_raw(sensor, b'[{"n":"no2","v":5.3}]')


def same_frame_again(sensor, first):
    return first


def lower_counter(sensor, first):
    # Sealed correctly, but under a counter below the batch's first frame.
    return seal_raw(sensor, b'[{"n":"pm25","v":5.3}]', counter=counter_of(first) - 1)


def other_hub(sensor, first):
    return seal_raw(sensor, b'[{"n":"pm25","v":5.3}]', hub_id=os.urandom(16))


@pytest.mark.parametrize(
    "make_bad, reason",
    [
        pytest.param(bad_auth, "authentication_failed", id="authentication"),
        pytest.param(bad_senml, "non_finite_value", id="senml"),
        pytest.param(bad_metric, "unknown_metric", id="metric"),
        pytest.param(same_frame_again, "replayed", id="replay-within-batch"),
        pytest.param(lower_counter, "replayed", id="reordered-within-batch"),
        pytest.param(other_hub, "wrong_hub", id="wrong-hub"),
    ],
)
async def test_batch_with_a_bad_middle_frame_stores_nothing(live_hub, sensor, make_bad, reason):
    first, last = sensor.seal([fresh_readings(2), fresh_readings(2)])
    batch = [first, make_bad(sensor, first), last]
    before = await snapshot(live_hub)

    delivery = await deliver(live_hub, batch, "batch")

    assert_rejected(delivery, reason)
    assert delivery.message.startswith("frame 1: ")
    assert "nothing of this batch was stored" in delivery.message
    await assert_nothing_stored(live_hub, before, reason)
    # The good frames were not consumed: without the bad one the same batch is accepted whole.
    delivery = await deliver(live_hub, [first, last], "batch")
    assert delivery.ok, delivery.message
    assert [r.counter for r in delivery.response.receipts] == [counter_of(first), counter_of(last)]
    assert delivery.stored == 4


async def test_batch_spanning_sensors_is_all_or_nothing(live_hub, sensor, tmp_path):
    gateway_neighbour = await live_hub.add_sensor(tmp_path, "neighbour")
    a = sensor.seal([fresh_readings(2)])[0]
    b = gateway_neighbour.seal([fresh_readings(2)])[0]
    before = await snapshot(live_hub)

    delivery = await deliver(live_hub, [a, b, flipped(sensor.seal([fresh_readings(1)])[0])], "batch")

    assert_rejected(delivery, "authentication_failed")
    assert delivery.message.startswith("frame 2: ")
    after = await assert_nothing_stored(live_hub, before, "authentication_failed")
    assert after.last_counter(gateway_neighbour) == before.last_counter(gateway_neighbour) == 0
    assert (await deliver(live_hub, [a, b], "batch")).ok


async def test_empty_batch_is_refused(live_hub):
    before = await snapshot(live_hub)
    delivery = await deliver(live_hub, [], "batch")
    assert_rejected(delivery, "malformed_frame")
    after = await snapshot(live_hub)
    assert (after.rows, after.sensors) == (before.rows, before.sensors)


# -- StreamFrames: commits up to the first bad frame -------------------------------------------

@pytest.mark.parametrize("bad_index", [0, 1, 3])
async def test_stream_commits_every_frame_before_the_first_bad_one(live_hub, sensor, bad_index):
    batches = [fresh_readings(2) for _ in range(5)]
    sealed = sensor.seal(batches)
    stream = [*sealed[:bad_index], flipped(sealed[bad_index]), *sealed[bad_index + 1:]]
    before = await snapshot(live_hub)

    delivery = await deliver(live_hub, stream, "stream")

    assert_rejected(delivery, "authentication_failed")
    assert delivery.message.startswith(f"frame {bad_index}: ")
    assert f"the {bad_index} frames before it were committed" in delivery.message
    after = await snapshot(live_hub)
    committed = [r for batch in batches[:bad_index] for r in batch]
    assert set(after.rows) - set(before.rows) == rows_of(sensor, committed)
    assert after.readings(sensor) == before.readings(sensor) + 2 * bad_index
    expected_counter = counter_of(sealed[bad_index - 1]) if bad_index else before.last_counter(sensor)
    assert after.last_counter(sensor) == expected_counter
    assert after.rejections.get("authentication_failed", 0) == before.rejections.get("authentication_failed", 0) + 1
    # Nothing from the bad frame on was stored or consumed: the frames after it are still good.
    rest = sealed[bad_index + 1 :]
    delivery = await deliver(live_hub, rest, "stream")
    assert delivery.ok, delivery.message
    assert (delivery.response.frames_accepted, delivery.stored, delivery.duplicate) == (len(rest), 2 * len(rest), 0)


async def test_stream_longer_than_a_commit_chunk_keeps_the_committed_prefix(live_hub, sensor):
    """More frames than one stream commit (STREAM_COMMIT_FRAMES), the bad one after the first commit."""
    n = ingest.STREAM_COMMIT_FRAMES + 50
    bad_index = n - 10
    batches = [fresh_readings(1) for _ in range(n)]
    sealed = sensor.seal(batches)
    sealed[bad_index] = seal_raw(sensor, b"[]", counter=counter_of(sealed[bad_index]))
    before = await snapshot(live_hub)

    delivery = await deliver(live_hub, sealed, "stream")

    assert_rejected(delivery, "malformed_senml")
    assert delivery.message.startswith(f"frame {bad_index}: ")
    assert f"the {bad_index} frames before it were committed" in delivery.message
    after = await snapshot(live_hub)
    assert after.readings(sensor) == before.readings(sensor) + bad_index
    assert after.last_counter(sensor) == counter_of(sealed[bad_index - 1])
    assert set(after.rows) - set(before.rows) == rows_of(sensor, [b[0] for b in batches[:bad_index]])


async def test_good_stream_reports_what_it_committed(live_hub, sensor):
    sealed = sensor.seal([fresh_readings(3) for _ in range(4)])
    delivery = await deliver(live_hub, sealed, "stream")
    assert delivery.ok, delivery.message
    r = delivery.response
    assert (r.frames_accepted, r.readings_stored, r.readings_duplicate) == (4, 12, 0)
    assert dict(r.last_counter) == {sensor.credential.sensor_id: counter_of(sealed[-1])}


# -- re-sent readings are stored once -------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_readings_resent_after_a_lost_acknowledgement_are_not_stored_twice(live_hub, sensor, transport):
    readings = fresh_readings(3)
    first = sensor.seal([readings])[0]
    assert (await deliver(live_hub, first, transport)).ok  # ... and the acknowledgement is lost
    before = await snapshot(live_hub)

    resent = sensor.seal([readings])[0]  # the sensor re-sends the readings in a new frame
    assert counter_of(resent) > counter_of(first)
    delivery = await deliver(live_hub, resent, transport)

    assert delivery.ok, delivery.message
    assert (delivery.stored, delivery.duplicate) == (0, 3)
    after = await snapshot(live_hub)
    assert (after.rows, after.counts) == (before.rows, before.counts)
    last_counter, _last_seen, frames_accepted, stored = after.sensor(sensor)
    assert last_counter == counter_of(resent)
    assert frames_accepted == before.sensor(sensor)[2] + 1
    assert stored == before.readings(sensor)


async def test_partly_resent_readings_store_only_the_new_ones(live_hub, sensor):
    old, new = fresh_readings(2), fresh_readings(2, ("wind_speed", "rain"))
    assert (await deliver(live_hub, sensor.seal([old])[0], "batch")).ok
    before = await snapshot(live_hub)

    delivery = await deliver(live_hub, sensor.seal([old + new])[0], "batch")

    assert (delivery.stored, delivery.duplicate) == (2, 2)
    after = await snapshot(live_hub)
    assert set(after.rows) - set(before.rows) == rows_of(sensor, new)
    assert after.readings(sensor) == before.readings(sensor) + 2


async def test_same_readings_twice_in_one_batch_are_stored_once(live_hub, sensor):
    readings = fresh_readings(2)
    before = await snapshot(live_hub)
    delivery = await deliver(live_hub, sensor.seal([readings, readings]), "batch")
    assert delivery.ok, delivery.message
    assert [(r.readings_stored, r.readings_duplicate) for r in delivery.response.receipts] == [(2, 0), (0, 2)]
    after = await snapshot(live_hub)
    assert len(after.rows) == len(before.rows) + 2
    assert set(after.rows) - set(before.rows) == rows_of(sensor, readings)


async def test_a_frame_raced_against_itself_is_accepted_once(live_hub, sensor):
    sealed = sensor.seal([fresh_readings(2)])[0]
    before = await snapshot(live_hub)

    outcomes = await asyncio.gather(*(deliver(live_hub, sealed, "batch") for _ in range(4)))

    assert sum(d.ok for d in outcomes) == 1
    for d in outcomes:
        if not d.ok:
            assert_rejected(d, "replayed")
    after = await snapshot(live_hub)
    assert after.readings(sensor) == before.readings(sensor) + 2
    assert after.sensor(sensor)[2] == before.sensor(sensor)[2] + 1
    assert after.rejections.get("replayed", 0) == before.rejections.get("replayed", 0) + 3
