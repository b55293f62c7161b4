"""Ingest benchmark: end-to-end gRPC ingest into a real hub process vs. a bare SQLite insert.

    .venv/bin/python -m bench.ingest              # full run (about 1-2 minutes on 2 cores)
    .venv/bin/python -m bench.ingest --quick      # one repetition, one frame size, 1/3 of the data
    .venv/bin/python -m bench.ingest --profile    # also one cProfiled run of the hub

Both sides are measured in the same run, on the same machine and the same file system, one
right after the other for every frame size and repetition (bare, e2e, bare, e2e, ...), so
load from other processes falls on both. What counts is the ratio e2e / bare (target >= 0.5);
see docs/benchmarks.md.

Data: the real hourly readings of the five air-quality stations in
node/data/air-quality-norway/ (2019; pm25, temperature, wind_speed, rain: 169,227 readings).
`--scale N` (default 3) replays every station under N distinct sensors, N x 169,227 readings:
the primary key of `readings` is (sensor, metric, time), so every replica's rows are new rows,
with real values and real timestamps.

(a) bare: a database made by node.storage.sqlite.SqliteStore (same schema, WAL,
    synchronous=FULL), the same rows inserted with executemany(INSERT OR IGNORE), one
    transaction for each commit the hub makes (node.ingest's STREAM_COMMIT_READINGS and
    STREAM_COMMIT_FRAMES applied to the same frames), row tuples built before the clock.
(b) e2e: a fresh hub (`smartregion serve`, TLS on) started as a separate process by
    node.app.launcher.HubProcess; one sensor enrolled per station replica over the admin API;
    every sensor's readings sealed into frames *before* the clock starts (sealing is the
    sensor's cost; its rate is reported apart); then each sensor sends all of its frames in
    one gRPC client stream (StreamFrames), `--streams` sensors at once, from this process.
    The clock stops when every stream's response is in: the hub answers only after the
    stream's last commit (synchronous=FULL), so acknowledged = durably committed. The counts
    in the responses and in the database file are then checked.
Informational, same rows and transactions: `store` (the hub's SqliteStore.commit_frames,
without gRPC, crypto or SenML) and `bare-multirow` (the multi-row INSERT the store uses).
Also reported: the CPU time of the bare inserting thread and of the hub process (by thread)
during the timed window, whose ratio hardly moves with other load on the machine.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.machine import machine_facts
from node import catalog, frames, hubdir
from node.api.v1 import admin_pb2, ingest_pb2_grpc
from node.app import launcher
from node.app.launcher import HubProcess
from node.app.sensor_client import Sensor, SensorCredential, chunked, read_station_csv
from node.client import AdminClient
from node.fileio import write_private_file
from node.ingest import STREAM_COMMIT_FRAMES, STREAM_COMMIT_READINGS
from node.senml import Reading
from node.storage.base import FrameToCommit, SensorRecord
from node.storage.sqlite import SqliteStore

REPO_ROOT = Path(__file__).resolve().parents[1]
STATION_DIR = REPO_ROOT / "node" / "data" / "air-quality-norway"
DATASET = "air_quality"
METRICS = ["pm25", "temperature", "wind_speed", "rain"]
PASSPHRASE = "bench-passphrase-not-for-production"
MUNICIPALITY = "1103"  # Stavanger
TARGET_RATIO = 0.5
DEFAULT_FRAME_SIZES = (100, 500, 1000)
INSERT_SQL = "INSERT OR IGNORE INTO readings (sensor_ref, metric, time_ms, value) VALUES (?, ?, ?, ?)"


# -- data ------------------------------------------------------------------------------------
@dataclass
class Source:
    """One simulated sensor: a station's year of readings, cut into frames."""

    name: str
    readings: list[Reading]
    batches: list[list[Reading]] = field(default_factory=list)


def load_stations() -> dict[str, list[Reading]]:
    return {p.stem: list(read_station_csv(p, METRICS)) for p in sorted(STATION_DIR.glob("*.csv"))}


def make_sources(stations: dict[str, list[Reading]], scale: int, readings_per_frame: int) -> list[Source]:
    sources = []
    for replica in range(scale):
        for name, readings in stations.items():
            label = name if scale == 1 else f"{name}#{replica + 1}"
            sources.append(Source(label, readings, list(chunked(readings, readings_per_frame))))
    return sources


def commit_frame_counts(batches: list[list[Reading]]) -> list[int]:
    """How many frames go into each transaction the hub makes for one stream of these frames
    (the rule of node.ingest.StreamSession.add, then the final flush)."""
    counts, readings, frames_ = [], 0, 0
    for batch in batches:
        readings += len(batch)
        frames_ += 1
        if readings >= STREAM_COMMIT_READINGS or frames_ >= STREAM_COMMIT_FRAMES:
            counts.append(frames_)
            readings, frames_ = 0, 0
    if frames_:
        counts.append(frames_)
    return counts


# -- measurements --------------------------------------------------------------------------------
@dataclass
class Measurement:
    kind: str  # "e2e" or one of LOCAL_KINDS
    frame_size: int
    repetition: int
    readings: int
    seconds: float
    transactions: int = 0
    frames: int = 0
    hub_cpu_s: float = 0.0  # end-to-end: the hub process's CPU seconds in the timed window
    cpu_s: float = 0.0  # bare: CPU seconds of the inserting thread
    client_cpu_s: float = 0.0
    seal_seconds: float = 0.0
    hub_threads: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.readings / self.seconds


LOCAL_KINDS = {
    "bare": "executemany(INSERT OR IGNORE) of the rows, one transaction per hub commit: the reference",
    "bare-multirow": "the same rows through the multi-row INSERT the hub's store uses (node.storage.sqlite)",
    "store": "SqliteStore.commit_frames on the decoded frames: the hub's storage layer, no gRPC/crypto/SenML",
}


def run_local(kind: str, workdir: Path, sources: list[Source], frame_size: int, repetition: int) -> Measurement:
    """Store the readings in this process, in a database made by SqliteStore, in the same
    transactions (and the same interleaving of sensors) as the hub; see LOCAL_KINDS."""
    path = workdir / f"{kind}-{frame_size}-{repetition}.db"
    store = SqliteStore(path)
    try:
        per_sensor = []  # per sensor: its transactions, each a list of frames of (metric, time_ms, value)
        refs = []
        for index, source in enumerate(sources):
            sensor_id = f"{index + 1:032x}"
            store.add_sensor(SensorRecord(sensor_id, DATASET, METRICS, 58.97, 5.73, b"\0" * 60, int(time.time() * 1000)))
            refs.append(store.conn.execute("SELECT ref FROM sensors WHERE sensor_id = ?", (sensor_id,)).fetchone()[0])
            frames_ = [[(r.metric, r.time_ms, r.value) for r in batch] for batch in source.batches]
            groups, i = [], 0
            for group in commit_frame_counts(source.batches):
                groups.append(frames_[i : i + group])
                i += group
            per_sensor.append(groups)
        # The sensors' transactions interleaved, as concurrent streams make the hub do. Row
        # tuples and frame objects are built before the clock starts.
        work = [(n, t) for round_ in _round_robin([[(n, t) for t in ts] for n, ts in enumerate(per_sensor)]) for n, t in round_]
        total = sum(len(f) for _, t in work for f in t)
        conn = store.conn
        if kind == "bare":
            prepared = [[(refs[n], m, t_, v) for f in t for m, t_, v in f] for n, t in work]
        elif kind == "bare-multirow":
            from node.storage.sqlite import _insert_readings

            prepared = [(refs[n], t) for n, t in work]
        elif kind == "store":
            counters = [0] * len(sources)
            prepared = []
            for n, t in work:
                batch = []
                for f in t:
                    counters[n] += 1
                    batch.append(FrameToCommit(f"{n + 1:032x}", counters[n], f, int(time.time() * 1000)))
                prepared.append(batch)
        else:
            raise ValueError(kind)
        cpu_started, started = time.thread_time(), time.perf_counter()
        if kind == "bare":
            for rows in prepared:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(INSERT_SQL, rows)
                conn.execute("COMMIT")
        elif kind == "bare-multirow":
            for ref, frames_ in prepared:
                conn.execute("BEGIN IMMEDIATE")
                for rows in frames_:
                    _insert_readings(conn, ref, rows)
                conn.execute("COMMIT")
        else:
            for batch in prepared:
                store.commit_frames(batch)
        seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
        stored = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    finally:
        store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if stored != total:
        raise RuntimeError(f"{kind}: stored {stored} of {total} readings")
    return Measurement(kind, frame_size, repetition, total, seconds, transactions=len(work), cpu_s=cpu)


def _round_robin(lists: list[list]) -> list[list]:
    rounds = []
    for i in range(max(len(x) for x in lists)):
        rounds.append([x[i] for x in lists if i < len(x)])
    return rounds


def _cpu_seconds(stat_path: Path) -> float:
    """utime + stime from a /proc stat file (Linux)."""
    try:
        fields = stat_path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads, by kind: the main thread (the hub's event loop),
    its other Python threads (the store writer, readers) and gRPC's C-core threads."""
    kinds = {"main": 0.0, "python": 0.0, "grpc": 0.0}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return kinds
    for task in tasks:
        try:
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        kind = "main" if task.name == str(pid) else "python" if comm.startswith("python") else "grpc"
        kinds[kind] += _cpu_seconds(task / "stat")
    return kinds


class WrappedHubProcess(HubProcess):
    """A HubProcess whose `serve` runs as `python -m <module> <args...> serve ...` instead of
    `python -m node.app.cli.main serve ...` (bench.hubprofile: the hub under cProfile)."""

    wrapper: tuple[str, ...] = ()

    def start(self, timeout: float = 30.0) -> HubProcess:
        real_popen = launcher.subprocess.Popen
        wrapper = list(self.wrapper)

        def popen(args, **kwargs):
            args = list(args)
            i = args.index("node.app.cli.main")
            args[i : i + 1] = wrapper
            env = dict(kwargs.pop("env", os.environ))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
            return real_popen(args, env=env, **kwargs)

        # HubProcess builds its command line inside start(); swap Popen (the subprocess module's)
        # just for that call. The benchmark starts nothing else meanwhile.
        launcher.subprocess.Popen = popen
        try:
            return super().start(timeout)
        finally:
            launcher.subprocess.Popen = real_popen


def run_end_to_end(
    workdir: Path,
    template: Path,
    sources: list[Source],
    frame_size: int,
    repetition: int,
    streams: int,
    wrapper: list[str] | None = None,
) -> Measurement:
    data_dir = Path(tempfile.mkdtemp(prefix=f"hub-{frame_size}-{repetition}-", dir=workdir))
    shutil.copytree(template, data_dir, dirs_exist_ok=True)
    if wrapper is None:
        hub = HubProcess(data_dir, PASSPHRASE)
    else:
        hub = WrappedHubProcess(data_dir, PASSPHRASE)
        hub.wrapper = tuple(wrapper)
    hub.start()
    channels = []
    try:
        sensors = []
        with AdminClient(data_dir) as admin:
            for source in sources:
                response = admin.call(
                    "AddSensor",
                    admin_pb2.AddSensorRequest(dataset=DATASET, metrics=METRICS, latitude=58.97, longitude=5.73, label=source.name),
                )
                path = data_dir.parent / f"{data_dir.name}-{len(sensors)}.credential.json"
                write_private_file(path, response.credential_json)
                sensors.append(Sensor(SensorCredential.load(path)))
        # The sensor's cost, before the clock: SenML-encode and seal every frame.
        seal_started = time.perf_counter()
        sealed = [sensor.seal(source.batches) for sensor, source in zip(sensors, sources, strict=True)]
        seal_seconds = time.perf_counter() - seal_started
        total = sum(len(s.readings) for s in sources)
        n_frames = sum(len(s) for s in sealed)
        # Connected (TLS handshake done) and warmed up with an empty stream, before the clock.
        stubs = []
        for sensor in sensors:
            channel = sensor.channel()
            channels.append(channel)
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = ingest_pb2_grpc.IngestStub(channel)
            stub.StreamFrames(iter(()), timeout=30)
            stubs.append(stub)
        hub_pid = hub.process.pid
        with ThreadPoolExecutor(max(1, streams)) as pool:
            threads0, client_cpu0 = _thread_cpu(hub_pid), time.process_time()
            started = time.perf_counter()
            futures = [
                pool.submit(sensor.send_stream, stub, frames_, 600.0) for sensor, stub, frames_ in zip(sensors, stubs, sealed, strict=True)
            ]
            responses = [f.result() for f in futures]
            seconds = time.perf_counter() - started
            threads1, client_cpu = _thread_cpu(hub_pid), time.process_time() - client_cpu0
            hub_threads = {k: threads1[k] - threads0[k] for k in threads1}
    finally:
        for channel in channels:
            channel.close()
        hub.stop()
    stored = sum(r.readings_stored for r in responses)
    accepted = sum(r.frames_accepted for r in responses)
    if stored != total or accepted != n_frames:
        raise RuntimeError(f"the hub acknowledged {stored} of {total} readings, {accepted} of {n_frames} frames")
    db = sqlite3.connect(f"file:{data_dir / hubdir.DB_FILE}?mode=ro", uri=True)
    try:
        on_disk = db.execute("SELECT count(*) FROM readings").fetchone()[0]
    finally:
        db.close()
    if on_disk != total:
        raise RuntimeError(f"the hub's database holds {on_disk} of {total} readings")
    transactions = sum(len(commit_frame_counts(s.batches)) for s in sources)
    shutil.rmtree(data_dir, ignore_errors=True)
    for path in data_dir.parent.glob(f"{data_dir.name}-*.credential.json*"):
        path.unlink()
    return Measurement(
        "e2e", frame_size, repetition, total, seconds, transactions=transactions, frames=n_frames,
        hub_cpu_s=sum(hub_threads.values()), client_cpu_s=client_cpu, seal_seconds=seal_seconds, hub_threads=hub_threads,
    )


# -- reporting -----------------------------------------------------------------------------------
def _median_rate(results: list[Measurement], size: int, kind: str) -> float | None:
    rates = [r.rate for r in results if r.frame_size == size and r.kind == kind]
    return statistics.median(rates) if rates else None


def print_tables(results: list[Measurement], frame_sizes: list[int]) -> list[tuple[int, float, float]]:
    ratios = []
    print()
    print("Every measurement. CPU s: for local kinds the CPU time of the inserting thread; for e2e the hub "
          "process's CPU time in the timed window, split into its main thread (event loop: gRPC, decrypt, SenML), "
          "its other Python threads (the store writer) and gRPC's C threads; client = this process.")
    print()
    print("| readings/frame | kind | rep | readings | seconds | readings/s | CPU s | client CPU s |")
    print("|---:|---|---:|---:|---:|---:|---|---:|")
    for size in frame_sizes:
        for m in [r for r in results if r.frame_size == size]:
            if m.kind == "e2e":
                t = m.hub_threads
                cpu = f"{m.hub_cpu_s:.2f} = {t['main']:.2f} + {t['python']:.2f} + {t['grpc']:.2f}"
                client = f"{m.client_cpu_s:.2f}"
            else:
                cpu, client = f"{m.cpu_s:.2f}", ""
            print(f"| {size} | {m.kind} | {m.repetition} | {m.readings:,} | {m.seconds:.3f} | {m.rate:,.0f} | {cpu} | {client} |")
    print()
    print("Summary. ratio = e2e readings/s / bare readings/s, target >= 0.5: of the medians over the repetitions, "
          "and of the best (fastest) repetitions; other load on the machine only ever slows a run, so the best run "
          "is the least disturbed. pairs = min..max of e2e rep i / bare rep i, measured back to back. CPU ratio = "
          "bare CPU per reading / hub CPU per reading: what the ratio would be with the CPU to themselves (the hub's "
          "threads share one GIL, so its wall time follows its CPU time); it hardly moves with other load.")
    print()
    print("| readings/frame | frames | commits | bare r/s (median) | e2e r/s (median) | **ratio (median)** | ratio (best) | "
          "pairs | CPU ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for size in frame_sizes:
        bare = [r for r in results if r.frame_size == size and r.kind == "bare"]
        e2e = [r for r in results if r.frame_size == size and r.kind == "e2e"]
        if not bare or not e2e:
            continue
        bare_rate, e2e_rate = _median_rate(results, size, "bare"), _median_rate(results, size, "e2e")
        ratio = e2e_rate / bare_rate
        best = max(r.rate for r in e2e) / max(r.rate for r in bare)
        ratios.append((size, ratio, None))
        pairs = [e.rate / b.rate for b, e in zip(bare, e2e, strict=True)]
        cpu_ratio = statistics.median(r.cpu_s / r.readings for r in bare) / statistics.median(r.hub_cpu_s / r.readings for r in e2e)
        ratios[-1] = (size, ratio, cpu_ratio)
        verdict = "ok" if ratio >= TARGET_RATIO else "below"
        print(f"| {size} | {e2e[0].frames:,} | {e2e[0].transactions} | {bare_rate:,.0f} | {e2e_rate:,.0f} | "
              f"**{ratio:.2f}** ({verdict}) | {best:.2f} | {min(pairs):.2f}..{max(pairs):.2f} | {cpu_ratio:.2f} |")
    print()
    print("Where the time goes (medians): CPU µs per reading of the bare insert and of the hub process (main thread + "
          "writer + gRPC threads); the informational local kinds; and the sensor's sealing rate (SenML + AES-GCM, "
          "done before the clock).")
    print()
    print("| readings/frame | bare CPU µs/r | hub CPU µs/r (main + writer + grpc) | bare-multirow r/s | store r/s | sealing r/s |")
    print("|---:|---:|---|---:|---:|---:|")
    for size in frame_sizes:
        bare = [r for r in results if r.frame_size == size and r.kind == "bare"]
        e2e = [r for r in results if r.frame_size == size and r.kind == "e2e"]
        if not bare or not e2e:
            continue
        us = lambda rs, f: statistics.median(f(r) / r.readings * 1e6 for r in rs)  # noqa: E731
        hub = us(e2e, lambda r: r.hub_cpu_s)
        parts = " + ".join(f"{us(e2e, lambda r, k=k: r.hub_threads[k]):.2f}" for k in ("main", "python", "grpc"))
        extra = " | ".join(f"{x:,.0f}" if x else "-" for x in (_median_rate(results, size, k) for k in ("bare-multirow", "store")))
        seal_rate = statistics.median(r.readings / r.seal_seconds for r in e2e)
        print(f"| {size} | {us(bare, lambda r: r.cpu_s):.2f} | {hub:.2f} = {parts} | {extra} | {seal_rate:,.0f} |")
    return ratios


def print_profile(profile_dir: Path, top: int) -> None:
    for name, title in (("main.prof", "hub event-loop thread (gRPC, decrypt, SenML)"),
                        ("writer.prof", "hub store-writer thread, inside commit_frames")):
        path = profile_dir / name
        if not path.exists():
            print(f"(no {name}: the profiled hub did not write it)")
            continue
        print(f"\n-- cProfile, {title}: top {top} by own time --")
        stats = pstats.Stats(str(path))
        stats.sort_stats("tottime").print_stats(top)


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each measurement (default 3)")
    parser.add_argument("--readings-per-frame", type=lambda s: [int(x) for x in s.split(",")],
                        default=None, metavar="N[,N...]",
                        help="frame sizes to measure (default 100,500,1000; a frame's SenML must stay under 64 KiB, "
                             "about 1,300 readings)")
    parser.add_argument("--scale", type=int, default=3,
                        help="replay every station under this many sensors (default 3: 15 sensors, 507,681 readings)")
    parser.add_argument("--streams", type=int, default=5, help="client streams sent at once (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="one repetition, --scale 1, 500 readings/frame unless --readings-per-frame is given")
    parser.add_argument("--no-extra", action="store_true",
                        help="measure only bare and e2e (not the informational 'store' and 'bare-multirow')")
    parser.add_argument("--profile", action="store_true",
                        help="after the measurements, one more end-to-end run with the hub under cProfile")
    parser.add_argument("--profile-top", type=int, default=25, help="functions to list per profiled thread")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to make the (temporary) work directory for the databases (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.scale = 1, 1
        args.readings_per_frame = args.readings_per_frame or [500]
    args.readings_per_frame = args.readings_per_frame or list(DEFAULT_FRAME_SIZES)
    if args.repeat < 1 or args.scale < 1 or any(n < 1 for n in args.readings_per_frame):
        parser.error("--repeat, --scale and --readings-per-frame must be positive")
    return args


def check_frame_sizes(stations: dict[str, list[Reading]], sizes: list[int]) -> None:
    from node import senml

    units = {m: catalog.dataset(DATASET).metrics[m].unit for m in METRICS}
    for size in sizes:
        for readings in stations.values():
            for batch in chunked(readings, size):
                if len(senml.encode(batch, units)) > frames.MAX_PLAINTEXT:
                    raise SystemExit(f"{size} readings/frame: a frame's SenML exceeds the {frames.MAX_PLAINTEXT}-byte "
                                     f"limit of node.frames; choose a smaller --readings-per-frame")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="smartregion-bench-", dir=args.workdir))
    began = time.perf_counter()
    try:
        print("smartregion ingest benchmark")
        for key, value in machine_facts(workdir):
            print(f"  {key:24} {value}")
        stations = load_stations()
        check_frame_sizes(stations, args.readings_per_frame)
        total = sum(len(r) for r in stations.values()) * args.scale
        print(f"  {'data':24} {len(stations)} stations x {args.scale} sensor(s) each, {total:,} readings "
              f"({', '.join(METRICS)}; one year)")
        print(f"  {'hub commits':24} every {STREAM_COMMIT_READINGS:,} readings or {STREAM_COMMIT_FRAMES} frames per stream")
        print(f"  {'client':24} {len(stations) * args.scale} sensors, one stream each, {args.streams} at once, TLS")
        template = workdir / "template-hub"
        hubdir.init_hub(template, MUNICIPALITY, PASSPHRASE.encode())
        results: list[Measurement] = []
        kinds = ["bare", "e2e"] + ([] if args.no_extra else ["store", "bare-multirow"])
        if not hasattr(sys.modules["node.storage.sqlite"], "_insert_readings") and "bare-multirow" in kinds:
            kinds.remove("bare-multirow")  # the store no longer has the multi-row insert
        print(f"  {'measured':24} per frame size and repetition, in this order: {', '.join(kinds)}")
        for kind in kinds:
            what = LOCAL_KINDS.get(kind, "sealed frames over gRPC/TLS into a hub process, until acknowledged")
            print(f"  {'':24}   {kind}: {what}")
        for size in args.readings_per_frame:
            sources = make_sources(stations, args.scale, size)
            for rep in range(1, args.repeat + 1):
                for kind in kinds:
                    if kind == "e2e":
                        m = run_end_to_end(workdir, template, sources, size, rep, args.streams)
                        extra = f"  (sealing beforehand: {m.readings / m.seal_seconds:,.0f} readings/s)"
                    else:
                        m = run_local(kind, workdir, sources, size, rep)
                        extra = ""
                    results.append(m)
                    print(f"  {size:>5} readings/frame  rep {rep}  {kind:13} {m.readings:>9,} readings  "
                          f"{m.seconds:7.3f} s  {m.rate:>11,.0f} readings/s{extra}", flush=True)
        ratios = print_tables(results, args.readings_per_frame)
        worst = min(r for _, r, _ in ratios)
        worst_cpu = min(c for _, _, c in ratios)
        print(f"\nlowest ratio (medians of readings/s) {worst:.3f}, lowest CPU ratio {worst_cpu:.3f}; target {TARGET_RATIO}: "
              f"{'met' if worst >= TARGET_RATIO else 'NOT met'} by the first, {'met' if worst_cpu >= TARGET_RATIO else 'NOT met'} "
              "by the second (which is the one to trust when the load average shows other work on the machine)")
        if args.profile:
            size = 500 if 500 in args.readings_per_frame else args.readings_per_frame[0]
            profile_dir = workdir / "profile"
            profile_dir.mkdir(exist_ok=True)
            m = run_end_to_end(workdir, template, make_sources(stations, args.scale, size), size, 0, args.streams,
                               wrapper=["bench.hubprofile", str(profile_dir)])
            print(f"\nprofiled run ({size} readings/frame): {m.rate:,.0f} readings/s under cProfile "
                  "(slower than unprofiled; read the shares, not the rate)")
            print_profile(profile_dir, args.profile_top)
        print(f"  load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"whole run {time.perf_counter() - began:.0f} s")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
