"""SQL for a hub's data lifecycle: retention (old readings deleted) and erasure of a data
subject (GDPR art. 17). Mixed into SqliteStore; each operation is one transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from node.storage.base import Erasure

T = TypeVar("T")


class LifecycleTables:
    conn: Any = None  # a sqlite3.Connection, provided by SqliteStore (declared like the other mixins')

    def _transaction(self, work: Callable[[], T]) -> T:  # provided by SqliteStore
        raise NotImplementedError

    def _recount(self, refs: list[int]) -> None:
        """Keep each sensor's `readings` counter equal to the rows it still has, and the
        per-metric totals `status` reads (metric_totals) equal to what its dataset still holds."""
        self.conn.executemany(
            "UPDATE sensors SET readings = (SELECT count(*) FROM readings WHERE sensor_ref = ?) WHERE ref = ?",
            [(ref, ref) for ref in refs],
        )
        marks = ",".join("?" * len(refs))
        datasets = [r[0] for r in self.conn.execute(f"SELECT DISTINCT dataset FROM sensors WHERE ref IN ({marks})", refs)]
        for dataset in datasets:  # a daily task or an erasure: a scan of the dataset is affordable
            self.conn.execute("DELETE FROM metric_totals WHERE dataset = ?", (dataset,))
            self.conn.execute(
                "INSERT INTO metric_totals (dataset, metric, readings) SELECT s.dataset, r.metric, count(*) "
                "FROM readings r JOIN sensors s ON s.ref = r.sensor_ref WHERE s.dataset = ? GROUP BY r.metric",
                (dataset,),
            )

    def delete_readings_before(self, dataset: str, before_ms: int) -> int:
        """Delete every reading of the dataset's sensors timed before `before_ms`; return how many."""

        def work() -> int:
            refs = [r[0] for r in self.conn.execute("SELECT ref FROM sensors WHERE dataset = ?", (dataset,))]
            deleted = 0
            for ref in refs:
                deleted += self.conn.execute("DELETE FROM readings WHERE sensor_ref = ? AND time_ms < ?", (ref, before_ms)).rowcount
            self._recount(refs)
            return deleted

        return self._transaction(work)

    def erase_subject(self, subject_id: str, at_ms: int) -> Erasure | None:
        """Delete the subject's readings and consent history; revoke the subject's sensors and
        clear their subject and label. None (nothing changed) if the hub knows no such subject."""

        def work() -> Erasure | None:
            sensors = self.conn.execute("SELECT ref, sensor_id FROM sensors WHERE subject_id = ? ORDER BY ref", (subject_id,)).fetchall()
            consents = self.conn.execute("SELECT count(*) FROM consents WHERE subject_id = ?", (subject_id,)).fetchone()[0]
            if not sensors and not consents:
                return None
            readings = 0
            for ref, _ in sensors:
                readings += self.conn.execute("DELETE FROM readings WHERE sensor_ref = ?", (ref,)).rowcount
            self.conn.execute("DELETE FROM consents WHERE subject_id = ?", (subject_id,))
            self.conn.execute(
                "UPDATE sensors SET subject_id = '', label = '', readings = 0, revoked_at_ms = coalesce(revoked_at_ms, ?) "
                "WHERE subject_id = ?",
                (at_ms, subject_id),
            )
            self._recount([ref for ref, _ in sensors])
            return Erasure(subject_id, readings, consents, [sensor_id for _, sensor_id in sensors])

        return self._transaction(work)
