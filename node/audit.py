"""The audit log: every cross-border call, agreement change and refusal, hash-chained.

Each entry is canonical JSON; hash = SHA-256(previous hash || entry), starting from 32 zero
bytes, so removing or altering any entry breaks every hash after it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from node.storage import Storage


@dataclass(frozen=True)
class AuditEntry:
    actor: str      # who: a hub id, partner id, "admin", or "unknown:<claimed id>"
    action: str     # what, e.g. "agreement.propose", "federation.exchange"
    subject: str    # on what, e.g. an agreement id
    outcome: str    # "ok" or the refusal reason
    detail: str = ""
    at_ms: int = 0

    def canonical(self) -> bytes:
        doc = {"at_ms": self.at_ms or int(time.time() * 1000), "actor": self.actor, "action": self.action,
               "subject": self.subject, "outcome": self.outcome, "detail": self.detail}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def record(storage: Storage, *entries: AuditEntry) -> None:
    payloads = [e.canonical() for e in entries]
    await storage.write(lambda s: s.append_audit(payloads))
