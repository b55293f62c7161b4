"""Per-sensor rate and volume limits (node/ingest.py SensorRateLimit), and large batches that
do not hold the event loop (issue 11, "One sensor stalls the hub")."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from conftest import make_hub_dir, start_live_hub
from ingest_helpers import TRANSPORTS, assert_nothing_stored, assert_rejected, deliver, snapshot
from ingest_helpers import fresh_readings as _fresh

from node.clock import ManualClock
from node.ingest import YIELD_EVERY_READINGS, SensorRateLimit
from node.senml import Reading

pytestmark = pytest.mark.asyncio(loop_scope="module")


def fresh_readings(n: int) -> list[Reading]:
    """`n` new pm25 readings, all in range."""
    return [Reading(r.metric, r.time_ms, float(i % 50)) for i, r in enumerate(_fresh(n, ("pm25",)))]


@pytest_asyncio.fixture(loop_scope="module")
async def live_hub(tmp_path_factory):
    live = await start_live_hub(make_hub_dir(tmp_path_factory.mktemp("rate") / "hub"))
    yield live
    await live.stop()


@pytest.fixture
def clock(live_hub):
    """A small bucket on a manual clock for this test; the hub's own limit afterwards."""
    original = live_hub.hub.ingest.rate_limit
    clock = ManualClock()
    live_hub.hub.ingest.rate_limit = SensorRateLimit(rate=100, burst=300, clock=clock)
    yield clock
    live_hub.hub.ingest.rate_limit = original


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_sensor_over_its_rate_is_refused_until_the_bucket_refills(live_hub, tmp_path, clock, transport):
    sensor = await live_hub.add_sensor(tmp_path, f"eager-{transport}")
    other = await live_hub.add_sensor(tmp_path, f"calm-{transport}")
    batches = [fresh_readings(100) for _ in range(3)] if transport != "http" else [fresh_readings(300)]
    assert (await deliver(live_hub, sensor.seal(batches), transport)).ok  # the burst
    before = await snapshot(live_hub)
    refused = await deliver(live_hub, sensor.seal([fresh_readings(1)]), transport)
    assert_rejected(refused, "rate_limited")
    assert "retry in 0.0 s" in refused.message  # one reading at 100/s: 0.01 s
    await assert_nothing_stored(live_hub, before, "rate_limited")
    # Another sensor has its own bucket.
    assert (await deliver(live_hub, other.seal([fresh_readings(5)]), transport)).ok
    # A second later, 100 more readings are allowed, and not 101.
    clock.advance(1.0)
    assert not (await deliver(live_hub, sensor.seal([fresh_readings(101)]), transport)).ok
    assert (await deliver(live_hub, sensor.seal([fresh_readings(100)]), transport)).ok


async def test_a_refused_batch_costs_the_sensor_no_rate(live_hub, tmp_path, clock):
    """All or nothing: when a later frame is refused, the earlier frames' readings are not charged."""
    sensor = await live_hub.add_sensor(tmp_path, "all-or-nothing")
    assert not (await deliver(live_hub, sensor.seal([fresh_readings(200), fresh_readings(200)]), "batch")).ok
    assert (await deliver(live_hub, sensor.seal([fresh_readings(300)]), "batch")).ok


async def test_a_large_batch_lets_other_tasks_run_while_it_is_decoded(live_hub, tmp_path):
    """Before: 348,000 readings in one SubmitBatch held the event loop for 1.2 s."""
    sensor = await live_hub.add_sensor(tmp_path, "bulk")
    frames, per_frame = 80, 1_000
    assert (await deliver(live_hub, sensor.seal([fresh_readings(1)]), "batch")).ok  # the sensor is known now
    sealed = sensor.seal([fresh_readings(per_frame) for _ in range(frames)])
    buckets = live_hub.hub.ingest.rate_limit._buckets
    sensor_id = sensor.credential.sensor_id
    seen: set[float] = set()
    done = asyncio.Event()

    async def watcher() -> None:  # runs only when the loop is free; sees the bucket drain frame by frame
        while not done.is_set():
            seen.add(round(buckets[sensor_id][0]))
            await asyncio.sleep(0)

    watching = asyncio.create_task(watcher())
    delivery = await deliver(live_hub, sealed, "batch")
    done.set()
    await watching
    assert delivery.ok and delivery.stored == frames * per_frame, delivery.message
    partial = {tokens for tokens in seen if tokens not in (max(seen), min(seen))}
    expected_yields = frames * per_frame // YIELD_EVERY_READINGS
    assert len(partial) >= expected_yields // 2, f"the loop ran {len(partial)} times during decoding"
    print(f"\n{frames * per_frame} readings in one batch; other tasks ran {len(partial)} times while it was decoded")
