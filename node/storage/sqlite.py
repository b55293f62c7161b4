"""SQLite storage (via sqlite-utils): WAL, durable commits, one transaction per batch."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import sqlite_utils

from node.storage.base import (
    CounterConflict,
    FrameOutcome,
    FrameToCommit,
    MetricSummary,
    ReadingFilter,
    ReadingRow,
    SensorRecord,
)
from node.storage.federation_tables import FederationTables
from node.storage.lifecycle_tables import LifecycleTables
from node.storage.migrations import migrate
from node.storage.network_tables import NetworkTables
from node.storage.query_tables import QueryTables

_SENSOR_COLUMNS = (
    "sensor_id, dataset, metrics, latitude, longitude, wrapped_key, enrolled_at_ms, subject_id, label, "
    "revoked_at_ms, last_counter, last_seen_ms, frames_accepted, frames_rejected, readings, request_id, "
    "previous_wrapped_key, previous_key_until_ms, key_request_id, rekeyed_at_ms"
)


# Readings are inserted with multi-row INSERTs of up to _INSERT_CHUNK rows: one statement (and
# one release of the GIL) per chunk instead of one per row as with executemany, about 20% less
# CPU for the same rows, and the hub's event loop is held up less. The sensor's ref is bound
# once as ?1; chunks are powers of two, so a handful of statements are prepared once and then
# reused from the connection's statement cache.
_INSERT_CHUNK = 32


@functools.cache  # called only with powers of two up to _INSERT_CHUNK
def _insert_readings_sql(rows: int) -> str:
    values = ",".join(f"(?1,?{3 * i + 2},?{3 * i + 3},?{3 * i + 4})" for i in range(rows))
    return f"INSERT OR IGNORE INTO readings (sensor_ref, metric, time_ms, value) VALUES {values}"


def _insert_readings(conn: sqlite3.Connection, sensor_ref: int, readings: Sequence[tuple[str, int, float]]) -> None:
    """INSERT OR IGNORE every (metric, time_ms, value) of `readings` for the sensor, in order."""
    start, total = 0, len(readings)
    while start < total:
        rows = _INSERT_CHUNK
        while rows > total - start:
            rows >>= 1
        conn.execute(_insert_readings_sql(rows), (sensor_ref, *chain.from_iterable(readings[start : start + rows])))
        start += rows


# Counters are unsigned 64-bit (1 ..= 2**64-1); SQLite integers are signed 64-bit. The column
# holds counter - 2**63 (migration 5), which keeps order, so `last_counter < ?` still compares.
COUNTER_BIAS = 2**63
_LAST_COUNTER = _SENSOR_COLUMNS.split(", ").index("last_counter")


# A frame advances its sensor's counter only above the last one and only while the sensor is
# active. A frame under the current key also ends a rekey's grace for the previous key (the
# sensor has switched; min() of NULL stays NULL); a frame under the previous key counts only
# while that grace lasts, so a frame under the old key committed in the same transaction after
# one under the new key is refused too.
_ADVANCE = ("UPDATE sensors SET last_counter = ?1, last_seen_ms = ?2, frames_accepted = frames_accepted + 1{} "
            "WHERE sensor_id = ?3 AND last_counter < ?4 AND revoked_at_ms IS NULL{} RETURNING ref, dataset")
_ADVANCE_UNDER_KEY = _ADVANCE.format(", previous_key_until_ms = min(previous_key_until_ms, ?2)", "")
_ADVANCE_UNDER_PREVIOUS_KEY = _ADVANCE.format("", " AND previous_key_until_ms > ?2")


def _stored_counter(counter: int) -> int:
    return counter - COUNTER_BIAS


def _sensor(row: tuple[Any, ...]) -> SensorRecord:
    values = list(row)
    values[2] = json.loads(values[2])
    values[_LAST_COUNTER] += COUNTER_BIAS
    return SensorRecord(*values)


class SqliteStore(FederationTables, QueryTables, LifecycleTables, NetworkTables):
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        # FULL: a commit (and so an acknowledgement) survives power loss, not just a crash.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        self.conn = conn
        self.version = migrate(conn)

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    # -- sensors -------------------------------------------------------------------------
    def add_sensor(self, sensor: SensorRecord) -> bool:
        """Insert the sensor; False (and nothing inserted) if its request id is taken already."""
        return self._transaction(lambda: self._insert_sensor(sensor))

    def _insert_sensor(self, sensor: SensorRecord) -> bool:
        row = {
            "sensor_id": sensor.sensor_id,
            "dataset": sensor.dataset,
            "metrics": json.dumps(sensor.metrics),
            "latitude": sensor.latitude,
            "longitude": sensor.longitude,
            "subject_id": sensor.subject_id,
            "label": sensor.label,
            "wrapped_key": sensor.wrapped_key,
            "enrolled_at_ms": sensor.enrolled_at_ms,
            "last_counter": _stored_counter(sensor.last_counter),
            "request_id": sensor.request_id,
        }
        columns = ", ".join(row)
        sql = (f"INSERT INTO sensors ({columns}) VALUES ({', '.join('?' * len(row))}) "
               "ON CONFLICT(request_id) WHERE request_id IS NOT NULL DO NOTHING")
        return bool(self.conn.execute(sql, tuple(row.values())).rowcount)

    def get_sensor_by_request(self, request_id: str) -> SensorRecord | None:
        row = self.conn.execute(f"SELECT {_SENSOR_COLUMNS} FROM sensors WHERE request_id = ?", (request_id,)).fetchone()
        return _sensor(row) if row else None

    def get_sensor(self, sensor_id: str) -> SensorRecord | None:
        row = self.conn.execute(f"SELECT {_SENSOR_COLUMNS} FROM sensors WHERE sensor_id = ?", (sensor_id,)).fetchone()
        return _sensor(row) if row else None

    def list_sensors(self, include_revoked: bool = True) -> list[SensorRecord]:
        where = "" if include_revoked else "WHERE revoked_at_ms IS NULL"
        rows = self.conn.execute(f"SELECT {_SENSOR_COLUMNS} FROM sensors {where} ORDER BY ref").fetchall()
        return [_sensor(r) for r in rows]

    def revoke_sensor(self, sensor_id: str, at_ms: int) -> SensorRecord | None:
        def work() -> SensorRecord | None:
            self.conn.execute(
                "UPDATE sensors SET revoked_at_ms = ? WHERE sensor_id = ? AND revoked_at_ms IS NULL", (at_ms, sensor_id)
            )
            return self.get_sensor(sensor_id)

        return self._transaction(work)

    def get_sensor_by_key_request(self, request_id: str) -> SensorRecord | None:
        row = self.conn.execute(f"SELECT {_SENSOR_COLUMNS} FROM sensors WHERE key_request_id = ?", (request_id,)).fetchone()
        return _sensor(row) if row else None

    def rekey_sensor(self, sensor_id: str, wrapped_key: bytes, request_id: str | None, at_ms: int,
                     previous_until_ms: int) -> tuple[SensorRecord | None, bool]:
        """Give an active sensor a new key; the key it had is accepted until `previous_until_ms`
        (or the first frame under the new one). If a rekey is still pending (its new key was
        never used), the sensor still holds the key before it: that one stays the previous key
        and the unused one is dropped. Returns (the sensor now, True), or for a request id used
        already (the sensor that rekey changed, False) and nothing changes; (None or the revoked
        sensor, False) if there is no active sensor to rekey."""

        def work() -> tuple[SensorRecord | None, bool]:
            if request_id is not None:
                earlier = self.get_sensor_by_key_request(request_id)
                if earlier is not None:
                    return earlier, False
            current = self.get_sensor(sensor_id)
            if current is None or not current.active:
                return current, False
            pending = current.previous_wrapped_key is not None and current.previous_key_accepted(at_ms)
            previous = current.previous_wrapped_key if pending else current.wrapped_key
            self.conn.execute(
                "UPDATE sensors SET wrapped_key = ?, previous_wrapped_key = ?, previous_key_until_ms = ?, key_request_id = ?, "
                "rekeyed_at_ms = ? WHERE sensor_id = ?",
                (wrapped_key, previous, previous_until_ms, request_id, at_ms, sensor_id),
            )
            return self.get_sensor(sensor_id), True

        return self._transaction(work)

    # -- ingest --------------------------------------------------------------------------
    def commit_frames(
        self, frames: Sequence[FrameToCommit], rejections: tuple[Mapping[str, int], Mapping[str, int]] | None = None
    ) -> list[FrameOutcome]:
        """Store every frame's readings and advance its sensor's counter, all in one
        transaction. Raises CounterConflict (and stores nothing) if a counter is stale.
        `rejections` (by reason, by sensor) are added in the same transaction: they cost no
        fsync of their own."""

        totals: dict[tuple[str, str], int] = {}  # (dataset, metric) -> readings stored

        def work() -> list[FrameOutcome]:
            totals.clear()
            if rejections is not None:
                self._add_rejections(*rejections)
            outcomes = []
            for index, frame in enumerate(frames):
                stored_counter = _stored_counter(frame.counter)
                ref = self.conn.execute(
                    _ADVANCE_UNDER_PREVIOUS_KEY if frame.under_previous_key else _ADVANCE_UNDER_KEY,
                    (stored_counter, frame.received_at_ms, frame.sensor_id, stored_counter),
                ).fetchone()
                if ref is None:
                    current = self.get_sensor(frame.sensor_id)
                    raise CounterConflict(
                        index,
                        frame.sensor_id,
                        frame.counter,
                        current.last_counter if current else 0,
                        revoked=bool(current and not current.active),
                        key_retired=bool(frame.under_previous_key and current and not current.previous_key_accepted(frame.received_at_ms)),
                    )
                stored = self._insert_counted(ref[0], ref[1], frame.readings, totals)
                if stored:
                    self.conn.execute("UPDATE sensors SET readings = readings + ? WHERE ref = ?", (stored, ref[0]))
                outcomes.append(FrameOutcome(stored=stored, duplicate=len(frame.readings) - stored))
            self.conn.executemany(
                "INSERT INTO metric_totals (dataset, metric, readings) VALUES (?, ?, ?) "
                "ON CONFLICT(dataset, metric) DO UPDATE SET readings = readings + excluded.readings",
                [(dataset, metric, n) for (dataset, metric), n in totals.items() if n],
            )
            return outcomes

        # The per-frame SAVEPOINT makes SQLite keep a statement journal of every page a frame
        # changes; spilled to a temporary file it cost 15-25 % of the writer's CPU per reading
        # (docs/benchmarks.md, "Ingest CPU since the first release"). One commit's journal is
        # bounded by the commit's size (node/ingest.py STREAM_COMMIT_READINGS), so it is kept in
        # memory for ingest commits only; other statements keep their temporary files.
        self.conn.execute("PRAGMA temp_store = MEMORY")
        try:
            return self._transaction(work)
        finally:
            self.conn.execute("PRAGMA temp_store = DEFAULT")

    def _insert_counted(self, ref: int, dataset: str, readings: Sequence[tuple[str, int, float]],
                        totals: dict[tuple[str, str], int]) -> int:
        """Insert a frame's readings; add what was stored per metric to `totals` (the counters
        `status` reads instead of counting the readings table). Returns the number stored.

        The common case costs one C-speed count per metric; only a frame with readings stored
        already (a resend) is rolled back and inserted again one metric at a time, to count
        exactly what each metric added."""
        counts = Counter(map(itemgetter(0), readings))
        self.conn.execute("SAVEPOINT frame")
        before = self.conn.total_changes
        _insert_readings(self.conn, ref, readings)
        stored = self.conn.total_changes - before
        if stored != len(readings):
            if len(counts) == 1:
                counts[next(iter(counts))] = stored
            else:
                self.conn.execute("ROLLBACK TO frame")
                stored = 0
                for metric in counts:
                    mark = self.conn.total_changes
                    _insert_readings(self.conn, ref, [r for r in readings if r[0] == metric])
                    counts[metric] = self.conn.total_changes - mark
                    stored += counts[metric]
        self.conn.execute("RELEASE frame")
        for metric, n in counts.items():
            key = (dataset, metric)
            totals[key] = totals.get(key, 0) + n
        return stored

    def metric_summaries(self) -> list[MetricSummary]:
        """Readings per dataset and metric from the maintained counters; first and last times
        from one index seek per sensor and metric (the readings key starts with sensor and
        metric), so the cost grows with sensors, not with readings."""
        rows = self.conn.execute(
            "SELECT t.dataset, t.metric, t.readings, "
            "(SELECT min((SELECT min(r.time_ms) FROM readings r WHERE r.sensor_ref = s.ref AND r.metric = t.metric)) "
            " FROM sensors s WHERE s.dataset = t.dataset), "
            "(SELECT max((SELECT max(r.time_ms) FROM readings r WHERE r.sensor_ref = s.ref AND r.metric = t.metric)) "
            " FROM sensors s WHERE s.dataset = t.dataset) "
            "FROM metric_totals t WHERE t.readings > 0 ORDER BY t.dataset, t.metric"
        ).fetchall()
        return [MetricSummary(*r) for r in rows]

    def _add_rejections(self, by_reason: Mapping[str, int], by_sensor: Mapping[str, int]) -> None:
        self.conn.executemany(
            "INSERT INTO rejections (reason, count) VALUES (?, ?) ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
            by_reason.items(),
        )
        self.conn.executemany(
            "UPDATE sensors SET frames_rejected = frames_rejected + ? WHERE sensor_id = ?",
            ((count, sensor_id) for sensor_id, count in by_sensor.items()),
        )

    def record_rejections(self, by_reason: Mapping[str, int], by_sensor: Mapping[str, int]) -> None:
        """Add tallied rejection counts (node/ingest.py RejectionTally), in one transaction."""
        self._transaction(lambda: self._add_rejections(by_reason, by_sensor))

    def rejection_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT reason, count FROM rejections ORDER BY reason").fetchall())

    # -- reading -------------------------------------------------------------------------
    def readings(self, where: ReadingFilter) -> list[ReadingRow]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("s.dataset", where.dataset), ("r.metric", where.metric), ("s.sensor_id", where.sensor_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if where.start_ms is not None:
            clauses.append("r.time_ms >= ?")
            params.append(where.start_ms)
        if where.end_ms is not None:
            clauses.append("r.time_ms < ?")
            params.append(where.end_ms)
        sql = (
            "SELECT s.sensor_id, r.metric, r.time_ms, r.value FROM readings r JOIN sensors s ON s.ref = r.sensor_ref"
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " ORDER BY r.time_ms, s.sensor_id, r.metric"
            + (" LIMIT ?" if where.limit is not None else "")
        )
        if where.limit is not None:
            params.append(where.limit)
        return [ReadingRow(*r) for r in self.conn.execute(sql, params)]
