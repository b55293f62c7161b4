"""Soak (issue 11, item 8): a real hub process takes sustained ingest at half the rate measured
in the same run, plus concurrent queries, for a fixed period. Pass: zero errors, hub RSS flat
within 10 % (median of the last quarter against the second quarter, after warm-up), and
latency stable (median of the last third at most twice that of the first third).

    python -m bench.soak --seconds 60      # `make soak`

The ingest rate is measured first in the same run, with the same client (sealing included):
the soak runs at half of it, so the figure is a ratio to this machine, not a promise."""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc

from node import hubdir
from node.api.v1 import admin_pb2, ingest_pb2, ingest_pb2_grpc
from node.app.launcher import HubProcess
from node.app.sensor_client import Sensor, SensorCredential
from node.client import AdminClient, open_channel
from node.senml import Reading
from node.tlsfiles import pinned_client_ssl_context

PASSPHRASE = "soak-passphrase-0123456789"
SENDERS = 2
FRAMES_PER_CALL, READINGS_PER_FRAME = 10, 500
T0 = 1_000_000_000_000  # 2001-09-09, far from other data


class Sender(threading.Thread):
    def __init__(self, process: HubProcess, sensor: Sensor, minutes: itertools.count, rate: float | None, until: float) -> None:
        super().__init__(daemon=True)
        self.process, self.sensor, self.minutes, self.rate, self.until = process, sensor, minutes, rate, until
        self.readings = 0
        self.errors: list[str] = []
        self.latencies: list[tuple[float, float]] = []  # (at, seconds)

    def run(self) -> None:
        endpoint = self.process.endpoint
        cert = hubdir.HubDir(self.process.data_dir).tls_cert_pem()
        per_call = FRAMES_PER_CALL * READINGS_PER_FRAME
        started = time.monotonic()
        with open_channel(endpoint["grpc_address"], hub_id=endpoint["hub_id"], cert_pem=cert, tls=True) as channel:
            stub = ingest_pb2_grpc.IngestStub(channel)
            while time.monotonic() < self.until:
                if self.rate:  # pace: the next call when the rate allows it
                    due = started + self.readings / self.rate
                    if due > time.monotonic():
                        time.sleep(due - time.monotonic())
                batches = [[Reading("pm25", T0 + next(self.minutes) * 60_000, 5.0) for _ in range(READINGS_PER_FRAME)]
                           for _ in range(FRAMES_PER_CALL)]
                sealed = self.sensor.seal(batches)
                call_started = time.monotonic()
                try:
                    stub.SubmitBatch(ingest_pb2.SubmitBatchRequest(frames=[ingest_pb2.SealedFrame(frame=f) for f in sealed]),
                                     timeout=30)
                except grpc.RpcError as exc:
                    self.errors.append(f"{exc.code().name}: {exc.details()}")
                    continue
                self.latencies.append((call_started, time.monotonic() - call_started))
                self.readings += per_call


class Querier(threading.Thread):
    """Open-data aggregates over HTTP and GetStatus over gRPC, one after the other."""

    def __init__(self, process: HubProcess, until: float) -> None:
        super().__init__(daemon=True)
        self.process, self.until = process, until
        self.errors: list[str] = []
        self.latencies: list[tuple[float, float]] = []

    def run(self) -> None:
        hub_dir = hubdir.HubDir(self.process.data_dir)
        context = pinned_client_ssl_context(hub_dir.tls_cert_pem())
        context.check_hostname = False  # pinned by the certificate itself (loopback address)
        url = self.process.endpoint["http_url"] + "/open/v1/air_quality/pm25?bucket=month&from=2001-09-01&to=2002-01-01"
        with AdminClient(self.process.data_dir) as admin:
            while time.monotonic() < self.until:
                started = time.monotonic()
                try:
                    with urllib.request.urlopen(url, context=context, timeout=30) as response:
                        json.loads(response.read())
                    admin.call("GetStatus", admin_pb2.GetStatusRequest())
                except Exception as exc:  # every failure counts as an error of the soak
                    self.errors.append(repr(exc))
                    time.sleep(0.2)
                    continue
                self.latencies.append((started, time.monotonic() - started))
                time.sleep(0.2)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def run(process: HubProcess, sensors: list[Sensor], seconds: float, rate: float | None, minutes: itertools.count):
    until = time.monotonic() + seconds
    senders = [Sender(process, s, minutes, rate / len(sensors) if rate else None, until) for s in sensors]
    querier = Querier(process, until) if rate else None
    for thread in (*senders, *([querier] if querier else [])):
        thread.start()
    samples: list[tuple[float, int]] = []
    while any(t.is_alive() for t in senders):
        samples.append((time.monotonic(), rss_kib(process.process.pid)))
        time.sleep(1.0)
    for thread in (*senders, *([querier] if querier else [])):
        thread.join()
    return senders, querier, samples


def thirds_median(latencies: list[tuple[float, float]]) -> tuple[float, float]:
    ordered = [s for _, s in sorted(latencies)]
    third = max(1, len(ordered) // 3)
    return statistics.median(ordered[:third]), statistics.median(ordered[-third:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the soak (default 60)")
    parser.add_argument("--calibrate-seconds", type=float, default=8.0, help="length of the rate measurement (default 8)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        data_dir = Path(tmp) / "hub"
        hubdir.init_hub(data_dir, "1103", PASSPHRASE.encode())
        # Two senders stand for many sensors: lift the per-sensor limit (docs/limits.md) for them.
        config = hubdir.HubDir(data_dir).config()
        config.ingest.readings_per_second, config.ingest.burst_readings = 1e9, 10**9
        (data_dir / hubdir.CONFIG_FILE).write_bytes(config.to_toml())
        process = HubProcess(data_dir, PASSPHRASE).start()
        try:
            sensors = []
            with AdminClient(data_dir) as admin:
                for i in range(SENDERS):
                    response = admin.call("AddSensor", admin_pb2.AddSensorRequest(
                        dataset="air_quality", metrics=["pm25"], latitude=58.97, longitude=5.73, label=f"soak-{i}"))
                    path = Path(tmp) / f"s{i}.json"
                    path.write_bytes(response.credential_json)
                    sensors.append(Sensor(SensorCredential.load(path)))
            minutes = itertools.count()
            senders, _, _ = run(process, sensors, args.calibrate_seconds, None, minutes)
            full_rate = sum(s.readings for s in senders) / args.calibrate_seconds
            target = full_rate / 2
            print(f"measured ingest rate (this client, this machine): {full_rate:,.0f} readings/s; soak at {target:,.0f}")
            senders, querier, samples = run(process, sensors, args.seconds, target, minutes)
        finally:
            process.stop(timeout=15)
    errors = [e for s in senders for e in s.errors] + (querier.errors if querier else [])
    achieved = sum(s.readings for s in senders) / args.seconds
    quarter = max(1, len(samples) // 4)
    rss_early = statistics.median(r for _, r in samples[quarter : 2 * quarter])
    rss_late = statistics.median(r for _, r in samples[-quarter:])
    ingest_first, ingest_last = thirds_median([x for s in senders for x in s.latencies])
    query_first, query_last = thirds_median(querier.latencies) if querier and querier.latencies else (0.0, 0.0)
    print(f"soak {args.seconds:.0f} s: {achieved:,.0f} readings/s achieved ({achieved / full_rate:.2f} of the measured rate), "
          f"{len(querier.latencies) if querier else 0} queries, {len(errors)} errors")
    print(f"hub RSS: {rss_early / 1024:.1f} MiB (2nd quarter median) -> {rss_late / 1024:.1f} MiB (last quarter), "
          f"{(rss_late / rss_early - 1) * 100:+.1f} %; peak {max(r for _, r in samples) / 1024:.1f} MiB")
    print(f"SubmitBatch median latency: {ingest_first * 1000:.1f} ms (first third) -> {ingest_last * 1000:.1f} ms (last third)")
    print(f"query median latency: {query_first * 1000:.1f} ms (first third) -> {query_last * 1000:.1f} ms (last third)")
    if querier and querier.errors:
        print(f"query errors: {len(querier.errors)}, e.g. {querier.errors[0]}")
    failures = []
    if errors:
        failures.append(f"{len(errors)} errors, e.g. {errors[0]}")
    if rss_late > rss_early * 1.10:
        failures.append("RSS grew by more than 10 %")
    if ingest_last > 2 * ingest_first or (query_first and query_last > 2 * query_first):
        failures.append("latency not stable (last third's median over twice the first's)")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
