"""What a refused input costs the hub (issue 11, "Garbage costs like data"): a rejection is
counted at once but written with the next commit or once a second, never one durable
transaction per input."""

from __future__ import annotations

import os
import sqlite3

import pytest
import pytest_asyncio
from conftest import make_hub_dir, start_live_hub
from ingest_helpers import deliver, fresh_readings, seal_raw, snapshot

from node import senml

pytestmark = pytest.mark.asyncio(loop_scope="module")
FLOOD = 300


@pytest_asyncio.fixture(loop_scope="module")
async def live_hub(tmp_path_factory):
    live = await start_live_hub(make_hub_dir(tmp_path_factory.mktemp("costs") / "hub"))
    yield live
    await live.stop()


def writer_commits(live) -> list[str]:
    """Every COMMIT the hub's single writer connection runs from now on (sqlite3's trace hook)."""
    seen: list[str] = []
    storage = live.hub.storage

    def install() -> None:
        storage._store().conn.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)

    storage._writer_pool.submit(install).result()
    return seen


def stored_rejections(live) -> dict[str, int]:
    with sqlite3.connect(live.hub.storage.path) as conn:
        return dict(conn.execute("SELECT reason, count FROM rejections").fetchall())


async def test_a_flood_of_garbage_costs_no_transaction_per_input_and_every_refusal_is_counted(live_hub, tmp_path):
    sensor = await live_hub.add_sensor(tmp_path, "honest")
    before = await snapshot(live_hub)
    stored_before = stored_rejections(live_hub)
    commits = writer_commits(live_hub)
    for i in range(FLOOD):
        garbage = b"\x07" + os.urandom(60 + i % 50)  # version 7: malformed_frame
        assert not (await deliver(live_hub, garbage, ("batch", "stream", "http")[i % 3])).ok
    # Each was counted at once (GetStatus merges what is not written yet) ...
    after = await snapshot(live_hub)
    assert after.rejections.get("malformed_frame", 0) - before.rejections.get("malformed_frame", 0) == FLOOD
    # ... but far fewer durable transactions ran than inputs were refused (before: one each).
    assert len(commits) < FLOOD / 10, f"{len(commits)} commits for {FLOOD} refused inputs"
    print(f"\n{FLOOD} refused inputs cost {len(commits)} durable transactions")

    # The next accepted frame carries the tally into its own transaction.
    assert (await deliver(live_hub, seal_raw(sensor, senml.encode(fresh_readings(1))), "batch")).ok
    stored = stored_rejections(live_hub)
    assert stored.get("malformed_frame", 0) - stored_before.get("malformed_frame", 0) == FLOOD
    assert live_hub.hub.ingest.unwritten_rejections.pending() == ({}, {})


async def test_rejections_per_sensor_are_written_at_shutdown(tmp_path):
    live = await start_live_hub(make_hub_dir(tmp_path / "hub"))
    sensor = await live.add_sensor(tmp_path, "replayer")
    sealed = seal_raw(sensor, senml.encode(fresh_readings(1)))
    assert (await deliver(live, sealed, "batch")).ok
    for _ in range(3):
        assert (await deliver(live, sealed, "batch")).reason == "replayed"
    listed = (await snapshot(live)).sensors  # includes what is not written yet
    assert listed
    await live.stop()
    with sqlite3.connect(tmp_path / "hub" / "hub.db") as conn:
        [(rejected,)] = conn.execute("SELECT frames_rejected FROM sensors").fetchall()
        [(replayed,)] = conn.execute("SELECT count FROM rejections WHERE reason = 'replayed'").fetchall()
    assert rejected == replayed == 3
