"""SQL for federated queries: partial aggregates per time bucket, consent, and quotas.
Mixed into SqliteStore. Aggregation runs inside SQLite; no raw reading is returned."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from node.sketch.sql import bin_sql
from node.storage.base import AggregateRequest, CellRow, ConsentRow, Contribution, ReleasedRun, ReleasedSubcell, ReleaseLine
from node.storage.connected import Connected

_WEEK_SHIFT_MS = 3 * 86_400_000  # 1970-01-01 was a Thursday; ISO weeks start on Monday
_BUCKET_SQL = {
    "hour": "(r.time_ms - r.time_ms % 3600000)",
    "day": "(r.time_ms - r.time_ms % 86400000)",
    "week": f"(r.time_ms - (r.time_ms + {_WEEK_SHIFT_MS}) % 604800000)",
    "month": "(CAST(strftime('%s', r.time_ms / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000)",
    "year": "(CAST(strftime('%s', r.time_ms / 1000, 'unixepoch', 'start of year') AS INTEGER) * 1000)",
}


class QueryTables(Connected):

    def _where(self, req: AggregateRequest) -> tuple[str, list[Any]]:
        sql = "s.dataset = ? AND r.metric = ? AND r.time_ms >= ? AND r.time_ms < ?"
        params: list[Any] = [req.dataset, req.metric, req.start_ms, req.end_ms]
        if req.consent_purpose is not None:
            sql += (" AND s.subject_id IN (SELECT subject_id FROM consents"
                    " WHERE purpose_code = ? AND withdrawn_at_ms IS NULL)")
            params.append(req.consent_purpose)
        return sql, params

    def _readings(self, req: AggregateRequest) -> tuple[str, list[Any]]:
        """The readings of the request as a subquery (b: bucket start, c: contributor, v: value),
        with at most `max_contributions` readings (the earliest) per contributor and bucket."""
        bucket = _BUCKET_SQL.get(req.bucket, str(int(req.start_ms)))
        contributor = "s.subject_id" if req.consent_purpose is not None else "s.ref"
        where, params = self._where(req)
        value = "r.value" if req.clamp is None else f"max(min(r.value, {float(req.clamp[1])!r}), {float(req.clamp[0])!r})"
        rows = (f"SELECT {bucket} AS b, {contributor} AS c, {value} AS v, r.time_ms AS t "
                f"FROM readings r JOIN sensors s ON s.ref = r.sensor_ref WHERE {where}")
        if req.max_contributions is not None:
            rows = (f"SELECT b, c, v, t FROM (SELECT b, c, v, t, ROW_NUMBER() OVER (PARTITION BY b, c ORDER BY t) AS n "
                    f"FROM ({rows})) WHERE n <= {int(req.max_contributions)}")
        return rows, params

    def aggregate(self, req: AggregateRequest) -> list[CellRow]:
        rows_sql, params = self._readings(req)
        rows = self.conn.execute(
            f"SELECT b, count(*), sum(v), sum(v * v), min(v), max(v), count(DISTINCT c) FROM ({rows_sql}) GROUP BY b ORDER BY b",
            params,
        ).fetchall()
        return [CellRow(*row) for row in rows]

    def sketch_bins_by_contributor(self, req: AggregateRequest) -> list[tuple[int, int, int, str, int]]:
        """(bucket, sign, key, contributor, readings) for coarsening a sketch (partials.coarsen);
        stays in the hub."""
        rows_sql, params = self._readings(req)
        sign, key = bin_sql("v")
        return [(b, sg, k, str(c), n) for b, sg, k, c, n in self.conn.execute(
            f"SELECT b, {sign} AS sg, {key} AS k, c, count(*) FROM ({rows_sql}) GROUP BY b, sg, k, c", params)]

    def contributions(self, req: AggregateRequest) -> dict[int, list[Contribution]]:
        """Per bucket: what each contributor added (readings, sums, extremes, times), for the
        release log. Stays in the hub: only fingerprints of it are stored (federation/query/releases.py)."""
        rows_sql, params = self._readings(req)
        out: dict[int, list[Contribution]] = {}
        for b, c, n, total, squares, low, high, hours, within in self.conn.execute(
                f"SELECT b, c, count(*), sum(v), sum(v * v), min(v), max(v), sum(t / 3600000), sum(t % 3600000) "
                f"FROM ({rows_sql}) GROUP BY b, c ORDER BY b, c", params):
            out.setdefault(b, []).append(Contribution(str(c), n, total, squares, low, high, hours, within))
        return out

    def readings_by_hour(self, req: AggregateRequest, each: Callable[[int, list[str], list[str]], None]) -> None:
        """Every reading of the request, for the release log's fingerprints (releases.SubcellHasher):
        `each(hour_start_ms, records, contributors)` for every hour holding a reading, in
        increasing order, with one record `<contributor> <ms into the hour> <value>` per reading,
        in no particular order, and the contributor of each (repeated). The contributor is
        `r<sensor ref>`, or `s<hex of the subject id>` when consent counts (as in `aggregate`); the
        value has 18 significant digits, which give the stored double back exactly. SQLite builds
        the records and groups them by hour in one pass; one hour's records are in memory at a
        time. Stays in the hub: only fingerprints of them are stored."""
        if req.clamp is not None or req.max_contributions is not None:
            raise ValueError("the release log fingerprints the readings as stored: no clamp, no bound on contributions")
        if req.consent_purpose is not None:
            key, record = "'s' || hex(s.subject_id)", "printf('s%s %d %!.17e', hex(s.subject_id), r.time_ms % 3600000, r.value)"
        else:
            key, record = "'r' || s.ref", "printf('r%d %d %!.17e', s.ref, r.time_ms % 3600000, r.value)"
        where, params = self._where(req)
        for hour, records, contributors in self.conn.execute(
                f"SELECT r.time_ms - r.time_ms % 3600000 AS h, group_concat({record}, ','), group_concat({key}, ',') "
                f"FROM readings r JOIN sensors s ON s.ref = r.sensor_ref WHERE {where} GROUP BY h ORDER BY h", params):
            each(hour, records.split(","), contributors.split(","))

    # -- release log (federation/query/releases.py) ---------------------------------------
    _RELEASED_COLUMNS = "start_ms, end_ms, scheme, grain, fingerprint, contributors, agreement_id, released_at_ms"

    def released_overlapping(self, line: ReleaseLine, start_ms: int, end_ms: int) -> list[ReleasedSubcell]:
        """Every sub-cell released to `line` that overlaps [start_ms, end_ms). By the end-time
        index: a partner's usual window is recent, so few rows end after its start (the primary
        key would scan the line's whole history before the window's end)."""
        return [ReleasedSubcell(*row) for row in self.conn.execute(
            f"SELECT {self._RELEASED_COLUMNS} FROM released_subcells INDEXED BY released_subcells_overlap "
            "WHERE asker_id = ? AND dataset = ? AND metric = ? "
            "AND end_ms > ? AND start_ms < ? ORDER BY start_ms, end_ms",
            (line.asker_id, line.dataset, line.metric, start_ms, end_ms))]

    def log_releases_checked(self, line: ReleaseLine, start_ms: int, end_ms: int,
                             decide: Callable[[list[ReleasedSubcell]], list[ReleasedSubcell]]) -> None:
        """Check and log in ONE write transaction: `decide` sees every sub-cell released to the
        line overlapping [start_ms, end_ms) and returns the rows to log; two concurrent queries
        cannot both pass the check before either has logged."""

        def work() -> None:
            rows = decide(self.released_overlapping(line, start_ms, end_ms))
            self.conn.executemany(
                f"INSERT OR IGNORE INTO released_subcells (asker_id, dataset, metric, {self._RELEASED_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(line.asker_id, line.dataset, line.metric, r.start_ms, r.end_ms, r.scheme, r.grain, r.fingerprint,
                  r.contributors, r.agreement_id, r.released_at_ms) for r in rows])

        self._transaction(work)

    def released_run(self, line: ReleaseLine, scheme: int, grain: str, start_ms: int, end_ms: int) -> ReleasedRun | None:
        """The run logged for exactly this window, scheme and grain, if the line was given it whole."""
        row = self.conn.execute(
            "SELECT scheme, grain, start_ms, end_ms, digest, released_at_ms FROM released_runs WHERE asker_id = ? AND dataset = ? "
            "AND metric = ? AND scheme = ? AND grain = ? AND start_ms = ? AND end_ms = ?",
            (line.asker_id, line.dataset, line.metric, scheme, grain, start_ms, end_ms)).fetchone()
        return ReleasedRun(*row) if row else None

    def log_release_run(self, line: ReleaseLine, run: ReleasedRun) -> None:
        """Log a window released whole. The first run logged for a window stays: a later one of
        the same window can only have passed the check with the same sub-cells."""
        self._transaction(lambda: self.conn.execute(
            "INSERT OR IGNORE INTO released_runs (asker_id, dataset, metric, scheme, grain, start_ms, end_ms, digest, released_at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (line.asker_id, line.dataset, line.metric, run.scheme, run.grain, run.start_ms, run.end_ms, run.digest, run.released_at_ms)))

    # -- answers kept for a retry of the same signed query (federation/query/provider.py) --
    def kept_answer(self, asker_id: str, query_digest: bytes, now_ms: int) -> tuple[str, bytes] | None:
        """(agreement id, sealed partial) this hub released for exactly this signed query, if kept."""
        row = self.conn.execute("SELECT agreement_id, sealed FROM kept_answers WHERE asker_id = ? AND query_digest = ? "
                                "AND expires_at_ms >= ?", (asker_id, query_digest, now_ms)).fetchone()
        return (str(row[0]), bytes(row[1])) if row else None

    def keep_answer(self, asker_id: str, query_digest: bytes, agreement_id: str, sealed: bytes, expires_at_ms: int,
                    now_ms: int) -> None:
        """Keep a released answer until its query can no longer be sent again; drop expired ones."""

        def work() -> None:
            self.conn.execute("DELETE FROM kept_answers WHERE expires_at_ms < ?", (now_ms,))
            self.conn.execute("INSERT OR IGNORE INTO kept_answers (asker_id, query_digest, agreement_id, sealed, expires_at_ms) "
                              "VALUES (?, ?, ?, ?, ?)", (asker_id, query_digest, agreement_id, sealed, expires_at_ms))

        self._transaction(work)

    # -- consent -----------------------------------------------------------------------
    def grant_consent(self, subject_id: str, purpose_code: str, at_ms: int) -> bool:
        """False if consent for this purpose is already active."""

        def work() -> bool:
            active = self.conn.execute(
                "SELECT 1 FROM consents WHERE subject_id = ? AND purpose_code = ? AND withdrawn_at_ms IS NULL",
                (subject_id, purpose_code),
            ).fetchone()
            if active:
                return False
            self.conn.execute("INSERT INTO consents (subject_id, purpose_code, granted_at_ms) VALUES (?, ?, ?)",
                              (subject_id, purpose_code, at_ms))
            return True

        return self._transaction(work)

    def withdraw_consent(self, subject_id: str, purpose_code: str, at_ms: int) -> bool:
        """False if there was no active consent to withdraw."""
        cursor = self._transaction(lambda: self.conn.execute(
            "UPDATE consents SET withdrawn_at_ms = ? WHERE subject_id = ? AND purpose_code = ? AND withdrawn_at_ms IS NULL",
            (at_ms, subject_id, purpose_code),
        ))
        return cursor.rowcount > 0

    def list_consents(self, subject_id: str | None = None) -> list[ConsentRow]:
        sql = "SELECT subject_id, purpose_code, granted_at_ms, withdrawn_at_ms FROM consents"
        params: tuple[Any, ...] = ()
        if subject_id:
            sql += " WHERE subject_id = ?"
            params = (subject_id,)
        return [ConsentRow(*r) for r in self.conn.execute(sql + " ORDER BY subject_id, purpose_code, granted_at_ms", params)]

    # -- quota -------------------------------------------------------------------------
    def use_quota(self, agreement_id: str, day: str, limit: int, epsilon: float = 0.0, budget: float = 0.0) -> str:
        """Count one query (and the epsilon it spends) against the day's quota and privacy
        budget, atomically. Returns "ok", or "quota" / "budget" (and counts nothing)."""

        def work() -> str:
            row = self.conn.execute("SELECT queries, epsilon_spent FROM agreement_usage WHERE agreement_id = ? AND day = ?",
                                    (agreement_id, day)).fetchone()
            used, spent = row if row else (0, 0.0)
            if used >= limit:
                return "quota"
            if epsilon and spent + epsilon > budget * (1 + 1e-9):
                return "budget"
            self.conn.execute(
                "INSERT INTO agreement_usage (agreement_id, day, queries, epsilon_spent) VALUES (?, ?, 1, ?) "
                "ON CONFLICT(agreement_id, day) DO UPDATE SET queries = queries + 1, epsilon_spent = epsilon_spent + ?",
                (agreement_id, day, epsilon, epsilon),
            )
            return "ok"

        return self._transaction(work)

    def quota_used(self, agreement_id: str, day: str) -> tuple[int, float]:
        """(queries answered, epsilon spent) today under an agreement."""
        row = self.conn.execute("SELECT queries, epsilon_spent FROM agreement_usage WHERE agreement_id = ? AND day = ?",
                                (agreement_id, day)).fetchone()
        return (row[0], row[1]) if row else (0, 0.0)

    # -- lifetime privacy budget (integer micro-epsilon) -------------------------------------
    def spend_budget(self, agreement_id: str, micro: int, budget_micro: int, pooled: Sequence[str] = ()) -> bool:
        """Spend `micro` of a lifetime budget atomically, charged to `agreement_id`; False (and
        nothing spent) if it would go over. What the `pooled` agreements (earlier versions and
        replacements in the same line: the same asker and dataset) spent counts against it too."""

        def work() -> bool:
            spent = self._spent([agreement_id, *pooled])
            if micro < 0 or spent + micro > budget_micro:
                return False
            self.conn.execute(
                "INSERT INTO privacy_budget (agreement_id, spent_micro) VALUES (?, ?) "
                "ON CONFLICT(agreement_id) DO UPDATE SET spent_micro = spent_micro + excluded.spent_micro",
                (agreement_id, micro))
            return True

        return self._transaction(work)

    def _spent(self, agreement_ids: Sequence[str]) -> int:
        ids = sorted(set(agreement_ids))
        marks = ", ".join("?" * len(ids))
        row = self.conn.execute(f"SELECT coalesce(sum(spent_micro), 0) FROM privacy_budget WHERE agreement_id IN ({marks})", ids).fetchone()
        return int(row[0])

    def refund_budget(self, agreement_id: str, micro: int) -> None:
        """Give back what a query spent when it then failed before releasing anything."""
        self._transaction(lambda: self.conn.execute(
            "UPDATE privacy_budget SET spent_micro = max(0, spent_micro - ?) WHERE agreement_id = ?", (micro, agreement_id)))

    def budget_spent(self, agreement_id: str, pooled: Sequence[str] = ()) -> int:
        return self._spent([agreement_id, *pooled])
