"""`status` is served from counters that every commit keeps (metric_totals), not by counting
the readings table (issue 11: 101 ms at 155k readings, growing linearly). The counters must
equal a full count after any mix of new and resent readings."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from node.storage.base import FrameToCommit, MetricSummary, SensorRecord
from node.storage.migrations import MIGRATIONS
from node.storage.sqlite import SqliteStore

COUNT_SQL = ("SELECT s.dataset, r.metric, count(*), min(r.time_ms), max(r.time_ms) FROM readings r "
             "JOIN sensors s ON s.ref = r.sensor_ref GROUP BY s.dataset, r.metric ORDER BY s.dataset, r.metric")

readings = st.lists(st.tuples(st.sampled_from(["pm25", "temperature", "rain"]), st.integers(10**12, 10**12 + 40),
                              st.floats(0, 100)), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(frames=st.lists(st.tuples(st.sampled_from(["a", "b"]), readings), min_size=1, max_size=8))
def test_counters_equal_a_full_count_after_any_frames(tmp_path_factory, frames):
    store = SqliteStore(tmp_path_factory.mktemp("counters") / "hub.db")
    for sensor_id, dataset in (("a", "air_quality"), ("b", "weather")):
        store.add_sensor(SensorRecord(sensor_id, dataset, ["pm25", "temperature", "rain"], 0, 0, b"k", 0))
    counters = {"a": 0, "b": 0}
    for sensor_id, rows in frames:
        counters[sensor_id] += 1
        store.commit_frames([FrameToCommit(sensor_id, counters[sensor_id], rows, 0)])
    assert store.metric_summaries() == [MetricSummary(*r) for r in store.conn.execute(COUNT_SQL)]
    assert sum(s.readings for s in store.list_sensors()) == store.conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    store.close()


def test_the_migration_counts_readings_stored_before_it(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for version, script in MIGRATIONS[:4]:
        conn.executescript(f"BEGIN;\n{script};\nPRAGMA user_version = {version};\nCOMMIT;")
    conn.execute("INSERT INTO sensors (ref, sensor_id, dataset, metrics, latitude, longitude, wrapped_key, enrolled_at_ms) "
                 "VALUES (1, 'a', 'air_quality', '[]', 0, 0, x'00', 0)")
    conn.executemany("INSERT INTO readings VALUES (1, ?, ?, 1.0)", [("pm25", t) for t in (5, 7, 9)] + [("rain", 3)])
    conn.close()
    store = SqliteStore(path)
    assert store.metric_summaries() == [MetricSummary("air_quality", "pm25", 3, 5, 9), MetricSummary("air_quality", "rain", 1, 3, 3)]
    store.close()
