"""What the admin and counterparties do with agreements: propose, accept, revoke, exchange,
list, export. Each change is one ledger transaction (federation/ledger.py); every refusal is
written to the audit log."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from federation import agreements as ag
from federation import export
from federation import terms as terms_mod
from federation.auth import Caller
from federation.ledger import LIVE_STATES, Ledger, Merged
from federation.registry import AuditFn, Registry
from node.api.v1 import agreement_pb2
from node.errors import Reason, Rejected
from node.identity import IdentitySource
from node.storage import Storage
from node.storage.base import AgreementEventRow

T = TypeVar("T")


@dataclass
class AgreementInfo:
    evidence: ag.Evidence
    state: int
    role: str
    counterparty: agreement_pb2.Party
    history: list[AgreementEventRow]
    awaiting_my_signature: bool


class AgreementBook:
    def __init__(self, storage: Storage, identity: IdentitySource, own_party: agreement_pb2.Party, ledger: Ledger,
                 registry: Registry, audit: AuditFn, wake_outbox: Callable[[], None]) -> None:
        self._storage = storage
        self._identity = identity  # read at each signature: a live key rotation reaches it
        self._own_party = own_party
        self._own_id = own_party.id
        self._ledger = ledger
        self._registry = registry
        self._audit = audit
        self._wake_outbox = wake_outbox

    # -- admin actions -------------------------------------------------------------------
    async def propose(self, terms_toml: str, to: str) -> AgreementInfo:
        return await self._refusal_audited("agreement.propose", to.strip(), self._propose(terms_toml, to))

    async def accept(self, agreement_id: str) -> AgreementInfo:
        return await self._refusal_audited("agreement.accept", agreement_id.strip(), self._accept(agreement_id))

    async def revoke(self, agreement_id: str, reason: str) -> AgreementInfo:
        return await self._refusal_audited("agreement.revoke", agreement_id.strip(), self._revoke(agreement_id, reason))

    async def _refusal_audited(self, action: str, subject: str, work: Awaitable[T]) -> T:
        try:
            return await work
        except Rejected as rejected:
            await self._audit("admin", action, subject, rejected.reason.label, rejected.message)
            raise

    async def _propose(self, terms_toml: str, to: str) -> AgreementInfo:
        counterparty = await self._registry.party(to)
        try:
            doc = terms_mod.parse_toml(terms_toml)
            provider, consumer = self._own_party, counterparty
            wanted_provider = doc.get("provider", self._own_id)
            if wanted_provider != self._own_id:
                # This hub asks a neighbour for data: the neighbour provides, this hub consumes.
                if wanted_provider != counterparty.id or counterparty.kind != agreement_pb2.PARTY_KIND_HUB:
                    raise terms_mod.TermsError("provider must be this hub or the hub named with --to")
                provider, consumer = counterparty, self._own_party
            terms = terms_mod.from_toml(doc, provider, consumer, self._ledger.clock.now_ms())
        except terms_mod.TermsError as exc:
            raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
        identity = self._identity()
        evidence = ag.propose(terms, self._own_id, identity.identity_key, identity.key_history)
        await self._ledger.add_new(evidence, self._notify(evidence))
        self._wake_outbox()
        await self._audit("admin", "agreement.propose", evidence.agreement_id, "ok", f"to {counterparty.id}")
        return await self.info(evidence.agreement_id)

    async def _accept(self, agreement_id: str) -> AgreementInfo:
        already = False

        def countersign(evidence: ag.Evidence, state: int) -> ag.Evidence | None:
            nonlocal already
            if self._own_id in evidence.signatures and state in (ag.State.AGREEMENT_STATE_PENDING, ag.State.AGREEMENT_STATE_ACTIVE):
                already = True  # a retried accept whose first attempt took effect: success, nothing to do
                return None
            if state != ag.State.AGREEMENT_STATE_PROPOSED or self._own_id in evidence.signatures:
                raise Rejected(Reason.INVALID_REQUEST,
                               f"agreement {agreement_id} is {ag.STATE_NAMES[state]} and not awaiting this hub's signature")
            if evidence.terms.valid_until_ms <= self._ledger.clock.now_ms():
                raise Rejected(Reason.INVALID_REQUEST, f"agreement {agreement_id} has expired; it can no longer be signed")
            identity = self._identity()
            return ag.countersign(evidence, self._own_id, identity.identity_key, identity.key_history)

        evidence = await self._ledger.update(agreement_id.strip(), countersign, self._notify)
        self._wake_outbox()
        if not already:
            await self._audit("admin", "agreement.accept", evidence.agreement_id)
        return await self.info(evidence.agreement_id)

    async def _revoke(self, agreement_id: str, reason: str) -> AgreementInfo:
        if not reason.strip():
            raise Rejected(Reason.INVALID_REQUEST, "give a reason for the revocation")

        def revoke(evidence: ag.Evidence, state: int) -> ag.Evidence:
            if evidence.role_of(self._own_id) is None:
                raise Rejected(Reason.PERMISSION_DENIED, f"this hub is not a party to {agreement_id}")
            if self._own_id in evidence.revocations:
                raise Rejected(Reason.ALREADY_EXISTS, f"agreement {agreement_id} is already revoked by this hub")
            return self._revoked(evidence, reason)

        evidence = await self._ledger.update(agreement_id.strip(), revoke, self._notify)
        self._wake_outbox()
        await self._audit("admin", "agreement.revoke", evidence.agreement_id, "ok", reason.strip())
        return await self.info(evidence.agreement_id)

    def _revoked(self, evidence: ag.Evidence, reason: str) -> ag.Evidence:
        identity = self._identity()
        return ag.revoke(evidence, self._own_id, identity.identity_key, reason.strip(), self._ledger.clock.now_ms(),
                         identity.key_history)

    async def revoke_all_with(self, party_id: str, reason: str) -> list[str]:
        """Revoke every agreement with `party_id` that is still in force or awaiting signatures
        (a partner being removed), each in its own ledger transaction like an admin's revoke,
        and delivered to a hub counterparty the same way. Returns the ids revoked now; those
        ended already (revoked, expired, superseded) are left as they are."""
        revoked = []
        for evidence in await self._ledger.all(party_id):
            ended = False

            def revoke(current: ag.Evidence, state: int) -> ag.Evidence | None:
                nonlocal ended
                if state not in LIVE_STATES or self._own_id in current.revocations:
                    return None  # ended meanwhile: nothing to do
                ended = True
                return self._revoked(current, reason)

            await self._ledger.update(evidence.agreement_id, revoke, self._notify)
            if ended:
                revoked.append(evidence.agreement_id)
                await self._audit("admin", "agreement.revoke", evidence.agreement_id, "ok", reason.strip())
        if revoked:
            self._wake_outbox()
        return revoked

    def _notify(self, evidence: ag.Evidence) -> list[str]:
        """Peers to deliver a change to: the counterparty if it is a hub (partners fetch)."""
        counterparty = evidence.counterparty(self._own_id)
        return [counterparty.id] if counterparty.kind == agreement_pb2.PARTY_KIND_HUB else []

    # -- inbound exchange ----------------------------------------------------------------
    async def receive(self, caller: Caller, documents: list[agreement_pb2.AgreementDocument]) -> tuple[list[Merged], list[ag.Evidence]]:
        """Merge what an authenticated counterparty sent; return the outcomes and everything
        this hub holds of agreements with it."""
        subject = ",".join(agreement_id_of(d) for d in documents)
        try:
            merged = await self._ledger.merge_from(caller.id, caller.agreement_key, documents)
        except Rejected as rejected:
            await self._audit(caller.id, "agreement.exchange", subject, rejected.reason.label, rejected.message)
            raise
        for m in merged:
            if m.changed:
                await self._audit(caller.id, "agreement.exchange", m.evidence.agreement_id, "ok", ag.STATE_NAMES[m.state])
        return merged, await self._ledger.all(caller.id)

    # -- reading -------------------------------------------------------------------------
    async def info(self, agreement_id: str) -> AgreementInfo:
        evidence = await self._ledger.require(agreement_id)
        book = await self._ledger.all(evidence.counterparty(self._own_id).id)
        return await self._info(evidence, await self._ledger.states(book))

    async def _info(self, evidence: ag.Evidence, states: dict[str, int]) -> AgreementInfo:
        history = await self._storage.read(lambda s: s.agreement_events(evidence.agreement_id))
        state = states[evidence.agreement_id]
        return AgreementInfo(
            evidence=evidence,
            state=state,
            role=evidence.role_of(self._own_id) or "",
            counterparty=evidence.counterparty(self._own_id),
            history=history,
            awaiting_my_signature=state == ag.State.AGREEMENT_STATE_PROPOSED and self._own_id not in evidence.signatures,
        )

    async def list(self) -> list[AgreementInfo]:
        evidences = await self._ledger.all()
        states = await self._ledger.states(evidences)
        return [await self._info(e, states) for e in evidences]

    async def export(self, agreement_id: str) -> bytes:
        info = await self.info(agreement_id)
        identity = self._identity()
        return export.export(info.evidence, info.state, self._own_id, self._ledger.clock.now_ms(), identity.identity_key,
                             identity.key_history)

    async def state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in (await self._ledger.states()).values():
            counts[ag.STATE_NAMES[state]] = counts.get(ag.STATE_NAMES[state], 0) + 1
        return counts


def agreement_id_of(document: agreement_pb2.AgreementDocument) -> str:
    try:
        agreement_id: str = agreement_pb2.AgreementTerms.FromString(document.signed_terms.terms).agreement_id
        return agreement_id
    except Exception:  # an unparseable document is reported by the merge itself
        return "?"
