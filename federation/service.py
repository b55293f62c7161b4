"""A hub's federation: who may call it, its peers and partners, and its agreements.

Domain logic only; node/app/servicers/federation.py and node/app/servicers/admin.py translate to gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from federation import agreements as ag
from federation import descriptors, envelope, export, partners, peers
from federation import terms as terms_mod
from federation.auth import Caller
from federation.ledger import Ledger, Merged, now_ms
from node import audit, ids
from node.api.v1 import agreement_pb2, envelope_pb2, federation_pb2, federation_pb2_grpc
from node.audit import AuditEntry
from node.errors import Reason, Rejected
from node.hub import Hub
from node.register import lookup
from node.storage.base import PartnerRecord, PeerRecord

log = logging.getLogger("smartregion.federation")
EXCHANGE_METHOD = "/smartregion.v1.Federation/ExchangeAgreements"


@dataclass
class AgreementInfo:
    evidence: ag.Evidence
    state: int
    role: str
    counterparty: agreement_pb2.Party
    history: list
    awaiting_my_signature: bool


class Federation:
    def __init__(self, hub: Hub, refresh_seconds: float = 30.0, retry_base_seconds: float = 1.0,
                 retry_max_seconds: float = 60.0) -> None:
        self.hub = hub
        self.own_id = hub.config.hub_id
        self.ledger = Ledger(hub.storage, self.own_id, hub.identity.public_key_raw)
        self.refresh_seconds = refresh_seconds
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self._descriptor: federation_pb2.SignedDescriptor | None = None
        self._channels: dict[str, tuple[str, str, grpc.aio.Channel]] = {}
        self._wake = asyncio.Event()

    # -- who we are ---------------------------------------------------------------------
    def descriptor(self) -> federation_pb2.SignedDescriptor:
        if self._descriptor is None or descriptors.needs_refresh(self._descriptor, now_ms()):
            self._descriptor = descriptors.issue(
                self.hub.identity, self.hub.config.municipality, self.hub.endpoint.grpc_address, self.hub.endpoint.http_url
            )
        return self._descriptor

    def own_party(self) -> agreement_pb2.Party:
        return agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=self.own_id,
                                   public_key=self.hub.identity.public_key_raw, name=self.hub.config.municipality_name)

    async def audit(self, actor: str, action: str, subject: str, outcome: str = "ok", detail: str = "") -> None:
        await audit.record(self.hub.storage, AuditEntry(actor, action, subject, outcome, detail))

    # -- who is calling -----------------------------------------------------------------
    async def known_caller(self, caller_id: str) -> Caller | None:
        peer = await self.hub.storage.read(lambda s: s.get_peer(caller_id))
        if peer and not peer.removed_at_ms:
            return Caller("hub", peer.hub_id, peer.public_key, f"hub {peer.municipality}")
        partner = await self.hub.storage.read(lambda s: s.get_partner(caller_id))
        if partner and not partner.removed_at_ms:
            return Caller("partner", partner.partner_id, partner.public_key, partner.name)
        return None

    async def authenticate(self, signed: envelope_pb2.SignedRequest, method: str) -> tuple[Caller, envelope_pb2.Request]:
        """Deny by default: only a pinned caller's fresh, correctly signed request passes."""
        try:
            request = envelope.parse(signed)
            ids.from_text(request.caller_id, "caller id")
        except (envelope.EnvelopeError, ValueError) as exc:
            message = str(exc)[:200]
            await self.audit("unknown", method, "", "unauthenticated", message)
            raise Rejected(Reason.UNAUTHENTICATED, message) from None
        caller = await self.known_caller(request.caller_id)
        if caller is None:
            await self.audit(f"unknown:{request.caller_id}", method, "", "unauthenticated", "not a pinned peer or partner")
            raise Rejected(Reason.UNAUTHENTICATED, f"caller {request.caller_id!r} is not a peer or partner of this hub")
        at = now_ms()
        try:
            envelope.check(signed, request, caller.public_key, self.own_id, method, at)
        except envelope.EnvelopeError as exc:
            await self.audit(caller.id, method, "", "unauthenticated", str(exc))
            raise Rejected(Reason.UNAUTHENTICATED, str(exc)) from None
        fresh = await self.hub.storage.write(
            lambda s: s.remember_nonce(caller.id, request.nonce, request.issued_at_ms + 2 * envelope.MAX_CLOCK_SKEW_MS, at)
        )
        if not fresh:
            await self.audit(caller.id, method, "", "replayed", "a request nonce was used again")
            raise Rejected(Reason.ALREADY_EXISTS, "this request was already received (replayed nonce)")
        await self.heard_from(caller)
        return caller, request

    async def heard_from(self, caller: Caller) -> None:
        at = now_ms()
        if caller.kind == "hub":
            await self.hub.storage.write(lambda s: s.record_peer_contact(caller.id, at, None, ""))
            if await self.hub.storage.write(lambda s: s.reset_backoff(caller.id, at)):
                self._wake.set()
        else:
            await self.hub.storage.write(lambda s: s.touch_partner(caller.id, at))

    # -- inbound agreement exchange ---------------------------------------------------
    async def exchange(self, caller: Caller, documents: list[agreement_pb2.AgreementDocument]) -> tuple[list[Merged], list[ag.Evidence]]:
        subject = ",".join(_agreement_id(d) for d in documents)
        try:
            merged = await self.ledger.merge_from(caller.id, caller.public_key, documents)
        except Rejected as rejected:
            await self.audit(caller.id, "agreement.exchange", subject, rejected.reason.label, rejected.message)
            raise
        for m in merged:
            if m.changed:
                await self.audit(caller.id, "agreement.exchange", m.evidence.agreement_id, "ok", ag.STATE_NAMES[m.state])
        return merged, await self.ledger.all(caller.id)

    # -- peers --------------------------------------------------------------------------
    async def add_peer(self, address: str, hub_id: str) -> PeerRecord:
        try:
            hub_id = ids.to_text(ids.from_text(hub_id, "hub id"))
        except ValueError as exc:
            raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
        if hub_id == self.own_id:
            raise Rejected(Reason.INVALID_REQUEST, "a hub cannot be its own peer")
        try:
            peers.split_address(address)
        except peers.PeerError as exc:
            raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
        try:
            verified, cert_pem = await peers.fetch_descriptor(address, hub_id)
        except peers.PeerError as exc:
            await self.audit("admin", "peer.add", hub_id, "refused", str(exc))
            raise Rejected(Reason.PERMISSION_DENIED if exc.impostor else Reason.UNAVAILABLE, str(exc)) from None
        existing = await self.hub.storage.read(lambda s: s.get_peer(hub_id))
        record = peers.peer_record(verified, address, cert_pem, existing.added_at_ms if existing else now_ms())
        conflict = peers.municipality_conflict(record, self.hub.config.municipality,
                                               await self.hub.storage.read(lambda s: s.list_peers(False)))
        if conflict:
            await self.audit("admin", "peer.add", hub_id, "refused", conflict)
            raise Rejected(Reason.ALREADY_EXISTS, conflict)
        await self.hub.storage.write(lambda s: s.upsert_peer(record))
        await self.hub.storage.write(lambda s: s.schedule_delivery(hub_id, now_ms()))
        self._wake.set()
        await self.audit("admin", "peer.add", hub_id, "ok", f"{record.municipality} at {address}")
        return record

    async def remove_peer(self, hub_id: str) -> PeerRecord:
        peer = await self.hub.storage.read(lambda s: s.get_peer(hub_id.strip()))
        if peer is None:
            raise Rejected(Reason.NOT_FOUND, f"hub {hub_id} is not a peer")
        await self.hub.storage.write(lambda s: s.remove_peer(peer.hub_id, now_ms()))
        cached = self._channels.pop(peer.hub_id, None)
        if cached:
            self._retire(cached[2])
        await self.audit("admin", "peer.remove", peer.hub_id)
        return await self.hub.storage.read(lambda s: s.get_peer(peer.hub_id))

    async def list_peers(self, include_removed: bool):
        found = await self.hub.storage.read(lambda s: s.list_peers(include_removed))
        pending = await self.hub.storage.read(lambda s: s.pending_deliveries())
        return [(p, peers.peer_state(p, now_ms()), 1 if p.hub_id in pending else 0) for p in found]

    # -- partners -----------------------------------------------------------------------
    async def add_partner(self, name: str, org_number: str, public_key_file: bytes) -> PartnerRecord:
        if not name.strip():
            raise Rejected(Reason.INVALID_REQUEST, "a partner needs a name")
        if not partners.ORG_NUMBER.match(org_number):
            raise Rejected(Reason.INVALID_REQUEST, f"organisation number {org_number!r} is not 9 digits")
        try:
            partner_id, key = partners.parse_public(public_key_file)
        except partners.PartnerKeyError as exc:
            raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
        if await self.hub.storage.read(lambda s: s.get_partner(partner_id)):
            raise Rejected(Reason.ALREADY_EXISTS, f"partner {partner_id} is already registered")
        record = PartnerRecord(partner_id, name.strip(), org_number, key, now_ms())
        await self.hub.storage.write(lambda s: s.add_partner(record))
        await self.audit("admin", "partner.add", partner_id, "ok", f"{record.name} ({org_number})")
        return record

    async def list_partners(self) -> list[PartnerRecord]:
        return await self.hub.storage.read(lambda s: s.list_partners())

    # -- agreements (admin) -------------------------------------------------------------
    async def _party(self, party_id: str) -> agreement_pb2.Party:
        caller = await self.known_caller(party_id.strip())
        if caller is None:
            raise Rejected(Reason.NOT_FOUND, f"{party_id!r} is neither a peer hub nor a registered partner")
        kind = agreement_pb2.PARTY_KIND_HUB if caller.kind == "hub" else agreement_pb2.PARTY_KIND_PARTNER
        name = caller.name
        if caller.kind == "hub":
            peer = await self.hub.storage.read(lambda s: s.get_peer(caller.id))
            name = lookup(peer.municipality).name
        return agreement_pb2.Party(kind=kind, id=caller.id, public_key=caller.public_key, name=name)

    async def _refusal_audited(self, action: str, subject: str, work):
        """Run an admin action on agreements, one at a time with every other change to the book
        (read, merge and write must not interleave, or evidence such as a revocation could be
        overwritten); a refusal is written to the audit log like every other refusal."""
        try:
            async with self.ledger.lock:
                return await work
        except Rejected as rejected:
            await self.audit("admin", action, subject, rejected.reason.label, rejected.message)
            raise

    async def propose(self, terms_toml: str, to: str) -> AgreementInfo:
        return await self._refusal_audited("agreement.propose", to.strip(), self._propose(terms_toml, to))

    async def accept(self, agreement_id: str) -> AgreementInfo:
        return await self._refusal_audited("agreement.accept", agreement_id.strip(), self._accept(agreement_id))

    async def revoke(self, agreement_id: str, reason: str) -> AgreementInfo:
        return await self._refusal_audited("agreement.revoke", agreement_id.strip(), self._revoke(agreement_id, reason))

    async def _propose(self, terms_toml: str, to: str) -> AgreementInfo:
        counterparty = await self._party(to)
        try:
            doc = terms_mod.parse_toml(terms_toml)
            provider, consumer = self.own_party(), counterparty
            wanted_provider = doc.get("provider", self.own_id)
            if wanted_provider != self.own_id:
                # This hub asks a neighbour for data: the neighbour provides, this hub consumes.
                if wanted_provider != counterparty.id or counterparty.kind != agreement_pb2.PARTY_KIND_HUB:
                    raise terms_mod.TermsError("provider must be this hub or the hub named with --to")
                provider, consumer = counterparty, self.own_party()
            terms = terms_mod.from_toml(doc, provider, consumer)
        except terms_mod.TermsError as exc:
            raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
        evidence = ag.propose(terms, self.own_id, self.hub.identity.identity_key)
        await self.ledger.check_new(evidence)
        await self._save(None, evidence, counterparty)
        await self.audit("admin", "agreement.propose", evidence.agreement_id, "ok", f"to {counterparty.id}")
        return await self.info(evidence.agreement_id)

    async def _accept(self, agreement_id: str) -> AgreementInfo:
        evidence = await self.ledger.require(agreement_id)
        info = await self.info(evidence.agreement_id)
        if not info.awaiting_my_signature:
            raise Rejected(Reason.INVALID_REQUEST, f"agreement {agreement_id} is {ag.STATE_NAMES[info.state]} and not awaiting this hub's signature")
        if evidence.terms.valid_until_ms <= now_ms():
            raise Rejected(Reason.INVALID_REQUEST, f"agreement {agreement_id} has expired; it can no longer be signed")
        signed = ag.countersign(evidence, self.own_id, self.hub.identity.identity_key)
        await self._save(evidence, signed, info.counterparty)
        await self.audit("admin", "agreement.accept", evidence.agreement_id)
        return await self.info(evidence.agreement_id)

    async def _revoke(self, agreement_id: str, reason: str) -> AgreementInfo:
        if not reason.strip():
            raise Rejected(Reason.INVALID_REQUEST, "give a reason for the revocation")
        evidence = await self.ledger.require(agreement_id)
        if evidence.role_of(self.own_id) is None:
            raise Rejected(Reason.PERMISSION_DENIED, f"this hub is not a party to {agreement_id}")
        if self.own_id in evidence.revocations:
            raise Rejected(Reason.ALREADY_EXISTS, f"agreement {agreement_id} is already revoked by this hub")
        revoked = ag.revoke(evidence, self.own_id, self.hub.identity.identity_key, reason.strip(), now_ms())
        await self._save(evidence, revoked, evidence.counterparty(self.own_id))
        await self.audit("admin", "agreement.revoke", evidence.agreement_id, "ok", reason.strip())
        return await self.info(evidence.agreement_id)

    async def _save(self, before: ag.Evidence | None, after: ag.Evidence, counterparty: agreement_pb2.Party) -> None:
        notify = [counterparty.id] if counterparty.kind == agreement_pb2.PARTY_KIND_HUB else []
        await self.ledger.save([(before, after)], notify=notify)
        if notify:
            self._wake.set()

    async def info(self, agreement_id: str) -> AgreementInfo:
        evidence = await self.ledger.require(agreement_id)
        return await self._info(evidence, await self.ledger.states())

    async def _info(self, evidence: ag.Evidence, states: dict[str, int]) -> AgreementInfo:
        history = await self.hub.storage.read(lambda s: s.agreement_events(evidence.agreement_id))
        state = states[evidence.agreement_id]
        return AgreementInfo(
            evidence=evidence,
            state=state,
            role=evidence.role_of(self.own_id) or "",
            counterparty=evidence.counterparty(self.own_id),
            history=history,
            awaiting_my_signature=state == ag.State.AGREEMENT_STATE_PROPOSED and self.own_id not in evidence.signatures,
        )

    async def list_agreements(self) -> list[AgreementInfo]:
        evidences = await self.ledger.all()
        states = await self.ledger.states(evidences)
        return [await self._info(e, states) for e in evidences]

    async def export(self, agreement_id: str) -> bytes:
        info = await self.info(agreement_id)
        return export.export(info.evidence, info.state, self.own_id, now_ms(), self.hub.identity.identity_key)

    # -- outbound: keeping peers in step ------------------------------------------------
    def channel(self, peer: PeerRecord) -> grpc.aio.Channel:
        cached = self._channels.get(peer.hub_id)
        if cached and cached[:2] == (peer.grpc_address, peer.tls_cert_pem):
            return cached[2]
        if cached:
            self._retire(cached[2])
        channel = peers.channel_to(peer.grpc_address, peer.hub_id, peer.tls_cert_pem.encode())
        self._channels[peer.hub_id] = (peer.grpc_address, peer.tls_cert_pem, channel)
        return channel

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Close a channel no longer used, after a grace period for calls still under way."""
        asyncio.get_running_loop().create_task(channel.close(grace=peers.CALL_TIMEOUT_S))

    async def sync_with(self, peer: PeerRecord) -> None:
        """Send everything held of agreements with `peer`, one document per exchange so that a
        document the peer refuses cannot hold back the others; merge what it answers. Raises
        only when the peer cannot be reached (the caller retries later)."""
        documents = [e.to_document() for e in await self.ledger.all(peer.hub_id)]
        held: list = []
        for batch in [[d] for d in documents] or [[]]:
            try:
                response = await self._exchange(peer, batch)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAUTHENTICATED):
                    raise
                # The peer refuses this document for good (expired, overlapping, ...): record it, go on.
                await self.audit(peer.hub_id, "agreement.deliver", _agreement_id(batch[0]) if batch else "",
                                 exc.code().name.lower(), exc.details() or "")
                continue
            held = list(response.documents.documents)
        for doc in held:
            try:
                merged = await self.ledger.merge_from(peer.hub_id, peer.public_key, [doc])
            except Rejected as rejected:
                await self.audit(peer.hub_id, "agreement.exchange", _agreement_id(doc), rejected.reason.label, rejected.message)
                continue
            for m in merged:
                if m.changed:
                    await self.audit(peer.hub_id, "agreement.exchange", m.evidence.agreement_id, "ok", ag.STATE_NAMES[m.state])

    async def _exchange(self, peer: PeerRecord, documents: list) -> federation_pb2.ExchangeAgreementsResponse:
        signed = envelope.make(self.hub.identity.identity_key, self.own_id, peer.hub_id, EXCHANGE_METHOD,
                               agreement_exchange=agreement_pb2.AgreementExchange(documents=documents))
        started = time.monotonic()
        response = await federation_pb2_grpc.FederationStub(self.channel(peer)).ExchangeAgreements(signed, timeout=peers.CALL_TIMEOUT_S)
        latency = (time.monotonic() - started) * 1000
        await self.hub.storage.write(lambda s: s.record_peer_contact(peer.hub_id, now_ms(), latency, ""))
        return response

    async def deliver_due(self) -> None:
        """Every delivery that is due, to all peers at once: a slow peer holds up only itself."""
        due = await self.hub.storage.read(lambda s: s.due_deliveries(now_ms()))
        await asyncio.gather(*(self._deliver(d) for d in due))

    async def _deliver(self, delivery) -> None:
        peer = await self.hub.storage.read(lambda s: s.get_peer(delivery.peer_id))
        if peer is None or peer.removed_at_ms:
            await self.hub.storage.write(lambda s: s.delivery_done(delivery.peer_id, delivery.generation))
            return
        try:
            await self.sync_with(peer)
        except (grpc.aio.AioRpcError, Rejected, OSError) as exc:
            error = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            delay_s = min(self.retry_base_seconds * 2**delivery.attempts, self.retry_max_seconds)
            await self.hub.storage.write(lambda s: s.delivery_failed(peer.hub_id, error, now_ms() + int(delay_s * 1000)))
            await self.hub.storage.write(lambda s: s.record_peer_contact(peer.hub_id, now_ms(), None, error))
            return
        await self.hub.storage.write(lambda s: s.delivery_done(peer.hub_id, delivery.generation))

    async def refresh_peers(self) -> None:
        """Fetch each peer's current descriptor through its pinned channel, all at once."""
        await asyncio.gather(*(self._refresh(peer) for peer in await self.hub.storage.read(lambda s: s.list_peers())))

    async def _refresh(self, peer: PeerRecord) -> None:
        started = time.monotonic()
        try:
            signed = await federation_pb2_grpc.FederationStub(self.channel(peer)).GetDescriptor(
                federation_pb2.GetDescriptorRequest(), timeout=peers.CALL_TIMEOUT_S
            )
            verified = descriptors.verify_descriptor(signed, peer.hub_id, peer.tls_cert_pem.encode())
        except (grpc.aio.AioRpcError, descriptors.DescriptorError) as exc:
            error = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            await self.hub.storage.write(lambda s: s.record_peer_contact(peer.hub_id, now_ms(), None, error))
            return
        latency = (time.monotonic() - started) * 1000
        descriptor, valid_until, http_url = signed.SerializeToString(), verified.descriptor.valid_until_ms, verified.descriptor.http_url
        await self.hub.storage.write(lambda s: s.refresh_peer(peer.hub_id, descriptor, valid_until, http_url, now_ms(), latency))
        if await self.hub.storage.write(lambda s: s.reset_backoff(peer.hub_id, now_ms())):
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Background work until `stop`: deliveries as they fall due, descriptor refreshes."""
        for peer in await self.hub.storage.read(lambda s: s.list_peers()):
            await self.hub.storage.write(lambda s: s.schedule_delivery(peer.hub_id, now_ms()))  # catch up after downtime
        next_refresh = time.monotonic() + self.refresh_seconds
        while not stop.is_set():
            # Cleared before the round, not after: an update saved during a delivery keeps its wake-up.
            self._wake.clear()
            try:
                await self.deliver_due()
                if time.monotonic() >= next_refresh:
                    await self.refresh_peers()
                    next_refresh = time.monotonic() + self.refresh_seconds
            except Exception:  # keep the loop alive; the next round retries
                log.exception("federation background round failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=min(1.0, self.refresh_seconds))
            except TimeoutError:
                pass

    async def refresh_metrics(self) -> None:
        """Agreement and peer states as Prometheus gauges (called when /metrics is scraped)."""
        metrics = self.hub.metrics
        states = await self.ledger.states()
        counts: dict[str, int] = {}
        for state in states.values():
            counts[ag.STATE_NAMES[state]] = counts.get(ag.STATE_NAMES[state], 0) + 1
        metrics.set_states(metrics.agreements, counts, tuple(ag.STATE_NAMES[s] for s in ag.STATE_NAMES if s))
        peer_counts: dict[str, int] = {}
        for _, state, _ in await self.list_peers(include_removed=False):
            peer_counts[state] = peer_counts.get(state, 0) + 1
        metrics.set_states(metrics.peers, peer_counts, ("reachable", "unreachable", "descriptor-expired"))

    def wake(self) -> None:
        """Run the background round now (new work, or shutting down)."""
        self._wake.set()

    async def close(self) -> None:
        for _, _, channel in self._channels.values():
            await channel.close()
        self._channels.clear()



def _agreement_id(document: agreement_pb2.AgreementDocument) -> str:
    try:
        return agreement_pb2.AgreementTerms.FromString(document.signed_terms.terms).agreement_id
    except Exception:  # an unparseable document is reported by the merge itself
        return "?"
