"""SQLite tables of the network doors: LoRaWAN devices and join-server KEKs (node/networks),
and the catalog's classifications as last served (node/app/catalog_guard.py).
Mixed into SqliteStore, which provides `conn` and `_transaction`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from node.storage.base import LorawanDeviceRecord, SensorRecord

_DEVICE_COLUMNS = "dev_eui, sensor_id, confidentiality, wrapped_app_s_key, codec"


class NetworkTables:
    conn: sqlite3.Connection
    _transaction: Callable[[Callable[[], Any]], Any]
    _insert_sensor: Callable[[SensorRecord], bool]

    def add_lorawan_sensor(self, sensor: SensorRecord, device: LorawanDeviceRecord) -> bool:
        """Enrol the sensor and its LoRaWAN device in one transaction; False (and nothing
        stored) if the DevEUI is enrolled already."""
        def work() -> bool:
            if self.conn.execute("SELECT 1 FROM lorawan_devices WHERE dev_eui = ?", (device.dev_eui,)).fetchone():
                return False
            self._insert_sensor(sensor)
            self.conn.execute(
                f"INSERT INTO lorawan_devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (device.dev_eui, device.sensor_id, device.confidentiality, device.wrapped_app_s_key, device.codec),
            )
            return True

        result: bool = self._transaction(work)
        return result

    def get_lorawan_device(self, dev_eui: str) -> LorawanDeviceRecord | None:
        row = self.conn.execute(f"SELECT {_DEVICE_COLUMNS} FROM lorawan_devices WHERE dev_eui = ?", (dev_eui,)).fetchone()
        return LorawanDeviceRecord(*row) if row else None

    def list_lorawan_devices(self) -> list[LorawanDeviceRecord]:
        return [LorawanDeviceRecord(*r) for r in self.conn.execute(f"SELECT {_DEVICE_COLUMNS} FROM lorawan_devices ORDER BY dev_eui")]

    def add_lorawan_kek(self, label: str, wrapped_kek: bytes, at_ms: int) -> bool:
        """False if a KEK with this label is held already (a label names one key for good)."""
        def work() -> bool:
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO lorawan_keks (label, wrapped_kek, added_at_ms) VALUES (?, ?, ?)", (label, wrapped_kek, at_ms)
            )
            return cursor.rowcount == 1

        result: bool = self._transaction(work)
        return result

    def get_lorawan_kek(self, label: str) -> bytes | None:
        row = self.conn.execute("SELECT wrapped_kek FROM lorawan_keks WHERE label = ?", (label,)).fetchone()
        return bytes(row[0]) if row else None

    def lorawan_session_no(self, dev_eui: str, session_key_id: str) -> int:
        """The session's number, a new one (one above the highest) if it was never seen."""
        def work() -> int:
            row = self.conn.execute("SELECT session_no FROM lorawan_sessions WHERE dev_eui = ? AND session_key_id = ?",
                                    (dev_eui, session_key_id)).fetchone()
            if row:
                return int(row[0])
            (highest,) = self.conn.execute("SELECT COALESCE(MAX(session_no), 0) FROM lorawan_sessions WHERE dev_eui = ?",
                                           (dev_eui,)).fetchone()
            self.conn.execute("INSERT INTO lorawan_sessions (dev_eui, session_key_id, session_no) VALUES (?, ?, ?)",
                              (dev_eui, session_key_id, highest + 1))
            return int(highest) + 1

        result: int = self._transaction(work)
        return result

    # -- the catalog's classifications as last served -----------------------------------------
    def catalog_classifications(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT dataset, classification FROM catalog_classifications").fetchall())

    def record_catalog_classifications(self, classifications: dict[str, str]) -> None:
        self._transaction(lambda: self.conn.executemany(
            "INSERT OR REPLACE INTO catalog_classifications (dataset, classification) VALUES (?, ?)", classifications.items()
        ))

    def list_lorawan_kek_labels(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT label FROM lorawan_keks ORDER BY label")]
