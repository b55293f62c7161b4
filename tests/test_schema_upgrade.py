"""A hub's database from the first release opens with today's code: data intact, schema current.

The first schema (version 1) is written out here as it shipped (`git show 76da3f8:node/storage/
migrations.py`), not imported, so that editing a shipped migration — which would leave old
databases with a schema no fresh one has — fails here. The database is filled the way the first
release wrote it (plain SQL, user_version 1) and then opened with SqliteStore, which migrates it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from node.storage import migrations
from node.storage.base import AggregateRequest, FrameToCommit, ReadingFilter
from node.storage.sqlite import SqliteStore

# Version 1 as it shipped in 76da3f8 ("Hub node skeleton").
FIRST_SCHEMA = """
CREATE TABLE sensors (
    ref INTEGER PRIMARY KEY,
    sensor_id TEXT NOT NULL UNIQUE,
    dataset TEXT NOT NULL,
    metrics TEXT NOT NULL,              -- JSON array of metric names
    latitude REAL NOT NULL,
    longitude REAL NOT NULL,
    subject_id TEXT NOT NULL DEFAULT '',
    label TEXT NOT NULL DEFAULT '',
    wrapped_key BLOB NOT NULL,          -- AES-256-GCM under the hub's key-encryption key
    enrolled_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER,
    last_counter INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER,
    frames_accepted INTEGER NOT NULL DEFAULT 0,
    frames_rejected INTEGER NOT NULL DEFAULT 0,
    readings INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sensors_dataset ON sensors(dataset);
CREATE TABLE readings (
    sensor_ref INTEGER NOT NULL REFERENCES sensors(ref),
    metric TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (sensor_ref, metric, time_ms)
) WITHOUT ROWID;
CREATE TABLE rejections (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
PRAGMA user_version = 1;
"""

T0 = 1_546_300_800_000  # 2019-01-01T00:00Z
HOUR_MS = 3_600_000
# (sensor_id, dataset, metrics, lat, lon, subject, label, wrapped key, enrolled, revoked, last counter, last seen,
#  frames accepted, frames rejected)
SENSORS = [
    ("a1" * 16, "air_quality", ["pm25", "pm10"], 58.97, 5.73, "", "Kannik", b"\x01" * 60, T0 - 5, None, 41, T0 + 9 * HOUR_MS, 10, 2),
    ("b2" * 16, "energy", ["energy_kwh"], 59.91, 10.75, "meter-7", "Flat 7", b"\x02" * 60, T0 - 9, T0 + 99, 7, T0, 3, 0),
]
READINGS = {  # sensor_id -> (metric, time_ms, value)
    "a1" * 16: [(m, T0 + h * HOUR_MS, v) for h in range(10) for m, v in (("pm25", 5.0 + h), ("pm10", 9.5 - h / 4))],
    "b2" * 16: [("energy_kwh", T0 + h * HOUR_MS, 0.25 * h) for h in range(3)],
}
REJECTIONS = {"authentication_failed": 2, "replayed": 5}


def first_release_database(path: Path) -> None:
    """What the first release left on disk: its schema, and data written with plain SQL."""
    conn = sqlite3.connect(path)
    conn.executescript(FIRST_SCHEMA)
    with conn:
        for ref, (sid, ds, metrics, lat, lon, subject, label, key, enrolled, revoked, counter, seen, ok, bad) in enumerate(SENSORS, 1):
            conn.execute(
                "INSERT INTO sensors (ref, sensor_id, dataset, metrics, latitude, longitude, subject_id, label, wrapped_key,"
                " enrolled_at_ms, revoked_at_ms, last_counter, last_seen_ms, frames_accepted, frames_rejected, readings)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ref, sid, ds, json.dumps(metrics), lat, lon, subject, label, key, enrolled, revoked, counter, seen, ok, bad,
                 len(READINGS[sid])))
            conn.executemany("INSERT INTO readings (sensor_ref, metric, time_ms, value) VALUES (?, ?, ?, ?)",
                             [(ref, *reading) for reading in READINGS[sid]])
        conn.executemany("INSERT INTO rejections (reason, count) VALUES (?, ?)", REJECTIONS.items())
    conn.close()


def schema_of(path: Path) -> list[tuple[str, str, str, list[tuple]]]:
    """Every table and index: its SQL without comments and layout, and each table's columns."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()
        return [(kind, name, " ".join(re.sub(r"--[^\n]*", "", sql or "").split()),
                 conn.execute(f"PRAGMA table_xinfo({name})").fetchall() if kind == "table" else [])
                for kind, name, sql in rows]
    finally:
        conn.close()


@pytest.fixture
def upgraded(tmp_path):
    path = tmp_path / "hub.db"
    first_release_database(path)
    store = SqliteStore(path)
    yield store, path
    store.close()


def test_a_first_release_database_is_upgraded_to_the_current_schema(upgraded, tmp_path):
    store, path = upgraded
    assert store.schema_version() == migrations.LATEST_VERSION > 1
    assert store.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert store.conn.execute("PRAGMA foreign_key_check").fetchall() == []
    fresh = SqliteStore(tmp_path / "fresh.db")
    fresh.close()
    # Exactly the schema a new hub gets: no table, column, index or default differs.
    assert schema_of(path) == schema_of(tmp_path / "fresh.db")


def test_the_first_release_data_is_intact_after_the_upgrade(upgraded):
    store, _ = upgraded
    sensors = store.list_sensors()
    assert [(s.sensor_id, s.dataset, s.metrics, s.latitude, s.longitude, s.subject_id, s.label, s.wrapped_key, s.enrolled_at_ms,
             s.revoked_at_ms, s.last_counter, s.last_seen_ms, s.frames_accepted, s.frames_rejected) for s in sensors] == SENSORS
    assert [s.readings for s in sensors] == [len(READINGS[s.sensor_id]) for s in sensors]
    for sid, expected in READINGS.items():
        rows = store.readings(ReadingFilter(sensor_id=sid))
        assert sorted((r.metric, r.time_ms, r.value) for r in rows) == sorted(expected)
    assert store.rejection_counts() == REJECTIONS
    [cell] = store.aggregate(AggregateRequest("air_quality", "pm25", T0, T0 + 24 * HOUR_MS, "day", None))
    assert (cell.bucket_start_ms, cell.count, cell.sum, cell.min, cell.max, cell.contributors) == (T0, 10, 95.0, 5.0, 14.0, 1)


def test_the_upgraded_database_keeps_working_as_before_and_with_the_new_tables(tmp_path):
    path = tmp_path / "hub.db"
    first_release_database(path)
    store = SqliteStore(path)
    sensor = SENSORS[0][0]
    # The replay protection carried over: the old counter is still the floor.
    with pytest.raises(Exception, match="is not above 41"):
        store.commit_frames([FrameToCommit(sensor, 41, [("pm25", T0 + 50 * HOUR_MS, 1.0)], T0 + 50 * HOUR_MS)])
    [outcome] = store.commit_frames([FrameToCommit(sensor, 42, [("pm25", T0, 5.0), ("pm25", T0 + 50 * HOUR_MS, 1.0)],
                                                   T0 + 50 * HOUR_MS)])
    assert (outcome.stored, outcome.duplicate) == (1, 1)  # the old reading at T0 is not stored twice
    assert store.get_sensor(sensor).last_counter == 42
    # Tables and columns added after version 1 are there and usable.
    assert store.grant_consent("meter-7", "research", T0)
    assert [c.subject_id for c in store.list_consents()] == ["meter-7"]
    assert store.use_quota("urn:uuid:x", "2019-01-01", limit=2, epsilon=0.25, budget=1.0) == "ok"
    assert store.quota_used("urn:uuid:x", "2019-01-01") == (1, 0.25)
    assert store.list_peers() == [] and store.list_partners() == [] and store.audit_rows() == []
    # Opening it again runs no migration twice.
    store.close()
    again = SqliteStore(path)
    try:
        assert again.schema_version() == migrations.LATEST_VERSION
        assert again.get_sensor(sensor).last_counter == 42
    finally:
        again.close()


def test_a_database_from_a_newer_release_is_refused_not_downgraded(tmp_path):
    path = tmp_path / "hub.db"
    first_release_database(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {migrations.LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this smartregion"):
        SqliteStore(path)
    conn = sqlite3.connect(path)
    try:  # untouched
        assert conn.execute("PRAGMA user_version").fetchone() == (migrations.LATEST_VERSION + 1,)
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (23,)
    finally:
        conn.close()
