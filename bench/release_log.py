"""Release-log benchmark (issue 9): what the no-differencing check costs a providing hub.

    .venv/bin/python -m bench.release_log            # about half a minute on 2 cores
    .venv/bin/python -m bench.release_log --sensors 5 --repetitions 3

A hub (in this process: node.hub.Hub with its Storage and Federation, no server) holds a year
(2019) of hourly pm25 readings of --sensors sensors (values from a fixed seed; stored with one
INSERT per batch, as bench setup, not through ingest). For each agreement grain (day, hour) and
each repetition, in the same run, one right after the other:
(a) baseline: the query's aggregate SQL alone (SqliteStore.aggregate, by the grain, all 2019),
    what every answer costs without a release log;
(b) first release: (a) plus Provider._released_before for an asker never answered before
    (fingerprints of every sub-cell, the overlap lookup, the check and the log of one row per
    sub-cell in one write transaction, and the window's run);
(c) repeat: (a) plus Provider._released_before for the asker of (b) (every sub-cell's
    fingerprint computed again; the window's run, the high-water mark, matches: nothing
    compared row by row, nothing logged).
Printed: the median seconds of each and the ratios (b)/(a) and (c)/(a), in wall-clock time and
in CPU time of all the process's threads (steadier on a shared machine); docs/benchmarks.md
keeps runs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.machine import machine_facts
from federation import policy
from federation.query.provider import Provider
from federation.service import Federation
from node import hubdir
from node.api.v1 import query_pb2
from node.clock import SYSTEM_CLOCK
from node.hub import Hub
from node.storage.base import AggregateRequest, ReleaseLine, SensorRecord, Store
from node.storage.sqlite import SqliteStore

PASSPHRASE = b"bench-passphrase-0123456789"
HOUR = 3_600_000
YEAR_2019 = (1_546_300_800_000, 1_577_836_800_000)
MIN_GROUP_SIZE = 3


def _load(hub: Hub, sensors: int) -> int:
    rng = random.Random(9)

    def work(store: Store) -> int:
        assert isinstance(store, SqliteStore)
        rows = 0
        for n in range(sensors):
            store.add_sensor(SensorRecord(f"bench-{n}", "air_quality", ["pm25"], 58.97, 5.73, b"\0", 0, label=f"1103 bench #{n}"))
            ref = store.conn.execute("SELECT ref FROM sensors WHERE sensor_id = ?", (f"bench-{n}",)).fetchone()[0]
            batch = [(ref, "pm25", t, round(rng.uniform(1, 40), 2)) for t in range(*YEAR_2019, HOUR)]
            store.conn.execute("BEGIN IMMEDIATE")
            store.conn.executemany("INSERT INTO readings (sensor_ref, metric, time_ms, value) VALUES (?, ?, ?, ?)", batch)
            store.conn.execute("COMMIT")
            rows += len(batch)
        return rows

    return asyncio.run(hub.storage.write(work))


async def _measure(hub: Hub, grain: str, repetitions: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    fed = hub.config.federation
    provider = Provider(Federation(hub, fed.refresh_seconds, fed.retry_base_seconds, fed.retry_max_seconds))
    spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=YEAR_2019[0], end_ms=YEAR_2019[1],
                               bucket=grain, group_by="municipality", purpose_code="environmental_monitoring")
    request = AggregateRequest("air_quality", "pm25", *YEAR_2019, grain, None)
    times: dict[str, list[float]] = {"baseline": [], "first release": [], "repeat": []}
    cpu: dict[str, list[float]] = {what: [] for what in times}
    for rep in range(repetitions):
        grant = policy.Grant(f"urn:uuid:bench-{grain}-{rep}", MIN_GROUP_SIZE, None, 100, grain, asker_id=f"partner-{grain}-{rep}")
        for what in times:
            started, started_cpu = time.perf_counter(), time.process_time()
            cells = await hub.storage.read(lambda s: s.aggregate(request))
            if what != "baseline":
                withheld = await provider._released_before(grant, spec, request, cells, frozenset())
                assert not withheld, withheld
            times[what].append(time.perf_counter() - started)
            cpu[what].append(time.process_time() - started_cpu)
    return times, cpu


def _summary(seconds: dict[str, list[float]]) -> tuple[str, str]:
    """The medians, and each one's ratio to the baseline's."""
    base = statistics.median(seconds["baseline"])
    line = ", ".join(f"{what} {statistics.median(t):.3f} s" for what, t in seconds.items())
    ratios = ", ".join(f"{what}/baseline {statistics.median(t) / base:.2f}" for what, t in seconds.items() if what != "baseline")
    return line, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensors", type=int, default=20)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    if args.sensors < MIN_GROUP_SIZE:
        parser.error(f"--sensors must be at least {MIN_GROUP_SIZE}, the minimum group size of the benchmark's agreement "
                     "(smaller cells are withheld, and nothing would be checked or logged)")
    with tempfile.TemporaryDirectory(prefix="smartregion-bench-release-log-") as tmp:
        for name, value in machine_facts(Path(tmp)):
            print(f"{name}: {value}")
        path = Path(tmp) / "hub"
        hubdir.init_hub(path, "1103", PASSPHRASE)
        hub = Hub.open(path, PASSPHRASE, SYSTEM_CLOCK)
        try:
            readings = _load(hub, args.sensors)
            print(f"{args.sensors} sensors, {readings:,} hourly readings of 2019; {args.repetitions} repetitions, medians")
            for grain in ("day", "hour"):
                times, cpu = asyncio.run(_measure(hub, grain, args.repetitions))
                line, ratios = _summary(times)
                cpu_line, cpu_ratios = _summary(cpu)
                first_asker = ReleaseLine(f"partner-{grain}-0", "air_quality", "pm25")
                rows = len(asyncio.run(hub.storage.read(lambda s: s.released_overlapping(first_asker, *YEAR_2019))))  # noqa: B023
                print(f"by {grain} ({len(range(*YEAR_2019, 86_400_000 if grain == 'day' else HOUR))} cells): {line}; {ratios}; "
                      f"log rows per asker {rows}\n    CPU (all threads): {cpu_line}; {cpu_ratios}")
        finally:
            hub.close()


if __name__ == "__main__":
    main()
