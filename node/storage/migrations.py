"""Schema migrations, applied in order; the version is kept in PRAGMA user_version.

Append a migration to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
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
        -- One row per (sensor, metric, time): a re-sent reading is never stored twice.
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
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to the latest schema; return the version it is at."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > LATEST_VERSION:
        raise RuntimeError(
            f"the database has schema version {current}, newer than this smartregion ({LATEST_VERSION}); upgrade smartregion"
        )
    for version, script in MIGRATIONS:
        if version <= current:
            continue
        # executescript would commit on its own; run statement by statement in one transaction.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = version
    return current
