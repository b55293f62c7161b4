"""Federated query benchmark (issue 4): five hub processes vs. one SQLite database.

    .venv/bin/python -m bench.query                  # full run: 10M readings, 5 repetitions
    .venv/bin/python -m bench.query --quick          # --readings 1000000 (1.45M: 2 sensors per hub), 3 repetitions
    .venv/bin/python -m bench.query --profile        # also EXPLAIN QUERY PLAN and the SQL alone per hub
    taskset -c 0 .venv/bin/python -m bench.query     # everything on one core: the same CPU for both sides

The same query, answered two ways, in the same run, one right after the other for every
repetition (centralised, federated, centralised, federated, ...), so load from other processes
falls on both. What counts is the ratio federated seconds / centralised seconds (target <= 1.5);
see docs/benchmarks.md, section "Federated query vs centralised (issue 4)".

(a) federated: five hubs (`smartregion serve`, TLS on), separate processes started by
    node.app.launcher.HubProcess, one per municipality of the demo region (node.app.region.STATIONS),
    every pair peered over the admin API. A research partner with its own key holds an
    agreement with every hub (proposed by the hub over the admin API, countersigned by the
    partner over Federation.ExchangeAgreements). The clock runs from the partner signing a
    Query.Run envelope for the Stavanger hub until the signed answer is back in this process:
    authentication, fan-out of Query.Partial to the four peers, each provider's own policy check
    and quota, its partial aggregate in SQLite (node/storage/query_tables.py), its signature,
    the entry hub's verification of every partial, the merge and its signature over the answer.
(b) centralised: one database made by node.storage.sqlite.SqliteStore (same schema, same
    PRAGMAs) holding every hub's sensors and readings. Region-wide queries call
    SqliteStore.aggregate() as it is (the SQL every hub runs). Per-municipality queries call
    it once per municipality, its WHERE clause restricted to that municipality's sensors
    (one more condition, on the first four characters of the sensor's label, which is
    "<kommunenummer> <station> #<k>": the schema has no municipality column). That is faster
    here than one statement grouped by municipality and bucket (--profile shows both). The
    cells are finished by the code that finishes the federated answer
    (federation.partials.build + merge, without signing).
Both answers are compared: same groups, buckets, counts and contributors, values equal to
1e-9 (relative); the quantile (from the coarsened sketch) must be identical.

Data: the real hourly readings of the five stations (pm25, temperature, wind_speed, rain),
2017-2021 from ../shared/data/air-quality-norway/ if it exists, else the 2019 copies in
node/data/air-quality-norway/. To reach --readings (default 10,000,000) every hub enrols
N sensors (the smallest N whose total reaches it): sensor k (k = 0..N-1) carries its station's
whole series, real timestamps, every value multiplied by (1 + k * 0.002) (k = 0 is the station
exactly; multiplying keeps zero rain zero and the sign of the few slightly negative PM2.5
values). The readings are not sent through sealed gRPC ingest (bench.ingest measures that):
with each hub stopped, its sensors are enrolled as AddSensor does (node.sensors.new_sensor:
own key, wrapped under the hub's key-encryption key) and the readings stored with
SqliteStore.commit_frames in frames of 1,000 readings, 100 frames per transaction, sensor
after sensor. The centralised database gets the same sensor records and the same frames.
The databases are cached under --workdir (default /tmp/smartregion-bench-query/) keyed by
the data, N and the schema version; later runs reuse them and only re-peer the hubs (new
ports) and reuse the partner agreements.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import astuple, dataclass, field
from pathlib import Path

import grpc

from bench.machine import machine_facts
from federation import answers, envelope, partials, partners, peers, sealing
from federation.partner_client import PartnerSession
from federation.query import asker
from federation.query.provider import RUN_METHOD
from federation.query_spec import buckets
from node import hubdir
from node.api.v1 import admin_pb2, agreement_pb2, query_pb2, query_service_pb2_grpc
from node.app.launcher import HubProcess
from node.app.region import STATIONS, Station
from node.app.sensor_client import read_station_csv
from node.client import AdminClient, open_channel
from node.clock import SYSTEM_CLOCK
from node.sensors import Enrolment, new_sensor
from node.storage import query_tables
from node.storage.base import AggregateRequest, CellRow, FrameToCommit, SensorRecord
from node.storage.migrations import LATEST_VERSION
from node.storage.sqlite import SqliteStore

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared" / "data" / "air-quality-norway"
BUNDLED_DIR = REPO_ROOT / "node" / "data" / "air-quality-norway"
DEFAULT_WORKDIR = Path("/tmp/smartregion-bench-query")
DATASET = "air_quality"
METRICS = ["pm25", "temperature", "wind_speed", "rain"]
PASSPHRASE = "bench-passphrase-not-for-production"
PARTNER = ("Universitetet i Stavanger", "971564679")
TARGET_RATIO = 1.5
SCALE_STEP = 0.002  # sensor k carries the station's values times (1 + k * SCALE_STEP)
FRAME_READINGS = 1_000
FRAMES_PER_COMMIT = 100
LOADER_VERSION = 1  # bump when the way the databases are built changes (invalidates the cache)
DEADLINE_MS = 60_000


# -- data ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSource:
    directory: Path
    start: dt.date  # inclusive
    end: dt.date  # exclusive

    @property
    def description(self) -> str:
        return f"{self.directory} ({self.start.isoformat()} .. {(self.end - dt.timedelta(days=1)).isoformat()})"

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.start}{self.end}".encode())
        for station in STATIONS:
            digest.update((self.directory / station.csv).read_bytes())
        return digest.hexdigest()


def data_source() -> DataSource:
    if all((SHARED_DIR / s.csv).is_file() for s in STATIONS):
        return DataSource(SHARED_DIR, dt.date(2017, 1, 1), dt.date(2022, 1, 1))
    return DataSource(BUNDLED_DIR, dt.date(2019, 1, 1), dt.date(2020, 1, 1))


def day_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def station_series(source: DataSource, station: Station) -> list[tuple[str, int, float]]:
    """Every reading of the station in the period, as (metric, time_ms, value), in file order."""
    return [(r.metric, r.time_ms, r.value)
            for r in read_station_csv(source.directory / station.csv, METRICS, source.start, source.end)]


def sensor_series(series: list[tuple[str, int, float]], k: int) -> list[tuple[str, int, float]]:
    if k == 0:
        return series
    factor = 1 + k * SCALE_STEP
    return [(m, t, v * factor) for m, t, v in series]


@dataclass
class Plan:
    """What the cache holds: per hub (station), its sensor records; sensor k of a hub carries
    sensor_series(station series, k)."""

    source: DataSource
    sensors_per_hub: int
    readings_per_station: list[int]

    @property
    def total(self) -> int:
        return self.sensors_per_hub * sum(self.readings_per_station)


def make_plan(source: DataSource, readings: int) -> Plan:
    per_station = [len(station_series(source, s)) for s in STATIONS]
    return Plan(source, max(1, math.ceil(readings / sum(per_station))), per_station)


# -- loading (with every hub stopped) ---------------------------------------------------------------
def _load_store(path: Path, jobs: list[tuple[int, list[SensorRecord]]], source: DataSource) -> tuple[int, float]:
    """Add the sensors to the database at `path` and store their readings with commit_frames.
    jobs: (station index, sensor records of that station, k = position in the list)."""
    started = time.perf_counter()
    store = SqliteStore(path)
    stored = 0
    try:
        now_ms = int(time.time() * 1000)
        for station_index, records in jobs:
            series = station_series(source, STATIONS[station_index])
            for k, record in enumerate(records):
                store.add_sensor(record)
                readings = sensor_series(series, k)
                frames = [FrameToCommit(record.sensor_id, n + 1, readings[i : i + FRAME_READINGS], now_ms)
                          for n, i in enumerate(range(0, len(readings), FRAME_READINGS))]
                for i in range(0, len(frames), FRAMES_PER_COMMIT):
                    stored += sum(o.stored for o in store.commit_frames(frames[i : i + FRAMES_PER_COMMIT]))
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    return stored, time.perf_counter() - started


@dataclass
class Cache:
    root: Path
    plan: Plan
    manifest: dict = field(default_factory=dict)

    @property
    def central_db(self) -> Path:
        return self.root / "central.db"

    def hub_dir(self, station: Station) -> Path:
        return self.root / "hubs" / station.slug

    @property
    def partner_key(self) -> Path:
        return self.root / "partner.key"


def cache_key(plan: Plan) -> str:
    text = json.dumps([LOADER_VERSION, LATEST_VERSION, plan.source.fingerprint(), plan.sensors_per_hub, SCALE_STEP,
                       FRAME_READINGS, FRAMES_PER_COMMIT, METRICS])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def prepare(workdir: Path, plan: Plan) -> Cache:
    """The hub directories and the centralised database, built now or found in the cache."""
    cache = Cache(workdir / f"data-{cache_key(plan)}", plan)
    manifest_file = cache.root / "manifest.json"
    if manifest_file.exists():
        cache.manifest = json.loads(manifest_file.read_text())
        print(f"  {'data':24} cached in {cache.root} (built {cache.manifest['built_at']}, "
              f"loading took {cache.manifest['load_seconds']:.0f} s)")
        return cache
    if cache.root.exists():
        shutil.rmtree(cache.root)  # an interrupted build
    (cache.root / "hubs").mkdir(parents=True)
    print(f"  {'data':24} building {cache.root} ({plan.total:,} readings in each of the two layouts) ...", flush=True)
    started = time.perf_counter()
    records: list[list[SensorRecord]] = []
    for station in STATIONS:
        hubdir.init_hub(cache.hub_dir(station), station.municipality, PASSPHRASE.encode())
        identity = hubdir.HubDir(cache.hub_dir(station)).identity(PASSPHRASE.encode())
        records.append([new_sensor(Enrolment(DATASET, METRICS, station.lat, station.lon,
                                             label=f"{station.municipality} {station.name} #{k + 1}"),
                                   identity.key_encryption_key, identity.hub_id, SYSTEM_CLOCK.now_ms())[0]
                        for k in range(plan.sensors_per_hub)])
    # Two processes (the machine has 2 cores): the centralised database (every sensor) in one,
    # the five hubs' databases (the same sensors, split by municipality) in the other.
    with ProcessPoolExecutor(2) as pool:
        central = pool.submit(_load_store, cache.central_db, list(enumerate(records)), plan.source)
        hub_jobs = [pool.submit(_load_store, cache.hub_dir(s) / hubdir.DB_FILE, [(i, records[i])], plan.source)
                    for i, s in enumerate(STATIONS)]
        central_stored, central_s = central.result()
        hubs = [job.result() for job in hub_jobs]
    seconds = time.perf_counter() - started
    if central_stored != plan.total or sum(n for n, _ in hubs) != plan.total:
        raise RuntimeError(f"stored {central_stored:,} (centralised) and {sum(n for n, _ in hubs):,} (hubs) "
                           f"of {plan.total:,} readings")
    cache.manifest = {
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": str(plan.source.directory), "start": plan.source.start.isoformat(), "end": plan.source.end.isoformat(),
        "sensors_per_hub": plan.sensors_per_hub, "readings": plan.total,
        "readings_per_hub": {s.municipality: n for s, (n, _) in zip(STATIONS, hubs, strict=True)},
        "load_seconds": seconds, "central_load_seconds": central_s, "hub_load_seconds": [s for _, s in hubs],
        "central_db_bytes": cache.central_db.stat().st_size,
        "hub_db_bytes": {s.municipality: (cache.hub_dir(s) / hubdir.DB_FILE).stat().st_size for s in STATIONS},
    }
    manifest_file.write_text(json.dumps(cache.manifest, indent=2))  # last: marks a complete cache
    print(f"  {'loading took':24} {seconds:.0f} s wall (centralised {central_s:.0f} s in one process, "
          f"the five hubs {sum(s for _, s in hubs):.0f} s in the other)", flush=True)
    return cache


def describe_cache(cache: Cache) -> str:
    m = cache.manifest
    return (f"centralised database {m['central_db_bytes'] / 2**20:.0f} MiB; hub databases "
            + ", ".join(f"{k} {v / 2**20:.0f} MiB ({m['readings_per_hub'][k]:,} readings)" for k, v in m["hub_db_bytes"].items()))


# -- the region of hub processes --------------------------------------------------------------------
def terms_toml(source: DataSource, min_group_size: int) -> str:
    until = (dt.date.today() + dt.timedelta(days=365)).isoformat()
    days = (source.end - source.start).days
    return f"""
[purpose]
code = "research"
description = "Benchmark: fine particulate matter across the region"
[data]
datasets = ["air_quality"]
metrics = ["pm25", "temperature"]
aggregates = ["count", "sum", "mean", "min", "max", "stddev", "quantile"]
group_by = ["municipality", "time_bucket"]
smallest_bucket = "day"
longest_window_days = {days}
min_group_size = {min_group_size}
queries_per_day = 100000
[validity]
from = "now"
until = {until}
"""


class Region:
    def __init__(self, cache: Cache, min_group_size: int) -> None:
        self.cache = cache
        self.min_group_size = min_group_size
        self.hubs = [HubProcess(cache.hub_dir(s), PASSPHRASE) for s in STATIONS]
        self.hub_ids = [hubdir.HubDir(cache.hub_dir(s)).config().hub_id for s in STATIONS]
        self.partner: partners.PartnerKey | None = None
        self.agreements: dict[str, str] = {}
        self.channel = None
        self.stub = None

    @property
    def entry(self) -> HubProcess:
        return self.hubs[0]  # the partner asks Stavanger, as in tests/test_query_region.py

    def address(self, i: int) -> str:
        return self.hubs[i].endpoint["grpc_address"]

    def start(self) -> None:
        with ThreadPoolExecutor(len(self.hubs)) as pool:
            list(pool.map(lambda hub: hub.start(timeout=60), self.hubs))

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        for hub in self.hubs:
            hub.stop()

    def federate(self) -> None:
        """Peer every pair (again: the ports are new every run), and make sure the partner holds
        an active agreement with every hub."""
        for i, hub in enumerate(self.hubs):
            with AdminClient(hub.data_dir) as admin:
                for j in range(len(self.hubs)):
                    if j != i:
                        admin.call("AddPeer", admin_pb2.AddPeerRequest(address=self.address(j), hub_id=self.hub_ids[j]))
        key_file = self.cache.partner_key
        if key_file.exists():
            self.partner = partners.load_private(key_file, PASSPHRASE.encode())
        else:
            self.partner = partners.keygen(key_file, PARTNER[0], PASSPHRASE.encode())
        terms = terms_toml(self.cache.plan.source, self.min_group_size)
        window_days = (self.cache.plan.source.end - self.cache.plan.source.start).days
        active_state = agreement_pb2.AgreementState.AGREEMENT_STATE_ACTIVE
        to_accept = []
        for i, hub in enumerate(self.hubs):
            with AdminClient(hub.data_dir) as admin:
                registered = admin.call("ListPartners", admin_pb2.ListPartnersRequest()).partners
                if not any(p.partner_id == self.partner.partner_id for p in registered):
                    admin.call("AddPartner", admin_pb2.AddPartnerRequest(
                        name=PARTNER[0], org_number=PARTNER[1],
                        public_key_file=partners.public_file_path(key_file).read_bytes()))
                # Keep one active agreement with the partner on these terms (from an earlier run);
                # revoke any other, so that exactly these terms answer.
                keep = None
                for view in admin.call("ListAgreements", admin_pb2.ListAgreementsRequest()).agreements:
                    if view.counterparty_id != self.partner.partner_id or view.state != active_state:
                        continue
                    t = view.terms
                    if keep is None and t.min_group_size == self.min_group_size and t.longest_window_days == window_days:
                        keep = t.agreement_id
                    else:
                        admin.call("RevokeAgreement", admin_pb2.RevokeAgreementRequest(
                            agreement_id=t.agreement_id, reason="benchmark: other terms asked for"))
                if keep:
                    self.agreements[self.hub_ids[i]] = keep
                    continue
                offered = admin.call("ProposeAgreement", admin_pb2.ProposeAgreementRequest(
                    terms_toml=terms, to=self.partner.partner_id))
                to_accept.append((i, offered.terms.agreement_id))

        async def countersign():
            for i, agreement_id in to_accept:
                async with PartnerSession(self.partner, self.address(i), self.hub_ids[i]) as session:
                    outcome = await session.accept(agreement_id)
                if outcome.state != agreement_pb2.AgreementState.AGREEMENT_STATE_ACTIVE:
                    raise RuntimeError(f"the agreement with hub {self.hub_ids[i]} is not active after countersigning")
                self.agreements[self.hub_ids[i]] = agreement_id

        asyncio.run(countersign())
        # The partner's channel to the entry hub: certificate fetched and checked against the
        # hub id, TLS handshake done, before any clock starts.
        cert_pem = asyncio.run(peers.fetch_certificate(self.address(0)))
        if peers.hub_id_of_certificate(cert_pem) != self.hub_ids[0]:
            raise RuntimeError("the entry hub presents another hub's certificate")
        self.channel = open_channel(self.address(0), hub_id=self.hub_ids[0], cert_pem=cert_pem)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = query_service_pb2_grpc.QueryStub(self.channel)

    def ask(self, spec: query_pb2.QuerySpec):
        """The partner signs the query (with a fresh answer key) for the entry hub, sends it with
        Query.Run, and opens, verifies and merges the sealed partials, as every asker does."""
        answer_key = sealing.new_answer_key()
        asked = query_pb2.QuerySpec()
        asked.CopyFrom(spec)
        asked.answer_key = sealing.public_raw(answer_key)
        signed = envelope.make(self.partner.key, self.partner.partner_id, self.hub_ids[0], RUN_METHOD, query=asked)
        sealed = self.stub.Run(signed, timeout=DEADLINE_MS / 1000 + 30)
        return asker.open_answer(sealed, answer_key, self.partner.public_key)

    def cpu_seconds(self) -> list[float]:
        return [_cpu_seconds(Path(f"/proc/{hub.process.pid}/stat")) for hub in self.hubs]


def _cpu_seconds(stat_path: Path) -> float:
    """utime + stime (all threads) from a /proc stat file (Linux)."""
    try:
        fields = stat_path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the centralised answer ------------------------------------------------------------------------
def _request(spec: query_pb2.QuerySpec) -> AggregateRequest:
    # As QueryService.compute builds it; the partner's agreement needs no consent (air quality
    # is not personal data), so consent_purpose is None at every hub as well.
    return AggregateRequest(spec.dataset, spec.metric, spec.start_ms, spec.end_ms, spec.bucket, None)


MUNICIPALITY_SQL = "substr(s.label, 1, 4)"  # the label is "<kommunenummer> <station> #<k>"


def municipalities(store: SqliteStore, dataset: str) -> list[str]:
    return [m for (m,) in store.conn.execute(
        f"SELECT DISTINCT {MUNICIPALITY_SQL} FROM sensors s WHERE s.dataset = ? ORDER BY 1", (dataset,))]


def aggregate_in(store: SqliteStore, req: AggregateRequest, municipality: str | None, quantile: bool,
                 ) -> tuple[list[CellRow], dict[int, query_pb2.CoarseSketch] | None]:
    """SqliteStore.aggregate() itself, its WHERE clause restricted to the municipality's sensors
    (one more condition on the sensors table: the rest of the SQL is exactly what hubs run),
    and for a quantile each bucket's coarse sketch, as a provider coarsens it (k = 1)."""
    original = store._where

    def where(r: AggregateRequest) -> tuple[str, list]:
        sql, params = original(r)
        return f"{sql} AND {MUNICIPALITY_SQL} = ?", [*params, municipality]

    if municipality is not None:
        store._where = where  # an instance attribute: shadows the method for this call only
    try:
        cells = store.aggregate(req)
        if not quantile:
            return cells, None
        return cells, partials.coarse_sketches(store.sketch_bins_by_contributor(req), partials.coarse_threshold(1))
    finally:
        if municipality is not None:
            del store._where


def single_group_by(store: SqliteStore, req: AggregateRequest) -> int:
    """The alternative: one statement grouped by municipality and bucket (informational,
    --profile: it is slower than five restricted aggregate() calls, so it is not the baseline)."""
    bucket = query_tables._BUCKET_SQL.get(req.bucket, str(int(req.start_ms)))
    where, params = store._where(req)
    return len(store.conn.execute(
        f"SELECT {MUNICIPALITY_SQL} AS g, {bucket} AS b, count(*), sum(r.value), sum(r.value * r.value), min(r.value), "
        f"max(r.value), count(DISTINCT s.ref) FROM readings r JOIN sensors s ON s.ref = r.sensor_ref "
        f"WHERE {where} GROUP BY g, b ORDER BY g, b", params).fetchall())


def central_answer(store: SqliteStore, spec: query_pb2.QuerySpec) -> list[query_pb2.Row]:
    req, quantile = _request(spec), spec.aggregate == "quantile"
    if spec.group_by == "region":  # (a region-wide quantile is coarsened per hub: not comparable, not asked)
        groups = {"region": aggregate_in(store, req, None, quantile)}
    else:
        groups = {m: aggregate_in(store, req, m, quantile) for m in municipalities(store, spec.dataset)}
    built = [partials.build(b"", "", g, "", 1, g, cells, 0, spec.aggregate, quantile=spec.quantile, coarse=coarse)
             for g, (cells, coarse) in groups.items()]
    return partials.merge(built, spec)


def compare(central: list[query_pb2.Row], federated: list[query_pb2.Row]) -> str:
    """'' if the two answers agree, else what differs."""
    a = {(r.group, r.bucket_start_ms): r for r in central}
    b = {(r.group, r.bucket_start_ms): r for r in federated}
    if set(a) != set(b):
        return f"different cells: {len(set(a) - set(b))} only centralised, {len(set(b) - set(a))} only federated"
    for key, x in a.items():
        y = b[key]
        if (x.readings, x.contributors, x.suppressed) != (y.readings, y.contributors, y.suppressed):
            return f"cell {key}: readings/contributors {x.readings}/{x.contributors} vs {y.readings}/{y.contributors}"
        if not math.isclose(x.value, y.value, rel_tol=1e-9, abs_tol=1e-12):
            return f"cell {key}: value {x.value!r} vs {y.value!r}"
    return ""


# -- the queries -------------------------------------------------------------------------------------
@dataclass
class Query:
    name: str
    spec: query_pb2.QuerySpec
    target: bool = True  # False: informational, not held against the target


def queries(source: DataSource) -> list[Query]:
    start, end = day_ms(source.start), day_ms(source.end)
    years = f"{source.start.year}-{source.end.year - 1}" if source.end.year - source.start.year > 1 else str(source.start.year)
    day = dt.date(source.end.year - 1, 6, 1)
    common = dict(dataset=DATASET, metric="pm25", start_ms=start, end_ms=end, purpose_code="research", deadline_ms=DEADLINE_MS)
    return [
        Query(f"monthly mean PM2.5 per municipality, {years}",
              query_pb2.QuerySpec(aggregate="mean", bucket="month", group_by="municipality", **common)),
        Query(f"region-wide yearly mean PM2.5, {years}",
              query_pb2.QuerySpec(aggregate="mean", bucket="year", group_by="region", **common)),
        Query(f"median PM2.5 per municipality (computed at each provider), {years} as one window",
              query_pb2.QuerySpec(aggregate="quantile", quantile=0.5, bucket="window", group_by="municipality", **common)),
        # Informational: a query that touches almost nothing shows the fixed cost of federating.
        Query(f"fixed cost: region-wide mean PM2.5 of one day ({day.isoformat()})",
              query_pb2.QuerySpec(aggregate="mean", bucket="day", group_by="region",
                                  **{**common, "start_ms": day_ms(day), "end_ms": day_ms(day + dt.timedelta(days=1))}),
              target=False),
    ]


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # centralised: this thread; federated: all five hub processes
    extra: list[dict] = field(default_factory=list)

    @property
    def first(self) -> float:
        return self.seconds[0]

    @property
    def median(self) -> float:
        warm = self.seconds[1:] or self.seconds
        return statistics.median(warm)

    @property
    def median_cpu(self) -> float:
        warm = self.cpu[1:] or self.cpu
        return statistics.median(warm)


def run_queries(region: Region, cache: Cache, repeat: int) -> list[tuple[Query, Timing, Timing, list]]:
    results = []
    store = SqliteStore(cache.central_db)  # a fresh connection: its page cache is empty, like the hubs'
    try:
        for query in queries(cache.plan.source):
            central, federated = Timing(), Timing()
            rows_c = rows_f = None
            for rep in range(1, repeat + 1):
                cpu0, t0 = time.thread_time(), time.perf_counter()
                rows_c = central_answer(store, query.spec)
                central.seconds.append(time.perf_counter() - t0)
                central.cpu.append(time.thread_time() - cpu0)

                hub_cpu0 = region.cpu_seconds()
                t0 = time.perf_counter()
                answer = region.ask(query.spec)
                federated.seconds.append(time.perf_counter() - t0)
                hub_cpu = [b - a for a, b in zip(hub_cpu0, region.cpu_seconds(), strict=True)]
                federated.cpu.append(sum(hub_cpu))
                if answer.partial or len(answer.provenance) != len(region.hubs):
                    raise RuntimeError(f"{query.name}: a partial answer: "
                                       + "; ".join(f"{p.municipality} {p.status} {p.reason}" for p in answer.provenance))
                wrong = [p.municipality for p in answer.provenance if p.agreement_id != region.agreements[p.hub_id]]
                if wrong:
                    raise RuntimeError(f"{query.name}: hubs {wrong} answered under another agreement than the benchmark's")
                rows_f = list(answer.rows)
                federated.extra.append({
                    "peer_ms": {p.municipality: p.latency_ms for p in answer.provenance},
                    "hub_cpu": hub_cpu,
                })
                print(f"    rep {rep}  {query.name[:48]:48}  centralised {central.seconds[-1]:7.3f} s   "
                      f"federated {federated.seconds[-1]:7.3f} s", flush=True)
                if rep == 1:
                    difference = compare(rows_c, rows_f)
                    if difference:
                        raise RuntimeError(f"{query.name}: the two answers differ: {difference}")
                    answers.verify(answers.to_json(answer))  # offline verification, outside the clock
            results.append((query, central, federated, rows_f))
    finally:
        store.close()
    return results


# -- profile: where the time goes ----------------------------------------------------------------------
def _thread_seconds(fn) -> tuple[float, object]:
    fn()  # warm: statements prepared, pages in SQLite's cache
    started = time.thread_time()
    result = fn()
    return time.thread_time() - started, result


def bucket_table_cells(store: SqliteStore, req: AggregateRequest) -> list[CellRow]:
    """A candidate for calendar buckets (not what the hubs run): the window's buckets in a
    temporary table, joined to the readings, so that SQLite seeks each (bucket, sensor) range
    of the primary key and groups in bucket order: no strftime per reading and no sort."""
    store.conn.execute("CREATE TEMP TABLE IF NOT EXISTS bench_buckets (b INTEGER PRIMARY KEY, e INTEGER NOT NULL)")
    store.conn.execute("DELETE FROM bench_buckets")
    store.conn.executemany("INSERT INTO bench_buckets VALUES (?, ?)", buckets(req.bucket, req.start_ms, req.end_ms))
    return [CellRow(*row) for row in store.conn.execute(
        "SELECT q.b, count(*), sum(r.value), sum(r.value * r.value), min(r.value), max(r.value), count(DISTINCT s.ref) "
        "FROM bench_buckets q CROSS JOIN sensors s JOIN readings r "
        "ON r.sensor_ref = s.ref AND r.time_ms >= q.b AND r.time_ms < q.e "
        "WHERE s.dataset = ? AND r.metric = ? GROUP BY q.b ORDER BY q.b", (req.dataset, req.metric))]


def print_profile(cache: Cache, results) -> None:
    print("\nProfile. CPU seconds of this thread, second of two runs, in this process (no gRPC, crypto or policy).")
    dbs = [("central", cache.central_db)] + [(s.municipality, cache.hub_dir(s) / hubdir.DB_FILE) for s in STATIONS]
    for query, central, federated, _ in results:
        req = _request(query.spec)
        print(f"\n-- {query.name}")
        store = SqliteStore(cache.central_db)
        try:
            bucket = query_tables._BUCKET_SQL.get(req.bucket, str(int(req.start_ms)))
            where, params = store._where(req)
            sql = (f"SELECT {bucket} AS b, count(*) FROM readings r JOIN sensors s ON s.ref = r.sensor_ref "
                   f"WHERE {where} GROUP BY b ORDER BY b")
            print("   EXPLAIN QUERY PLAN of the aggregate SQL: "
                  + " | ".join(row[3] for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql, params)))
            if query.spec.group_by == "municipality":
                per, _ = _thread_seconds(functools.partial(central_answer, store, query.spec))
                one, _ = _thread_seconds(functools.partial(single_group_by, store, req))
                print(f"   centralised: aggregate() per municipality (the baseline) {per:.3f} s; "
                      f"one statement GROUP BY municipality, bucket {one:.3f} s")
        finally:
            store.close()
        line = []
        for name, path in dbs:
            store = SqliteStore(path)
            try:
                seconds, cells = _thread_seconds(functools.partial(store.aggregate, req))
                entry = f"{name} {seconds:.3f}"
                if req.bucket in ("month", "year"):
                    candidate, other = _thread_seconds(functools.partial(bucket_table_cells, store, req))
                    if [astuple(c) for c in other] != [astuple(c) for c in cells]:
                        raise RuntimeError(f"the bucket-table candidate differs on {name}")
                    entry += f" -> {candidate:.3f}"
                line.append(entry)
            finally:
                store.close()
        hubs_sum = sum(float(e.split()[1]) for e in line[1:])
        print("   aggregate() alone, s" + (" (-> the bucket-table candidate, same cells)" if req.bucket in ("month", "year") else "")
              + ": " + ", ".join(line) + f"; five hubs together {hubs_sum:.3f}")
        peer = {m: statistics.median(e["peer_ms"][m] for e in federated.extra[1:] or federated.extra) / 1000
                for m in federated.extra[0]["peer_ms"]}
        print("   federated: median partial latency as the entry hub saw it (s): "
              + ", ".join(f"{m} {s:.3f}" for m, s in peer.items())
              + f"; whole answer {federated.median:.3f} s, centralised {central.median:.3f} s")


# -- reporting ---------------------------------------------------------------------------------------
def print_table(results) -> float:
    print()
    print("Seconds per query, wall clock in this process. first = repetition 1 (cold-ish: first time this query "
          "runs since the hubs and the centralised connection were opened; the files are in the OS page cache); "
          "median = of the other repetitions. ratio = federated / centralised, of the medians (target <= "
          f"{TARGET_RATIO}). CPU s: centralised = the querying thread; federated = all five hub processes together.")
    print()
    print("| query | centralised s (first / median) | federated s (first / median) | **ratio** (median) | ratio (first) "
          "| target met? | CPU s centralised / federated | cells |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    worst = 0.0
    for query, central, federated, rows in results:
        ratio = federated.median / central.median
        if query.target:
            worst = max(worst, ratio)
            verdict = "yes" if ratio <= TARGET_RATIO else "NO"
        else:
            verdict = "n/a (informational)"
        print(f"| {query.name} | {central.first:.4f} / {central.median:.4f} | {federated.first:.4f} / {federated.median:.4f} "
              f"| **{ratio:.2f}** | {federated.first / central.first:.2f} | {verdict} "
              f"| {central.median_cpu:.2f} / {federated.median_cpu:.2f} | {len(rows)} |")
    return worst


# -- main --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=10_000_000,
                        help="readings in total, at least (default 10,000,000): sets the sensors per hub")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each query (default 5)")
    parser.add_argument("--min-group-size", type=int, default=1,
                        help="the agreements' minimum group size (default 1, as in the demo and the tests; above 1 "
                             "a provider may check finer sub-cells too)")
    parser.add_argument("--quick", action="store_true", help="--readings 1000000 --repeat 3")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards: EXPLAIN QUERY PLAN, and each hub's aggregate() alone in this process")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"where the generated databases are cached (default {DEFAULT_WORKDIR})")
    args = parser.parse_args(argv)
    if args.quick:
        args.readings, args.repeat = 1_000_000, 3
    if args.repeat < 2 or args.readings < 1:
        parser.error("--repeat must be at least 2 and --readings positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    print("smartregion federated query benchmark (issue 4)")
    for key, value in machine_facts(args.workdir):
        print(f"  {key:24} {value}")
    source = data_source()
    plan = make_plan(source, args.readings)
    print(f"  {'stations':24} {source.description}: {sum(plan.readings_per_station):,} readings "
          f"({', '.join(METRICS)})")
    print(f"  {'sensors':24} {plan.sensors_per_hub} per hub, 5 hubs: {plan.total:,} readings "
          f"(sensor k: the station's series x (1 + {SCALE_STEP} k))")
    if args.min_group_size > plan.sensors_per_hub:
        raise SystemExit(f"--min-group-size {args.min_group_size} is above the {plan.sensors_per_hub} sensors per hub: "
                         "every cell would be withheld; ask for more --readings")
    cache = prepare(args.workdir, plan)
    print(f"  {'databases':24} {describe_cache(cache)}")
    region = Region(cache, args.min_group_size)
    try:
        t0 = time.perf_counter()
        region.start()
        region.federate()
        print(f"  {'region':24} 5 hub processes started, 20 peerings, partner agreements (minimum group size "
              f"{args.min_group_size}) in {time.perf_counter() - t0:.1f} s; the partner asks {STATIONS[0].name} "
              f"({STATIONS[0].municipality})")
        print(f"  {'measured':24} per query and repetition: centralised, then federated; {args.repeat} repetitions")
        results = run_queries(region, cache, args.repeat)
    finally:
        region.stop()
    worst = print_table(results)
    readings_pm25 = results[1][3]
    print(f"\n  PM2.5 readings aggregated per query: {sum(r.readings for r in readings_pm25):,} of {plan.total:,} "
          f"stored; both answers identical (counts, contributors; values to 1e-9) and the federated answer "
          f"verifies offline")
    print(f"\nhighest ratio {worst:.2f} against the target {TARGET_RATIO}: {'met' if worst <= TARGET_RATIO else 'NOT met'}")
    if args.profile:
        print_profile(cache, results)
    print(f"  load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"whole run {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
