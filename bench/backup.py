"""Backup benchmark: what an online backup costs a hub that is ingesting, and how long backup
and restore (with its check) take.

    .venv/bin/python -m bench.backup            # about half a minute on 2 cores

A hub process (`smartregion serve`, TLS) is first loaded with a year of the five stations' real
readings (169,227). Then, alternately, the same amount of new readings (the same year under
another sensor) is streamed into it over gRPC (a) alone and (b) while this process takes
backups one after another (node.backup.create, as `smartregion backup` does: SQLite's online
backup API plus the archive). Every frame is sealed before the clock starts. What counts is
the ratio of ingest rates, with / without backups, measured in the same run; also reported:
each backup's duration and size, and one restore with its check (start, audit chain, query).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.machine import machine_facts
from node import backup, hubdir
from node.api.v1 import admin_pb2, ingest_pb2_grpc
from node.app.launcher import HubProcess
from node.app.restore_check import check_restored
from node.app.sensor_client import Sensor, SensorCredential, chunked, read_station_csv
from node.client import AdminClient
from node.fileio import write_private_file

PASSPHRASE = "bench-backup-passphrase-1"
STATIONS = sorted((Path(__file__).resolve().parents[1] / "node" / "data" / "air-quality-norway").glob("*.csv"))
METRICS = ["pm25", "temperature", "wind_speed", "rain"]
ROUNDS = 5


def enrol(data_dir: Path, work: Path, name: str) -> Sensor:
    with AdminClient(data_dir) as client:
        response = client.call("AddSensor", admin_pb2.AddSensorRequest(dataset="air_quality", metrics=METRICS, latitude=58.97,
                                                                       longitude=5.73, label=name))
    path = work / f"{name}.json"
    write_private_file(path, response.credential_json)
    return Sensor(SensorCredential.load(path))


def stream(sensor: Sensor, sealed: list[bytes]) -> float:
    channel = sensor.channel()
    try:
        started = time.perf_counter()
        sensor.send_stream(ingest_pb2_grpc.IngestStub(channel), sealed, timeout=300)
        return time.perf_counter() - started
    finally:
        channel.close()


def main() -> None:
    per_station = [list(read_station_csv(path, METRICS)) for path in STATIONS]
    readings = [r for station in per_station for r in station]
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        work = Path(tmp)
        data_dir = work / "hub"
        hubdir.init_hub(data_dir, "1103", PASSPHRASE.encode())
        process = HubProcess(data_dir, PASSPHRASE).start()
        try:
            preload = enrol(data_dir, work, "preload")
            stream(preload, preload.seal(list(chunked(readings, 500))))
            alone, during, backups = [], [], []
            for round_ in range(ROUNDS):
                for with_backups in (False, True):
                    sensor = enrol(data_dir, work, f"r{round_}-{with_backups}")
                    sealed = sensor.seal(list(chunked(readings, 500)))
                    stop = threading.Event()

                    def back_up(stop: threading.Event = stop) -> None:
                        while not stop.is_set():
                            out = work / "b.tar.gz"
                            started = time.perf_counter()
                            backup.create(hubdir.HubDir(data_dir), out, PASSPHRASE.encode(), int(time.time() * 1000))
                            backups.append((time.perf_counter() - started, out.stat().st_size))

                    worker = threading.Thread(target=back_up) if with_backups else None
                    if worker:
                        worker.start()
                    seconds = stream(sensor, sealed)
                    stop.set()
                    if worker:
                        worker.join()
                    (during if with_backups else alone).append(len(readings) / seconds)
            db_bytes = (data_dir / hubdir.DB_FILE).stat().st_size
            started = time.perf_counter()
            backup.restore(work / "b.tar.gz", work / "restored", PASSPHRASE.encode())
            restored = time.perf_counter() - started
            started = time.perf_counter()
            result = check_restored(work / "restored", PASSPHRASE.encode())
            checked = time.perf_counter() - started
        finally:
            process.stop()
        for key, value in machine_facts(work):
            print(f"{key}: {value}")
    a, d = statistics.median(alone), statistics.median(during)
    print(f"ingest alone           {a:>10,.0f} readings/s (median of {ROUNDS}: {', '.join(f'{x:,.0f}' for x in alone)})")
    print(f"ingest during backups  {d:>10,.0f} readings/s (median of {ROUNDS}: {', '.join(f'{x:,.0f}' for x in during)})")
    print(f"ratio during / alone   {d / a:>10.2f}")
    times = [t for t, _ in backups]
    print(f"backups taken while ingesting: {len(backups)}; duration median {statistics.median(times):.3f} s, max {max(times):.3f} s; "
          f"archive {backups[-1][1] / 1e6:.1f} MB of a {db_bytes / 1e6:.1f} MB database")
    print(f"restore {restored:.3f} s; restore check {checked:.3f} s ({result.audit_entries} audit entries verified; "
          f"{result.query}: {result.answered_readings} readings)")


if __name__ == "__main__":
    main()
