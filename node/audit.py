"""The audit log: every cross-border call, agreement change and refusal, hash-chained.

Each entry is canonical JSON; hash = SHA-256(previous hash || entry), starting from 32 zero
bytes, so removing or altering any entry breaks every hash after it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.clock import Clock
from node.keychain import key_of_hub
from node.signing import Domain, hub_id_from_public_key, verify
from node.storage import Storage
from node.storage.base import AuditRow


@dataclass(frozen=True)
class AuditEntry:
    actor: str      # who: a hub id, partner id, "admin", or "unknown:<claimed id>"
    action: str     # what, e.g. "agreement.propose", "federation.exchange"
    subject: str    # on what, e.g. an agreement id
    outcome: str    # "ok" or the refusal reason
    detail: str = ""
    at_ms: int = 0  # set by `record` from the hub's clock when left 0

    def canonical(self) -> bytes:
        # Fields are bounded: parts of them come from callers, who must not be able to fill the disk.
        cap = lambda text, n: text if len(text) <= n else text[: n - 1] + "…"  # noqa: E731
        doc = {"at_ms": self.at_ms, "actor": cap(self.actor, 100), "action": cap(self.action, 100),
               "subject": cap(self.subject, 300), "outcome": cap(self.outcome, 50), "detail": cap(self.detail, 1000)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def record(storage: Storage, clock: Clock, *entries: AuditEntry) -> None:
    now = clock.now_ms()
    payloads = [(e if e.at_ms else AuditEntry(e.actor, e.action, e.subject, e.outcome, e.detail, now)).canonical() for e in entries]
    await storage.write(lambda s: s.append_audit(payloads))


# -- refusals of unauthenticated callers ------------------------------------------------
# Anyone can send a request that is refused before the caller is known. Writing one fsynced
# entry per refusal let a flooder grow the log by ~10 GB a day and bury every other entry, so
# such refusals are counted in memory and written as ONE entry per source address per minute:
# actor "source:<address>", action "auth.refused", the count and a breakdown in the detail.
# Growth bound: at most REFUSAL_SOURCES_PER_MINUTE + 1 entries a minute (further sources share
# the entry of source "other"), each under 1.6 KB: one flooding address adds 1,440 entries
# (~2 MB) a day, and no number of addresses more than 47,520 entries (~75 MB) a day.
# A crash loses at most the current minute's counts (never an authenticated call's entry).
REFUSAL_SOURCES_PER_MINUTE = 32
_KINDS_PER_SOURCE = 8  # (action, outcome) pairs itemised per source; more are only counted


@dataclass
class _SourceTally:
    count: int = 0
    kinds: dict[tuple[str, str], int] = field(default_factory=dict)
    first: dict[tuple[str, str], str] = field(default_factory=dict)  # first (actor: detail) per kind

    def add(self, actor: str, action: str, outcome: str, detail: str) -> None:
        self.count += 1
        kind = (action, outcome)
        if kind in self.kinds or len(self.kinds) < _KINDS_PER_SOURCE:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            self.first.setdefault(kind, f"{actor[:100]}: {detail[:200]}")

    def describe(self, minute_ms: int) -> str:
        at = dt.datetime.fromtimestamp(minute_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%MZ")
        items = "; ".join(f"{n} x {action} {outcome} (first {self.first[(action, outcome)]})"
                          for (action, outcome), n in self.kinds.items())
        return f"{self.count} refused in the minute from {at}: {items}"


class RefusalTally:
    """Refusals of callers not yet authenticated, aggregated per source and minute."""

    def __init__(self, storage: Storage, clock: Clock) -> None:
        self._storage = storage
        self._clock = clock
        self._minute_ms: int | None = None
        self._sources: dict[str, _SourceTally] = {}
        # One lock over counting and writing: a refusal counted while the background round writes
        # the last minute waits for that write, so once a refusal returns, every minute before it
        # is in the log (never half-swapped out and still in flight).
        self._lock = asyncio.Lock()

    async def count(self, source: str, actor: str, action: str, outcome: str, detail: str) -> None:
        async with self._lock:
            minute_ms = self._clock.now_ms() // 60_000 * 60_000
            if self._minute_ms is not None and minute_ms != self._minute_ms:
                await self._write_held()
            self._minute_ms = minute_ms
            if source not in self._sources and len(self._sources) >= REFUSAL_SOURCES_PER_MINUTE:
                source = "other"
            self._sources.setdefault(source, _SourceTally()).add(actor, action, outcome, detail)

    async def flush_due(self) -> None:
        """Write the counts of a minute that has ended (called by the hub's background round)."""
        async with self._lock:
            if self._minute_ms is not None and self._clock.now_ms() // 60_000 * 60_000 != self._minute_ms:
                await self._write_held()

    async def flush(self) -> None:
        """Write the counts held so far, one entry per source, in one transaction."""
        async with self._lock:
            await self._write_held()

    async def _write_held(self) -> None:
        if self._minute_ms is None or not self._sources:
            return
        minute_ms, sources = self._minute_ms, self._sources
        self._minute_ms, self._sources = None, {}
        entries = [AuditEntry(f"source:{source}", "auth.refused", "", "refused", tally.describe(minute_ms), minute_ms)
                   for source, tally in sources.items()]
        await record(self._storage, self._clock, *entries)


async def admin_action(storage: Storage, now_ms: int, action: str, subject: str, detail: str = "", outcome: str = "ok") -> None:
    """Record something the hub's admin did (docs/operations.md lists the actions)."""
    entry = AuditEntry("admin", action, subject, outcome, detail, at_ms=now_ms)
    await storage.write(lambda s: s.append_audit([entry.canonical()]))


def record_in_database(db_path: Path, entry: AuditEntry) -> None:
    """Append one entry from a process that is not the hub (a CLI command working on the data
    directory, such as `backup`): SQLite serialises it with the running hub's writes."""
    from node.storage.sqlite import SqliteStore

    store = SqliteStore(db_path)
    try:
        store.append_audit([entry.canonical()])
    finally:
        store.close()


# -- offline verification ---------------------------------------------------------------
# An export is JSON lines: a header naming the hub and its public key, one line per entry
# with the entry's exact bytes and both hashes, and a head signed by the hub's identity key
# (domain "smartregion/v1/audit-head"). Anyone can then check, offline, that no entry was
# altered, removed or reordered up to the signed head, and who signed it.
EXPORT_FORMAT = "smartregion-audit-log"


class AuditError(ValueError):
    pass


def export_lines(rows, hub_id: str, public_key: bytes, sign_head, now_ms: int, key_history: Sequence[bytes] = ()) -> bytes:
    """`public_key` signs the head; a hub that rotated its identity key adds its key history
    ("key_history", hex statements, node/keychain.py) linking that key to the hub id."""
    header: dict[str, Any] = {"format": EXPORT_FORMAT, "version": 1, "hub_id": hub_id, "public_key": public_key.hex()}
    if key_history:
        header["key_history"] = [s.hex() for s in key_history]
    lines = [header]
    for row in rows:
        lines.append({"seq": row.seq, "entry": row.entry.decode(), "prev_hash": row.prev_hash.hex(), "hash": row.hash.hex()})
    head = json.dumps({"hub_id": hub_id, "seq": rows[-1].seq if rows else 0,
                       "hash": rows[-1].hash.hex() if rows else bytes(32).hex(), "signed_at_ms": now_ms},
                      sort_keys=True, separators=(",", ":"))
    lines.append({"head": head, "signature": sign_head(head.encode()).hex()})
    return ("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n").encode()


def verify_export(data: bytes) -> dict:
    """Check an export; return its signed head. Raises AuditError naming the first problem."""
    try:
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        header, entries, trailer = lines[0], lines[1:-1], lines[-1]
        public_key = bytes.fromhex(header["public_key"])
        history = [bytes.fromhex(s) for s in header.get("key_history", [])]
    except (ValueError, IndexError, KeyError, UnicodeDecodeError, TypeError) as exc:
        raise AuditError(f"not an audit export: {exc}") from None
    if header.get("format") != EXPORT_FORMAT or header.get("version") != 1:
        raise AuditError("not a smartregion audit export (version 1)")
    if not history and (len(public_key) != 32 or hub_id_from_public_key(public_key) != header.get("hub_id")):
        raise AuditError("the hub id is not derived from the public key in the export")
    problem = key_of_hub(str(header.get("hub_id")), public_key, history)
    if problem:
        raise AuditError(f"the export's signing key is not the hub's: {problem}")
    previous = bytes(32)
    for expected_seq, line in enumerate(entries, start=1):
        try:
            entry, prev_hash, digest = line["entry"].encode(), bytes.fromhex(line["prev_hash"]), bytes.fromhex(line["hash"])
        except (KeyError, ValueError, AttributeError) as exc:
            raise AuditError(f"entry {expected_seq} is damaged: {exc}") from None
        if line.get("seq") != expected_seq:
            raise AuditError(f"entry {expected_seq} is missing or out of order (found seq {line.get('seq')})")
        if prev_hash != previous or hashlib.sha256(previous + entry).digest() != digest:
            raise AuditError(f"entry {expected_seq} was altered, or an entry before it was removed")
        previous = digest
    head_bytes = str(trailer.get("head", "")).encode()
    if not verify(public_key, Domain.AUDIT_HEAD, head_bytes, bytes.fromhex(trailer.get("signature", ""))):
        raise AuditError("the signature over the head does not verify under the hub's key")
    head = json.loads(head_bytes)
    if head.get("seq") != len(entries) or head.get("hash") != previous.hex() or head.get("hub_id") != header["hub_id"]:
        raise AuditError("the signed head does not match the entries (entries were removed from the end, or added)")
    return head


def verify_extension(older: bytes, newer: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check that the export `newer` extends `older`: both verify, both are the same hub's, and
    `newer` holds every entry of `older` unchanged at the same place. Returns both heads; raises
    AuditError if the log was rewritten between them."""
    try:
        old_head = verify_export(older)
    except AuditError as exc:
        raise AuditError(f"the earlier export does not verify: {exc}") from None
    try:
        new_head = verify_export(newer)
    except AuditError as exc:
        raise AuditError(f"the newer export does not verify: {exc}") from None
    if old_head["hub_id"] != new_head["hub_id"]:
        raise AuditError(f"the exports are of different hubs ({old_head['hub_id']} and {new_head['hub_id']})")
    if new_head["seq"] < old_head["seq"]:
        raise AuditError(f"the newer export has fewer entries ({new_head['seq']}) than the earlier one ({old_head['seq']})")
    if old_head["seq"]:
        at = json.loads(newer.decode().splitlines()[old_head["seq"]])  # line 0 is the header
        if at.get("hash") != old_head["hash"]:
            raise AuditError(f"entry {old_head['seq']} differs between the exports: the log was rewritten after the earlier one")
    return old_head, new_head


def entries_of(rows: Sequence[AuditRow]) -> list[tuple[int, dict[str, Any]]]:
    """(seq, entry as a dict) of audit rows, for display and filtering."""
    return [(row.seq, json.loads(row.entry)) for row in rows]
