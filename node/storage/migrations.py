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
    (
        2,
        """
        CREATE TABLE peers (
            hub_id TEXT PRIMARY KEY,
            municipality TEXT NOT NULL,
            public_key BLOB NOT NULL,
            tls_cert_pem TEXT NOT NULL,
            grpc_address TEXT NOT NULL,
            http_url TEXT NOT NULL DEFAULT '',
            descriptor BLOB NOT NULL,           -- SignedDescriptor, as received
            descriptor_valid_until_ms INTEGER NOT NULL,
            added_at_ms INTEGER NOT NULL,
            removed_at_ms INTEGER,
            last_contact_ms INTEGER,
            last_error TEXT NOT NULL DEFAULT '',
            latency_ms REAL
        );
        CREATE TABLE partners (
            partner_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            org_number TEXT NOT NULL,
            public_key BLOB NOT NULL,
            added_at_ms INTEGER NOT NULL,
            removed_at_ms INTEGER,
            last_contact_ms INTEGER
        );
        CREATE TABLE agreements (
            agreement_id TEXT PRIMARY KEY,
            provider_id TEXT NOT NULL,
            consumer_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            supersedes TEXT NOT NULL DEFAULT '',
            valid_from_ms INTEGER NOT NULL,
            valid_until_ms INTEGER NOT NULL,
            document BLOB NOT NULL,             -- AgreementDocument: exact signed bytes inside
            created_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL
        );
        CREATE INDEX agreements_provider ON agreements(provider_id);
        CREATE INDEX agreements_consumer ON agreements(consumer_id);
        CREATE TABLE agreement_events (
            id INTEGER PRIMARY KEY,
            agreement_id TEXT NOT NULL,
            at_ms INTEGER NOT NULL,
            event TEXT NOT NULL,
            actor TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX agreement_events_agreement ON agreement_events(agreement_id);
        -- One pending synchronisation per peer; what to send is derived when sending.
        CREATE TABLE outbox (
            peer_id TEXT PRIMARY KEY,
            generation INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_ms INTEGER NOT NULL,
            last_error TEXT NOT NULL DEFAULT ''
        );
        -- Hash-chained: hash = SHA-256(prev_hash || entry); see node/audit.py.
        CREATE TABLE audit_log (
            seq INTEGER PRIMARY KEY,
            entry BLOB NOT NULL,                -- canonical JSON
            prev_hash BLOB NOT NULL,
            hash BLOB NOT NULL
        );
        CREATE TABLE seen_nonces (
            caller_id TEXT NOT NULL,
            nonce BLOB NOT NULL,
            expires_at_ms INTEGER NOT NULL,
            PRIMARY KEY (caller_id, nonce)
        ) WITHOUT ROWID
        """,
    ),
    (
        3,
        """
        -- Consent per data subject and purpose; a withdrawal closes the row, a new grant opens another.
        CREATE TABLE consents (
            subject_id TEXT NOT NULL,
            purpose_code TEXT NOT NULL,
            granted_at_ms INTEGER NOT NULL,
            withdrawn_at_ms INTEGER,
            PRIMARY KEY (subject_id, purpose_code, granted_at_ms)
        );
        CREATE INDEX consents_active ON consents(purpose_code, subject_id) WHERE withdrawn_at_ms IS NULL;
        -- Queries answered under each agreement per UTC day (the quota).
        CREATE TABLE agreement_usage (
            agreement_id TEXT NOT NULL,
            day TEXT NOT NULL,
            queries INTEGER NOT NULL,
            PRIMARY KEY (agreement_id, day)
        )
        """,
    ),
    (
        4,
        """
        -- The differential-privacy budget spent per agreement per UTC day (federation/dp.py).
        ALTER TABLE agreement_usage ADD COLUMN epsilon_spent REAL NOT NULL DEFAULT 0
        """,
    ),
    # issue 10: LoRaWAN devices and join-server KEKs (node/networks/devices.py).
    (
        5,
        """
        -- An enrolled sensor reached through a LoRaWAN network server, by its DevEUI. The
        -- sensor's counter holds FCnt + 1 (LoRaWAN counts from 0, frames from 1).
        CREATE TABLE lorawan_devices (
            dev_eui TEXT PRIMARY KEY,                       -- 16 lowercase hex digits
            sensor_id TEXT NOT NULL UNIQUE REFERENCES sensors(sensor_id),
            confidentiality TEXT NOT NULL CHECK (confidentiality IN ('end-to-end', 'network-decrypted')),
            wrapped_app_s_key BLOB,                         -- under the hub's KEK; NULL: from the uplink's key envelope
            codec TEXT NOT NULL
        );
        -- Key-encryption keys of join servers, by the label their key envelopes name.
        CREATE TABLE lorawan_keks (
            label TEXT PRIMARY KEY,
            wrapped_kek BLOB NOT NULL,                      -- under the hub's KEK
            added_at_ms INTEGER NOT NULL
        );
        -- Sessions of a device whose AppSKeys come in key envelopes, numbered as first seen: the
        -- sensor's counter is session_no * 2^32 + FCnt + 1, so it keeps growing across joins
        -- (FCnt restarts at 0) and an uplink of an earlier session is refused as replayed.
        CREATE TABLE lorawan_sessions (
            dev_eui TEXT NOT NULL REFERENCES lorawan_devices(dev_eui),
            session_key_id TEXT NOT NULL,
            session_no INTEGER NOT NULL,
            PRIMARY KEY (dev_eui, session_key_id)
        ) WITHOUT ROWID;
        -- Each dataset's classification as the hub last served it (catalog.toml): a change
        -- is refused while an agreement on the dataset is in force (node/app/catalog_guard.py).
        CREATE TABLE catalog_classifications (
            dataset TEXT PRIMARY KEY,
            classification TEXT NOT NULL
        )
        """,
    ),
    (
        # branch hardening: counters span 1 ..= 2**64-1 (docs/protocol.md) but SQLite integers are
        # signed 64-bit, so sensors.last_counter is stored biased by -2**63 (node/storage/sqlite.py
        # COUNTER_BIAS): 0 is stored as -2**63 and 2**64-1 as 2**63-1; order is kept.
        # And the client-chosen request id of an enrolment, which makes AddSensor idempotent.
        6,
        """
        UPDATE sensors SET last_counter = last_counter + (-9223372036854775807 - 1);
        ALTER TABLE sensors ADD COLUMN request_id TEXT;
        CREATE UNIQUE INDEX sensors_request_id ON sensors(request_id) WHERE request_id IS NOT NULL;
        -- Readings per dataset and metric, kept by every commit, so `status` does not count rows.
        CREATE TABLE metric_totals (
            dataset TEXT NOT NULL,
            metric TEXT NOT NULL,
            readings INTEGER NOT NULL,
            PRIMARY KEY (dataset, metric)
        );
        INSERT INTO metric_totals (dataset, metric, readings)
            SELECT s.dataset, r.metric, count(*) FROM readings r JOIN sensors s ON s.ref = r.sensor_ref GROUP BY s.dataset, r.metric
        """,
    ),
    (
        # branch privacy (issue 9): the lifetime privacy budget and the release log.
        7,
        """
        -- The lifetime differential-privacy budget spent per agreement, integer micro-epsilon.
        CREATE TABLE privacy_budget (
            agreement_id TEXT PRIMARY KEY,
            spent_micro INTEGER NOT NULL CHECK (spent_micro >= 0)
        );
        -- What a provider released per agreement (federation/query/releases.py): the cell, its
        -- contributor count, and a fingerprint per contributor of what that contributor added.
        CREATE TABLE release_log (
            agreement_id TEXT NOT NULL,
            dataset TEXT NOT NULL,
            metric TEXT NOT NULL,
            start_ms INTEGER NOT NULL,
            end_ms INTEGER NOT NULL,
            contributors INTEGER NOT NULL,
            digest BLOB NOT NULL,
            fingerprints BLOB NOT NULL,
            released_at_ms INTEGER NOT NULL
        );
        CREATE INDEX release_log_cell ON release_log (agreement_id, dataset, metric, start_ms, end_ms)
        """,
    ),
    (
        # branch releaselog (issue 9): the release log keyed by the agreement LINE (the asker: at
        # most one live agreement per asker and dataset, so renewals and new versions share it),
        # one row per released sub-cell at the agreement's finest grain, found by overlap.
        # Rows of the old per-agreement log carry over as whole-cell rows (scheme 1), compared
        # by their old fingerprints (federation/query/releases.py); none is lost.
        8,
        """
        CREATE TABLE released_subcells (
            asker_id TEXT NOT NULL,        -- the partner or hub: every agreement it holds over the dataset
            dataset TEXT NOT NULL,
            metric TEXT NOT NULL,
            start_ms INTEGER NOT NULL,
            end_ms INTEGER NOT NULL,
            scheme INTEGER NOT NULL,       -- 2: a sub-cell of grain `grain`; 1: a whole cell of the old log
            grain TEXT NOT NULL,           -- hour, day, week, month, year; 'window' for scheme 1
            fingerprint BLOB NOT NULL,     -- of what its contributors added (releases.py)
            contributors INTEGER NOT NULL,
            agreement_id TEXT NOT NULL,    -- the agreement it was first released under
            released_at_ms INTEGER NOT NULL,
            PRIMARY KEY (asker_id, dataset, metric, start_ms, end_ms, scheme, fingerprint)
        ) WITHOUT ROWID;
        -- The overlap lookup: rows of one asker, dataset and metric ending after a window starts.
        CREATE INDEX released_subcells_overlap ON released_subcells (asker_id, dataset, metric, end_ms);
        INSERT OR IGNORE INTO released_subcells (asker_id, dataset, metric, start_ms, end_ms, scheme, grain, fingerprint,
                                                 contributors, agreement_id, released_at_ms)
            SELECT coalesce(a.consumer_id, 'agreement:' || l.agreement_id), l.dataset, l.metric, l.start_ms, l.end_ms, 1,
                   'window', l.fingerprints, l.contributors, l.agreement_id, l.released_at_ms
            FROM release_log l LEFT JOIN agreements a ON a.agreement_id = l.agreement_id;
        DROP TABLE release_log
        """,
    ),
    (
        # branch ops (issue 12, sensor rekey): a sensor's key replaced under the same id. The
        # previous key stays (wrapped) so that a frame under it is told apart from garbage;
        # it is accepted while previous_key_until_ms is in the future, and that moment is
        # brought forward to the first frame accepted under the new key.
        9,
        """
        ALTER TABLE sensors ADD COLUMN previous_wrapped_key BLOB;
        ALTER TABLE sensors ADD COLUMN previous_key_until_ms INTEGER;
        ALTER TABLE sensors ADD COLUMN key_request_id TEXT;
        ALTER TABLE sensors ADD COLUMN rekeyed_at_ms INTEGER;
        CREATE UNIQUE INDEX sensors_key_request_id ON sensors(key_request_id) WHERE key_request_id IS NOT NULL
        """,
    ),
    (
        # branch hardening (issue 11): a provider's answers, kept while the same signed query
        # may be sent again, so a retry after a lost answer is not charged twice.
        10,
        """
        CREATE TABLE kept_answers (
            asker_id TEXT NOT NULL,
            query_digest BLOB NOT NULL,
            agreement_id TEXT NOT NULL,
            sealed BLOB NOT NULL,
            expires_at_ms INTEGER NOT NULL,
            PRIMARY KEY (asker_id, query_digest)
        );
        CREATE INDEX kept_answers_expiry ON kept_answers (expires_at_ms)
        """,
    ),
    (
        # branch releaselog (issue 9 follow-up): the release log's high-water mark, a window
        # released whole to a line with a digest of its sub-cells' fingerprints, so that the
        # same window asked again unchanged is one comparison (federation/query/releases.py).
        11,
        """
        CREATE TABLE released_runs (
            asker_id TEXT NOT NULL,
            dataset TEXT NOT NULL,
            metric TEXT NOT NULL,
            scheme INTEGER NOT NULL,
            grain TEXT NOT NULL,
            start_ms INTEGER NOT NULL,
            end_ms INTEGER NOT NULL,
            digest BLOB NOT NULL,          -- SHA-256 over the fingerprints of its sub-cells, in order
            released_at_ms INTEGER NOT NULL,
            PRIMARY KEY (asker_id, dataset, metric, scheme, grain, start_ms, end_ms)
        ) WITHOUT ROWID
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to the latest schema; return the version it is at."""
    current: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > LATEST_VERSION:
        raise RuntimeError(
            f"the database has schema version {current}, newer than this smartregion ({LATEST_VERSION}); upgrade smartregion"
        )
    for version, script in MIGRATIONS:
        if version <= current:
            continue
        # The script carries its own BEGIN/COMMIT so that the migration and the version bump
        # are one transaction; on failure the open transaction is rolled back.
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{script};\nPRAGMA user_version = {version};\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        current = version
    return current
