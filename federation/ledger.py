"""The hub's book of agreements: checks evidence against pinned keys, merges it, keeps
history, and says what state each agreement is in.

Every change is a transaction of the ledger: read the stored evidence, merge or change it,
write the result, with no other change in between (else a revocation written from a stale
read could drop a countersignature that arrived meanwhile, or the reverse). Callers never
take a lock: `add_new`, `update` and `merge_from` are the only ways to write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache

from federation import agreements as ag
from federation import terms as terms_mod
from node.api.v1 import agreement_pb2
from node.clock import Clock
from node.errors import Reason, Rejected
from node.storage import Storage
from node.storage.base import AgreementEventRow, AgreementRow

State = agreement_pb2.AgreementState
LIVE_STATES = {State.AGREEMENT_STATE_PROPOSED, State.AGREEMENT_STATE_PENDING, State.AGREEMENT_STATE_ACTIVE}
_KIND_TO_REASON = {"invalid": Reason.INVALID_REQUEST, "not_party": Reason.PERMISSION_DENIED, "conflict": Reason.ALREADY_EXISTS}
# Proposals (signed by one party only, still valid) a counterparty may have open at this hub.
# Each new one is checked against the counterparty's book, so the cap also bounds that work.
MAX_OPEN_PROPOSALS = 100


def to_row(evidence: ag.Evidence, created_at_ms: int, updated_at_ms: int) -> AgreementRow:
    t = evidence.terms
    return AgreementRow(
        agreement_id=t.agreement_id, provider_id=t.provider.id, consumer_id=t.consumer.id, version=t.version,
        supersedes=t.supersedes, valid_from_ms=t.valid_from_ms, valid_until_ms=t.valid_until_ms,
        document=evidence.to_document().SerializeToString(), created_at_ms=created_at_ms, updated_at_ms=updated_at_ms,
    )


def from_row(row: AgreementRow) -> ag.Evidence:
    return _verified(row.document)


@lru_cache(maxsize=4096)
def _verified(document: bytes) -> ag.Evidence:
    """Stored evidence, signatures verified once per distinct document (catching a tampered
    database) rather than on every query and page load. Evidence is never mutated in place:
    merging makes a new object, so sharing cached ones is safe."""
    return ag.from_document(agreement_pb2.AgreementDocument.FromString(document), check_terms=False)


def changes(before: ag.Evidence | None, after: ag.Evidence) -> list[tuple[str, str, str]]:
    """(event, actor, detail) for what `after` adds to `before`."""
    events = []
    old_sigs = set(before.signatures) if before else set()
    for signer in sorted(set(after.signatures) - old_sigs):
        role = after.role_of(signer)
        event = "proposed" if before is None and len(after.signatures) == 1 else f"signed by {role}"
        events.append((event, signer, ""))
    old_revs = set(before.revocations) if before else set()
    for revoker in sorted(set(after.revocations) - old_revs):
        events.append(("revoked", revoker, after.revocations[revoker].revocation.reason))
    return events


@dataclass
class Merged:
    evidence: ag.Evidence
    changed: bool
    state: int


@dataclass
class LedgerHooks:
    """Test hooks that force interleavings: `between_read_and_write` runs inside every
    transaction after its reads; `waiting` runs when a transaction must wait for another."""

    between_read_and_write: Callable[[], Awaitable[None]] | None = None
    waiting: Callable[[], Awaitable[None]] | None = None


class Ledger:
    def __init__(self, storage: Storage, own_id: str, own_public_key: bytes, clock: Clock) -> None:
        self.storage = storage
        self.clock = clock
        # The hub is the only writer of its book, so serialising its transactions in this
        # process makes each one see the evidence the previous one wrote.
        self._lock = asyncio.Lock()
        self.hooks = LedgerHooks()
        self.own_id = own_id
        self.own_public_key = own_public_key

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        if self._lock.locked() and self.hooks.waiting:
            await self.hooks.waiting()
        async with self._lock:
            yield

    async def _before_write(self) -> None:
        if self.hooks.between_read_and_write:
            await self.hooks.between_read_and_write()

    async def load(self, agreement_id: str) -> ag.Evidence | None:
        row = await self.storage.read(lambda s: s.get_agreement(agreement_id))
        return from_row(row) if row else None

    async def all(self, party_id: str | None = None) -> list[ag.Evidence]:
        rows = await self.storage.read(lambda s: s.list_agreements(party_id))
        return [from_row(r) for r in rows]

    async def require(self, agreement_id: str) -> ag.Evidence:
        evidence = await self.load(agreement_id.strip())
        if evidence is None:
            raise Rejected(Reason.NOT_FOUND, f"no agreement {agreement_id} at this hub")
        return evidence

    # -- state -------------------------------------------------------------------------
    @staticmethod
    def superseded_ids(evidences: list[ag.Evidence]) -> set[str]:
        """Ids replaced by a newer version that both parties signed. Supersession is final: a
        later revocation of the newer version ends that line of agreements; it never brings the
        older, perhaps wider, terms back (else either party alone could roll them back)."""
        return {e.terms.supersedes for e in evidences if e.terms.supersedes and e.fully_signed()}

    async def states(self, evidences: list[ag.Evidence] | None = None, at_ms: int | None = None) -> dict[str, int]:
        evidences = await self.all() if evidences is None else evidences
        superseded = self.superseded_ids(evidences)
        at_ms = self.clock.now_ms() if at_ms is None else at_ms
        return {e.agreement_id: ag.state(e, at_ms, e.agreement_id in superseded) for e in evidences}

    # -- checks ------------------------------------------------------------------------
    async def check_new(self, evidence: ag.Evidence) -> None:
        """Checks for an agreement this hub has not seen: validity, supersession, overlap, and
        the cap on open proposals. Only the counterparty's part of the book is read (indexed)."""
        t = evidence.terms
        try:
            terms_mod.validate(t, self.clock.now_ms(), new=True)
        except terms_mod.TermsError as exc:
            raise Rejected(Reason.INVALID_REQUEST, f"agreement {t.agreement_id}: {exc}") from None
        counterparty = evidence.counterparty(self.own_id).id
        others = await self.all(counterparty)
        if t.supersedes:
            old = next((e for e in others if e.agreement_id == t.supersedes), None)
            if old is None:
                raise Rejected(Reason.INVALID_REQUEST,
                               f"agreement {t.agreement_id} supersedes {t.supersedes}, which this hub does not know")
            if (old.terms.provider.id, old.terms.consumer.id) != (t.provider.id, t.consumer.id) or old.terms.version + 1 != t.version:
                raise Rejected(
                    Reason.INVALID_REQUEST,
                    f"agreement {t.agreement_id} must be version {old.terms.version + 1} between the same parties "
                    f"to supersede {t.supersedes}",
                )
        states = await self.states(others)
        for other in others:
            o = other.terms
            if other.agreement_id == t.supersedes or states[other.agreement_id] not in LIVE_STATES:
                continue
            same_parties = (o.provider.id, o.consumer.id) == (t.provider.id, t.consumer.id)
            overlapping = o.valid_from_ms < t.valid_until_ms and t.valid_from_ms < o.valid_until_ms
            if same_parties and overlapping and set(o.datasets) & set(t.datasets):
                raise Rejected(
                    Reason.ALREADY_EXISTS,
                    f"agreement {t.agreement_id} overlaps agreement {other.agreement_id} for the same parties, dataset and time; "
                    "supersede it with a new version instead",
                )
        open_proposals = sum(1 for state in states.values() if state == State.AGREEMENT_STATE_PROPOSED)
        if open_proposals >= MAX_OPEN_PROPOSALS:
            raise Rejected(
                Reason.TOO_MANY_PROPOSALS,
                f"{counterparty} has {open_proposals} open agreement proposals at this hub, the most allowed "
                f"({MAX_OPEN_PROPOSALS}); accept, revoke or let some expire first",
            )

    def check_parties(self, evidence: ag.Evidence, counterparty_id: str, counterparty_key: bytes) -> None:
        """This hub and the counterparty are the two parties, with the keys this hub pinned."""
        parties = evidence.parties()
        mine = parties.get(self.own_id)
        theirs = parties.get(counterparty_id)
        if mine is None:
            raise Rejected(Reason.PERMISSION_DENIED, f"agreement {evidence.agreement_id} does not name this hub as a party")
        if theirs is None:
            raise Rejected(Reason.PERMISSION_DENIED,
                           f"agreement {evidence.agreement_id} does not name the caller {counterparty_id} as a party")
        if mine.public_key != self.own_public_key or theirs.public_key != counterparty_key:
            raise Rejected(Reason.INVALID_REQUEST, f"agreement {evidence.agreement_id} names a party key other than the pinned one")

    # -- merging -----------------------------------------------------------------------
    async def add_new(self, evidence: ag.Evidence, notify: list[str]) -> None:
        """Store an agreement this hub proposes, after the checks of `check_new`."""
        async with self._transaction():
            if await self.load(evidence.agreement_id) is not None:
                raise Rejected(Reason.ALREADY_EXISTS, f"agreement {evidence.agreement_id} exists already")
            await self.check_new(evidence)
            await self._before_write()
            await self._save([(None, evidence)], notify)

    async def update(self, agreement_id: str, change: Callable[[ag.Evidence, int], ag.Evidence | None],
                     notify: Callable[[ag.Evidence], list[str]]) -> ag.Evidence:
        """Read the agreement and its state, apply `change` (which may raise Rejected, or return
        None for "nothing to change"), write the result: one transaction. Returns the evidence
        now stored."""
        async with self._transaction():
            before = await self.require(agreement_id)
            counterparty = before.counterparty(self.own_id).id
            state = (await self.states(await self.all(counterparty)))[before.agreement_id]
            after = change(before, state)
            if after is None:
                return before
            await self._before_write()
            await self._save([(before, after)], notify(after))
            return after

    async def merge_from(self, counterparty_id: str, counterparty_key: bytes,
                         documents: list[agreement_pb2.AgreementDocument]) -> list[Merged]:
        """Check every document first (all or nothing), then store the merged evidence."""
        async with self._transaction():
            return await self._merge_from(counterparty_id, counterparty_key, documents)

    async def _merge_from(self, counterparty_id: str, counterparty_key: bytes,
                          documents: list[agreement_pb2.AgreementDocument]) -> list[Merged]:
        incoming: list[tuple[ag.Evidence | None, ag.Evidence]] = []
        for doc in documents:
            try:
                evidence = ag.from_document(doc)
            except ag.AgreementError as exc:
                raise Rejected(_KIND_TO_REASON[exc.kind], str(exc)) from None
            self.check_parties(evidence, counterparty_id, counterparty_key)
            if not evidence.signatures:
                raise Rejected(Reason.INVALID_REQUEST, f"agreement {evidence.agreement_id} carries no signature")
            existing = await self.load(evidence.agreement_id)
            if existing is None:
                await self.check_new(evidence)
                merged = evidence
            else:
                try:
                    merged = ag.merge(existing, evidence)
                except ag.AgreementError as exc:
                    raise Rejected(Reason.ALREADY_EXISTS, str(exc)) from None
            incoming.append((existing, merged))
        await self._before_write()
        await self._save(incoming, notify=[])
        states = await self.states(await self.all(counterparty_id))
        return [Merged(after, bool(changes(before, after)), states[after.agreement_id]) for before, after in incoming]

    async def _stored_row(self, agreement_id: str) -> AgreementRow | None:
        return await self.storage.read(lambda s: s.get_agreement(agreement_id))

    async def _save(self, pairs: list[tuple[ag.Evidence | None, ag.Evidence]], notify: list[str]) -> None:
        at = self.clock.now_ms()
        rows, events = [], []
        for before, after in pairs:
            found = changes(before, after)
            if not found:
                continue
            stored = None if before is None else await self._stored_row(after.agreement_id)
            rows.append(to_row(after, stored.created_at_ms if stored else at, at))
            events += [AgreementEventRow(after.agreement_id, at, event, actor, detail) for event, actor, detail in found]
        if rows or notify:
            await self.storage.write(lambda s: s.save_agreements(rows, events, notify, at))
