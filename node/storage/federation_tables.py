"""SQLite tables of federation: peers, partners, agreements, the delivery outbox, the audit
log and seen request nonces. Mixed into SqliteStore (the connection and transactions: Connected)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import astuple, fields
from typing import Any

from node.storage.base import AgreementEventRow, AgreementRow, AuditRow, Delivery, PartnerRecord, PeerRecord
from node.storage.connected import Connected

GENESIS_HASH = bytes(32)


def _columns(record_type: type) -> str:
    return ", ".join(f.name for f in fields(record_type))


def _placeholders(record_type: type) -> str:
    return ", ".join("?" for _ in fields(record_type))


class FederationTables(Connected):

    # -- peers -------------------------------------------------------------------------
    def upsert_peer(self, peer: PeerRecord) -> None:
        self._transaction(lambda: self.conn.execute(
            f"INSERT OR REPLACE INTO peers ({_columns(PeerRecord)}) VALUES ({_placeholders(PeerRecord)})", astuple(peer)
        ))

    def get_peer(self, hub_id: str) -> PeerRecord | None:
        row = self.conn.execute(f"SELECT {_columns(PeerRecord)} FROM peers WHERE hub_id = ?", (hub_id,)).fetchone()
        return PeerRecord(*row) if row else None

    def list_peers(self, include_removed: bool = False) -> list[PeerRecord]:
        where = "" if include_removed else "WHERE removed_at_ms IS NULL"
        return [PeerRecord(*r) for r in self.conn.execute(f"SELECT {_columns(PeerRecord)} FROM peers {where} ORDER BY added_at_ms")]

    def remove_peer(self, hub_id: str, at_ms: int) -> None:
        def work() -> None:
            self.conn.execute("UPDATE peers SET removed_at_ms = ? WHERE hub_id = ? AND removed_at_ms IS NULL", (at_ms, hub_id))
            self.conn.execute("DELETE FROM outbox WHERE peer_id = ?", (hub_id,))

        self._transaction(work)

    def refresh_peer(self, hub_id: str, descriptor: bytes, valid_until_ms: int, http_url: str, at_ms: int, latency_ms: float,
                     *, tls_cert_pem: str = "") -> None:
        """A fresh descriptor from a peer (never touches a removed peer); `tls_cert_pem`, if
        given, re-pins the certificate (a renewal or rotation the caller verified)."""
        self._transaction(lambda: self.conn.execute(
            "UPDATE peers SET descriptor = ?, descriptor_valid_until_ms = ?, http_url = ?, last_contact_ms = ?, latency_ms = ?, "
            "last_error = '', tls_cert_pem = coalesce(nullif(?, ''), tls_cert_pem) WHERE hub_id = ? AND removed_at_ms IS NULL",
            (descriptor, valid_until_ms, http_url, at_ms, latency_ms, tls_cert_pem, hub_id),
        ))

    def record_peer_contact(self, hub_id: str, at_ms: int, latency_ms: float | None, error: str) -> None:
        params: tuple[Any, ...]
        if error:
            sql, params = "UPDATE peers SET last_error = ? WHERE hub_id = ?", (error, hub_id)
        else:
            sql = "UPDATE peers SET last_contact_ms = ?, latency_ms = coalesce(?, latency_ms), last_error = '' WHERE hub_id = ?"
            params = (at_ms, latency_ms, hub_id)
        self._transaction(lambda: self.conn.execute(sql, params))

    # -- partners ----------------------------------------------------------------------
    def add_partner(self, partner: PartnerRecord) -> None:
        self._transaction(lambda: self.conn.execute(
            f"INSERT INTO partners ({_columns(PartnerRecord)}) VALUES ({_placeholders(PartnerRecord)})", astuple(partner)
        ))

    def get_partner(self, partner_id: str) -> PartnerRecord | None:
        row = self.conn.execute(f"SELECT {_columns(PartnerRecord)} FROM partners WHERE partner_id = ?", (partner_id,)).fetchone()
        return PartnerRecord(*row) if row else None

    def list_partners(self, include_removed: bool = False) -> list[PartnerRecord]:
        where = "" if include_removed else "WHERE removed_at_ms IS NULL"
        rows = self.conn.execute(f"SELECT {_columns(PartnerRecord)} FROM partners {where} ORDER BY added_at_ms")
        return [PartnerRecord(*r) for r in rows]

    def remove_partner(self, partner_id: str, at_ms: int) -> None:
        self._transaction(lambda: self.conn.execute(
            "UPDATE partners SET removed_at_ms = ? WHERE partner_id = ? AND removed_at_ms IS NULL", (at_ms, partner_id)))

    def touch_partner(self, partner_id: str, at_ms: int) -> None:
        self._transaction(lambda: self.conn.execute("UPDATE partners SET last_contact_ms = ? WHERE partner_id = ?", (at_ms, partner_id)))

    # -- agreements --------------------------------------------------------------------
    def get_agreement(self, agreement_id: str) -> AgreementRow | None:
        row = self.conn.execute(f"SELECT {_columns(AgreementRow)} FROM agreements WHERE agreement_id = ?", (agreement_id,)).fetchone()
        return AgreementRow(*row) if row else None

    def list_agreements(self, party_id: str | None = None) -> list[AgreementRow]:
        sql = f"SELECT {_columns(AgreementRow)} FROM agreements"
        params: tuple[Any, ...] = ()
        if party_id is not None:
            sql += " WHERE provider_id = ? OR consumer_id = ?"
            params = (party_id, party_id)
        return [AgreementRow(*r) for r in self.conn.execute(sql + " ORDER BY created_at_ms, agreement_id", params)]

    def save_agreements(self, rows: Sequence[AgreementRow], events: Sequence[AgreementEventRow],
                        notify_peers: Sequence[str], now_ms: int) -> None:
        """Store merged evidence, its history, and schedule delivery to peers: one transaction."""

        def work() -> None:
            for row in rows:
                self.conn.execute(
                    f"INSERT INTO agreements ({_columns(AgreementRow)}) VALUES ({_placeholders(AgreementRow)}) "
                    "ON CONFLICT(agreement_id) DO UPDATE SET document = excluded.document, updated_at_ms = excluded.updated_at_ms",
                    astuple(row),
                )
            self.conn.executemany(
                "INSERT INTO agreement_events (agreement_id, at_ms, event, actor, detail) VALUES (?, ?, ?, ?, ?)",
                [astuple(e) for e in events],
            )
            for peer_id in notify_peers:
                self._schedule(peer_id, now_ms)

        self._transaction(work)

    def agreement_events(self, agreement_id: str) -> list[AgreementEventRow]:
        rows = self.conn.execute(
            "SELECT agreement_id, at_ms, event, actor, detail FROM agreement_events WHERE agreement_id = ? ORDER BY id", (agreement_id,)
        )
        return [AgreementEventRow(*r) for r in rows]

    # -- outbox ------------------------------------------------------------------------
    def _schedule(self, peer_id: str, now_ms: int) -> None:
        self.conn.execute(
            "INSERT INTO outbox (peer_id, generation, attempts, next_attempt_ms) VALUES (?, 1, 0, ?) "
            "ON CONFLICT(peer_id) DO UPDATE SET generation = generation + 1, attempts = 0, next_attempt_ms = ?",
            (peer_id, now_ms, now_ms),
        )

    def schedule_delivery(self, peer_id: str, now_ms: int) -> None:
        self._transaction(lambda: self._schedule(peer_id, now_ms))

    def due_deliveries(self, now_ms: int) -> list[Delivery]:
        rows = self.conn.execute(
            "SELECT peer_id, generation, attempts, next_attempt_ms, last_error FROM outbox"
            " WHERE next_attempt_ms <= ? ORDER BY next_attempt_ms",
            (now_ms,),
        )
        return [Delivery(*r) for r in rows]

    def pending_deliveries(self) -> dict[str, Delivery]:
        rows = self.conn.execute("SELECT peer_id, generation, attempts, next_attempt_ms, last_error FROM outbox")
        return {r[0]: Delivery(*r) for r in rows}

    def delivery_done(self, peer_id: str, generation: int) -> None:
        # Only if nothing new was scheduled while the delivery was under way.
        self._transaction(lambda: self.conn.execute("DELETE FROM outbox WHERE peer_id = ? AND generation = ?", (peer_id, generation)))

    def delivery_failed(self, peer_id: str, error: str, next_attempt_ms: int) -> None:
        self._transaction(lambda: self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_ms = ? WHERE peer_id = ?",
            (error, next_attempt_ms, peer_id),
        ))

    def reset_backoff(self, peer_id: str, now_ms: int) -> bool:
        """The peer was heard from: retry its pending delivery now. True if one was pending."""
        cursor = self._transaction(lambda: self.conn.execute(
            "UPDATE outbox SET attempts = 0, next_attempt_ms = ? WHERE peer_id = ? AND next_attempt_ms > ?", (now_ms, peer_id, now_ms)
        ))
        return cursor.rowcount > 0

    # -- audit log ---------------------------------------------------------------------
    def append_audit(self, entries: Sequence[bytes]) -> list[AuditRow]:
        def work() -> list[AuditRow]:
            last = self.conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last[0], last[1]) if last else (0, GENESIS_HASH)
            rows = []
            for entry in entries:
                seq += 1
                digest = hashlib.sha256(prev + entry).digest()
                rows.append(AuditRow(seq, entry, prev, digest))
                prev = digest
            self.conn.executemany("INSERT INTO audit_log (seq, entry, prev_hash, hash) VALUES (?, ?, ?, ?)", [astuple(r) for r in rows])
            return rows

        return self._transaction(work)

    def audit_rows(self, after_seq: int = 0, limit: int | None = None, newest_first: bool = False) -> list[AuditRow]:
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT seq, entry, prev_hash, hash FROM audit_log WHERE seq > ? ORDER BY seq {order}"
        params: tuple[Any, ...] = (after_seq,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return [AuditRow(*r) for r in self.conn.execute(sql, params)]

    # -- request nonces ----------------------------------------------------------------
    def remember_nonce(self, caller_id: str, nonce: bytes, expires_at_ms: int, now_ms: int) -> bool:
        """False if this caller used this nonce before (a replayed request)."""

        def work() -> bool:
            self.conn.execute("DELETE FROM seen_nonces WHERE expires_at_ms < ?", (now_ms,))
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO seen_nonces (caller_id, nonce, expires_at_ms) VALUES (?, ?, ?)", (caller_id, nonce, expires_at_ms)
            )
            return cursor.rowcount == 1

        return self._transaction(work)
