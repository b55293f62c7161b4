"""A hub whose data directory is on a small filesystem that fills during ingest (issue 11,
"Full disk"): precise refusal, nothing acknowledged that was not committed, reads keep
working, ingest health NOT_SERVING while full, recovery by itself when space returns, the
reference sensor retrying meanwhile, and a restart while full naming the file."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from pathlib import Path

import grpc
import pytest
from conftest import PASSPHRASE, make_hub_dir, start_live_hub
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ingest_helpers import assert_rejected, deliver, snapshot
from ingest_helpers import fresh_readings as _fresh

from node.app.sensor_client import replay
from node.hub import Hub
from node.ingest import REJECTION_FLUSH_SECONDS
from node.senml import Reading
from node.storage.base import StorageError

INGEST = "smartregion.v1.Ingest"


def fresh_readings(n: int) -> list[Reading]:
    return [Reading(r.metric, r.time_ms, float(i % 50)) for i, r in enumerate(_fresh(n, ("pm25",)))]


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs, mounted for this test and unmounted after."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (mount -t tmpfs); this test cannot run here")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path, leave: int = 0) -> None:
    """Write `path` until the filesystem is full, then give back `leave` bytes."""
    with open(path, "ab", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    if leave:
        os.truncate(path, max(0, path.stat().st_size - leave))


async def ingest_health(live) -> int:
    stub = health_pb2_grpc.HealthStub(live.channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=INGEST), timeout=10)).status


async def eventually(predicate, attempts: int = 200) -> None:
    for _ in range(attempts):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition did not come true")


async def test_a_full_disk_refuses_precisely_keeps_reads_and_recovers_by_itself(small_fs, tmp_path):
    data_dir = make_hub_dir(small_fs / "hub")
    live = await start_live_hub(data_dir)
    try:
        sensor = await live.add_sensor(tmp_path, "station", metrics=["pm25"])
        filler = small_fs / "filler"
        fill(filler, leave=400_000)
        acknowledged = 0
        refused: dict[str, object] = {}
        for i in range(1000):
            transport = ("batch", "http")[i % 2]
            if transport in refused:
                continue
            delivery = await deliver(live, sensor.seal([fresh_readings(1000 if transport == "batch" else 1400)]), transport)
            if delivery.ok:
                acknowledged += delivery.stored
                continue
            assert_rejected(delivery, "storage_full")
            assert "disk is full" in delivery.message and "nothing was stored" in delivery.message
            if not refused:  # the first refusal: ingest health turns NOT_SERVING at once
                await eventually(lambda: _is(ingest_health(live), health_pb2.HealthCheckResponse.NOT_SERVING))
            refused[transport] = delivery
            fill(filler)  # what is left after a failed write (in SQLite's WAL) is small now
            if len(refused) == 2:
                break
        assert len(refused) == 2, "the filesystem never filled"
        print(f"\nfull after {acknowledged} acknowledged readings")

        # Nothing acknowledged is missing, nothing refused was stored; reads keep working.
        before = await snapshot(live)
        assert len(before.rows) == acknowledged == before.readings(sensor)

        # The reference sensor retries a full disk instead of giving up ...
        stored_before = before.rejections.get("storage_full", 0)
        replaying = asyncio.create_task(asyncio.to_thread(replay, sensor, fresh_readings(5000), max_retries=50))
        await eventually(lambda: _more_refusals(live, stored_before + 1))
        # ... and when space returns, the hub recovers by itself.
        filler.unlink()
        summary = await replaying
        assert summary.retries >= 1 and summary.readings_stored == 5000
        await eventually(lambda: _is(ingest_health(live), health_pb2.HealthCheckResponse.SERVING))
        after = await snapshot(live)
        assert len(after.rows) == acknowledged + 5000
    finally:
        await live.stop()

    # A restart while the disk is full names the file it could not write (or serves).
    fill(small_fs / "filler")
    try:
        hub = Hub.open(data_dir, PASSPHRASE.encode())
    except (StorageError, OSError) as exc:
        print(f"restart while full: {exc}")
        assert str(data_dir) in str(exc) or str(small_fs) in str(getattr(exc, "filename", "")), exc
        if isinstance(exc, OSError):
            assert exc.errno == errno.ENOSPC
    else:
        from node.app.server import start
        try:
            running = await start(hub, host="127.0.0.1", grpc_port=0, http_port=0)
        except OSError as exc:
            hub.close()
            print(f"restart while full: {exc}")
            assert exc.errno == errno.ENOSPC and str(data_dir) in str(exc.filename), exc
        else:
            print("restart while full: the hub serves")
            await running.stop(grace=1)


async def _is(status_coro, expected: int) -> bool:
    return await status_coro == expected


async def _more_refusals(live, at_least: int) -> bool:
    try:
        return (await snapshot(live)).rejections.get("storage_full", 0) >= at_least
    except grpc.aio.AioRpcError:
        return False


async def test_ingest_health_does_not_flap_while_no_reading_can_be_written(small_fs, tmp_path):
    """Hysteresis. Before: with a few KiB left, the refusal counts (written once a second) still
    fit while no batch did, and each such write turned ingest health SERVING again until the
    next batch failed. Now health stays NOT_SERVING while deliveries fail, and turns SERVING
    again only when readings are committed."""
    live = await start_live_hub(make_hub_dir(small_fs / "hub"))
    try:
        sensor = await live.add_sensor(tmp_path, "station", metrics=["pm25"])
        filler = small_fs / "filler"
        fill(filler, leave=400_000)
        for _ in range(200):
            delivery = await deliver(live, sensor.seal([fresh_readings(1000)]), "batch")
            if not delivery.ok:
                break
        assert_rejected(delivery, "storage_full")
        fill(filler, leave=32 * 1024)  # room for the refusal counts' small writes, not for a batch
        NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
        samples, refused = [], 0
        loop = asyncio.get_running_loop()
        until = loop.time() + 4 * REJECTION_FLUSH_SECONDS + 1  # several rounds of the refusal-count writer
        while loop.time() < until:
            delivery = await deliver(live, sensor.seal([fresh_readings(1000)]), "batch")
            assert not delivery.ok, "a batch was acknowledged on a full disk"
            refused += 1
            for _ in range(4):
                samples.append(await ingest_health(live))
                await asyncio.sleep(0.05)
        flapped = sum(s != NOT_SERVING for s in samples)
        print(f"\n{refused} refused batches on a full disk; ingest health sampled {len(samples)} times, "
              f"{flapped} not NOT_SERVING")
        assert flapped == 0, f"ingest health left NOT_SERVING {flapped} of {len(samples)} times while every write failed"
        # Space returns: the next committed batch (a sensor's retry) turns it SERVING.
        filler.unlink()
        assert (await deliver(live, sensor.seal([fresh_readings(1000)]), "batch")).ok
        await eventually(lambda: _is(ingest_health(live), health_pb2.HealthCheckResponse.SERVING))
    finally:
        await live.stop()
