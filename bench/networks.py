"""Network-door benchmark: readings/s through the ChirpStack MQTT door beside the native gRPC
door and bare SQLite, all in the same run on the same machine.

    .venv/bin/python -m bench.networks             # 8,760 uplinks (a year of one station, hourly)
    .venv/bin/python -m bench.networks --uplinks 2000

Data: Knarrdalstranda (Porsgrunn) 2019, temperature and wind_speed: one reading hour = one
LoRaWAN uplink (Cayenne LPP, FRMPayload encrypted under the device's AppSKey, as a device sends
it), i.e. about two readings per uplink, the size of real LoRaWAN traffic.

(a) bare: the same rows into a SqliteStore-made database (WAL, synchronous=FULL), one
    transaction per uplink, as the door commits them (and, for reference, one transaction for
    all rows).
(b) grpc: a hub process (`smartregion serve`, TLS); the same readings sealed one frame per
    hour (before the clock), sent in one StreamFrames stream. The stream commits in chunks, so
    this is the native door at its best.
(c) chirpstack: the same hub, a LoRaWAN device enrolled end-to-end; ChirpStack-shaped JSON `up`
    events (built before the clock) published with QoS 1 to a local Mosquitto; the clock stops
    when the hub has committed every reading. The hub decrypts, decodes, validates and commits
    each uplink in its own transaction before acknowledging it to the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.machine import machine_facts
from node.api.v1 import admin_pb2, ingest_pb2_grpc
from node.app import network_replay
from node.app.broker import Mosquitto
from node.app.launcher import HubProcess
from node.app.sensor_client import Sensor, SensorCredential, read_station_csv
from node.client import AdminClient
from node.hubdir import init_hub
from node.storage.sqlite import SqliteStore

PASSPHRASE = "bench-passphrase-0123456789"
STATION = Path(__file__).resolve().parents[1] / "node" / "data" / "air-quality-norway" / "Knarrdalstranda.csv"
METRICS = ["temperature", "wind_speed"]
DEV_EUI = "70b3d57ed005b001"
APP_S_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")


def hours(limit: int) -> list[list]:
    readings = list(read_station_csv(STATION, METRICS, dt.date(2019, 1, 1), dt.date(2020, 1, 1)))
    by_hour: dict[int, list] = {}
    for r in readings:
        by_hour.setdefault(r.time_ms, []).append(r)
    return [by_hour[t] for t in sorted(by_hour)][:limit]


def bare(path: Path, batches: list[list], per_uplink: bool) -> float:
    SqliteStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("INSERT INTO sensors (sensor_id, dataset, metrics, latitude, longitude, wrapped_key, enrolled_at_ms) "
                 "VALUES ('s', 'air_quality', '[]', 0, 0, x'00', 0)")
    ref = conn.execute("SELECT ref FROM sensors").fetchone()[0]
    rows = [[(ref, r.metric, r.time_ms, r.value) for r in batch] for batch in batches]
    started = time.perf_counter()
    groups = rows if per_uplink else [[row for batch in rows for row in batch]]
    for group in groups:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR IGNORE INTO readings (sensor_ref, metric, time_ms, value) VALUES (?, ?, ?, ?)", group)
        conn.execute("UPDATE sensors SET last_counter = last_counter + 1 WHERE ref = ?", (ref,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def readings_of(data_dir: Path, sensor_id: str) -> int:
    with AdminClient(data_dir) as admin:
        sensors = admin.call("ListSensors", admin_pb2.ListSensorsRequest()).sensors
    return next(s.readings for s in sensors if s.sensor_id == sensor_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uplinks", type=int, default=8760)
    args = parser.parse_args()
    batches = hours(args.uplinks)
    total = sum(len(b) for b in batches)
    with tempfile.TemporaryDirectory(prefix="bench-networks-") as tmp:
        work = Path(tmp)
        for name, value in machine_facts(work):
            print(f"{name:>10}: {value}")
        print(f"{'data':>10}: {len(batches)} uplinks, {total} readings ({', '.join(METRICS)}), Knarrdalstranda 2019")
        t_bare_each = bare(work / "bare-each.db", batches, per_uplink=True)
        t_bare_one = bare(work / "bare-one.db", batches, per_uplink=False)

        broker = Mosquitto(work / "broker").start()
        data_dir = work / "hub"
        init_hub(data_dir, "4001", PASSPHRASE.encode())
        (data_dir / "networks.toml").write_text(network_replay.lpp_codec_toml("lpp", METRICS) + f"""
[[mqtt]]
name = "chirpstack"
format = "chirpstack"
host = "127.0.0.1"
port = {broker.port}
tls = false
topics = ["application/bench/device/+/event/up"]
""")
        hub = HubProcess(data_dir, PASSPHRASE).start(timeout=60)
        try:
            with AdminClient(data_dir) as admin:
                native = admin.call("AddSensor", admin_pb2.AddSensorRequest(dataset="air_quality", metrics=METRICS, latitude=59.1,
                                                                            longitude=9.6, label="grpc"))
                lora = admin.call("AddSensor", admin_pb2.AddSensorRequest(
                    dataset="air_quality", metrics=METRICS, latitude=59.1, longitude=9.6, label="lorawan", lorawan_dev_eui=DEV_EUI,
                    lorawan_app_s_key=APP_S_KEY.hex(), codec="lpp"))
            (work / "native.json").write_bytes(native.credential_json)
            sensor = Sensor(SensorCredential.load(work / "native.json"))
            sealed = sensor.seal(batches)
            started = time.perf_counter()
            with sensor.channel() as channel:
                response = sensor.send_stream(ingest_pb2_grpc.IngestStub(channel), sealed, timeout=600)
            t_grpc = time.perf_counter() - started
            assert response.readings_stored == total, response

            device = network_replay.LorawanDevice(DEV_EUI, bytes.fromhex("26011bda"), APP_S_KEY, application_id="bench")
            messages = list(network_replay.lorawan_messages("chirpstack", device, [r for b in batches for r in b], METRICS))
            started = time.perf_counter()
            asyncio.run(network_replay.publish("127.0.0.1", broker.port, messages, client_id="bench-publisher"))
            t_published = time.perf_counter() - started
            while readings_of(data_dir, lora.sensor.sensor_id) < total:
                time.sleep(0.02)
            t_mqtt = time.perf_counter() - started
        finally:
            hub.stop()
            broker.stop()

    def line(name: str, seconds: float, note: str = "") -> None:
        print(f"{name:<34} {total / seconds:>10,.0f} readings/s {len(batches) / seconds:>9,.0f} msgs/s  {seconds:7.2f} s  {note}")

    print()
    line("bare SQLite, one txn per uplink", t_bare_each, "(baseline)")
    line("bare SQLite, one txn for all", t_bare_one)
    line("native gRPC stream (sealed frames)", t_grpc)
    line("ChirpStack MQTT door (end to end)", t_mqtt, f"(publishing took {t_published:.2f} s)")
    print()
    print(f"ratio chirpstack / bare per uplink : {t_bare_each / t_mqtt:.2f}")
    print(f"ratio chirpstack / native gRPC     : {t_grpc / t_mqtt:.2f}")


if __name__ == "__main__":
    main()
