"""A hub's federation: the small facade that wires its parts together.

- federation/auth.py       Authenticator: the one authentication path for Federation and Query RPCs
- federation/registry.py   Registry: pinned peers and registered partners
- federation/ledger.py     Ledger: the stored agreements, changed only in its own transactions
- federation/agreement_book.py  AgreementBook: propose, accept, revoke, exchange, export
- federation/outbox.py     Outbox: deliveries with backoff and descriptor refreshes, per peer
- federation/channels.py   ChannelPool: one pinned channel and a circuit breaker per peer

Domain logic only; node/app/servicers/ translate to gRPC.
"""

from __future__ import annotations

import asyncio

import grpc

from federation import agreements as ag
from federation import descriptors, peers
from federation.agreement_book import AgreementBook
from federation.auth import Authenticator, Caller
from federation.channels import ChannelPool
from federation.ledger import Ledger
from federation.outbox import EXCHANGE_METHOD, Outbox
from federation.registry import Registry
from node import audit
from node.api.v1 import agreement_pb2, federation_pb2
from node.audit import AuditEntry, RefusalTally
from node.hub import Hub
from node.identity import HubIdentity
from node.signing import Domain, sign
from node.storage.base import PartnerRecord, PeerRecord

__all__ = ["EXCHANGE_METHOD", "Federation"]


class Federation:
    def __init__(self, hub: Hub, refresh_seconds: float = 30.0, retry_base_seconds: float = 1.0,
                 retry_max_seconds: float = 60.0) -> None:
        self.hub = hub
        self.clock = hub.clock
        self.own_id = hub.config.hub_id
        storage = hub.storage
        self.ledger = Ledger(storage, self.own_id, hub.identity.genesis_public_key, self.clock)
        self.channels = ChannelPool(self.clock)
        self.outbox = Outbox(storage, self.current_identity, self.own_id, self.clock, self.ledger, self.channels, self.audit,
                             refresh_seconds, retry_base_seconds, retry_max_seconds)
        self.registry = Registry(storage, self.own_id, hub.config.municipality, self.clock, self.channels, self.audit, self.outbox.schedule)
        self.book = AgreementBook(storage, self.current_identity, self.own_party(), self.ledger, self.registry, self.audit,
                                  self.outbox.wake)
        self.refusals = RefusalTally(storage, self.clock)
        self.authenticator = Authenticator(storage, self.own_id, self.clock, self.registry.known_caller,
                                           self._heard_from, self.refusals, self.registry.former_caller,
                                           follow=self.outbox.follow)
        self._descriptor: federation_pb2.SignedDescriptor | None = None

    # -- who we are ----------------------------------------------------------------------
    def current_identity(self) -> HubIdentity:
        """The identity the hub signs with now (a live rotation swaps `hub.identity`)."""
        return self.hub.identity

    def descriptor(self) -> federation_pb2.SignedDescriptor:
        """This hub's signed descriptor, re-signed when less than half its lifetime is left."""
        now = self.clock.now_ms()
        if self._descriptor is None or descriptors.needs_refresh(self._descriptor, now):
            endpoint = self.hub.endpoint
            self._descriptor = descriptors.issue(self.hub.identity, self.hub.config.municipality, endpoint.grpc_address,
                                                 endpoint.http_url, now, datasets=self.hub.catalog)
        return self._descriptor

    def identity_changed(self) -> None:
        """The hub's certificate was renewed or its key rotated: the next descriptor names the
        new certificate, key and history, signed by the current key."""
        self._descriptor = None

    async def region_descriptors(self) -> list[federation_pb2.SignedDescriptor]:
        """This hub's descriptor, then each current peer's as last fetched and verified."""
        peers_held = await self.hub.storage.read(lambda s: s.list_peers())
        relayed = [federation_pb2.SignedDescriptor.FromString(p.descriptor) for p in peers_held if p.descriptor]
        return [self.descriptor(), *relayed]

    def own_party(self) -> agreement_pb2.Party:
        return agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=self.own_id,
                                   public_key=self.hub.identity.genesis_public_key, name=self.hub.config.municipality_name,
                                   municipality=self.hub.config.municipality)

    # -- peers ---------------------------------------------------------------------------
    async def first_contact(self, peer: PeerRecord) -> str:
        """Right after pinning `peer`: exchange agreements with it once and say what that showed,
        "reachable", or peers.WAITING_FOR_PIN when it refuses us as a caller it does not know
        (its admin has not pinned this hub yet), or "unreachable"."""
        try:
            await self.outbox.sync_with(peer)
        except (grpc.aio.AioRpcError, OSError) as exc:
            error = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            at = self.clock.now_ms()
            await self.hub.storage.write(lambda s: s.record_peer_contact(peer.hub_id, at, None, error))
            return peers.refusal_state(error) or "unreachable"
        return "reachable"

    # -- partners ------------------------------------------------------------------------
    async def remove_partner(self, partner_id: str, reason: str) -> tuple[PartnerRecord, list[str]]:
        """Remove a partner: its calls are refused from now on (first, so that nothing new can
        start meanwhile), then every agreement with it still in force is revoked by this hub
        through the ledger. Returns the partner and the agreements revoked now. Repeating it
        finishes an interrupted removal and changes nothing else."""
        reason = reason.strip() or "the partner was removed from this hub"
        partner = await self.registry.remove_partner(partner_id)
        revoked = await self.book.revoke_all_with(partner.partner_id, reason)
        await self.audit("admin", "partner.remove", partner.partner_id, "ok",
                         f"{partner.name}: {reason}; revoked {', '.join(revoked) if revoked else 'no agreement'}")
        return partner, revoked

    # -- shared by the query side --------------------------------------------------------
    async def audit(self, actor: str, action: str, subject: str, outcome: str = "ok", detail: str = "") -> None:
        await audit.record(self.hub.storage, self.clock, AuditEntry(actor, action, subject, outcome, detail))

    async def known_caller(self, caller_id: str) -> Caller | None:
        return await self.registry.known_caller(caller_id)

    def channel(self, peer: PeerRecord) -> grpc.aio.Channel:
        return self.outbox.channel(peer)

    async def _heard_from(self, caller: Caller) -> None:
        await self.registry.heard_from(caller)
        if caller.kind == "hub":
            await self.outbox.heard_from(caller.id)

    # -- the audit log -------------------------------------------------------------------
    async def export_audit(self) -> bytes:
        """The whole audit log as signed JSON lines (node/audit.py export format)."""
        await self.refusals.flush()
        rows = await self.hub.storage.read(lambda s: s.audit_rows())
        identity = self.hub.identity
        return audit.export_lines(rows, self.own_id, identity.public_key_raw,
                                  lambda head: sign(identity.identity_key, Domain.AUDIT_HEAD, head), self.clock.now_ms(),
                                  key_history=identity.key_history)

    # -- background work -----------------------------------------------------------------
    async def sync_with(self, peer: PeerRecord) -> None:
        await self.outbox.sync_with(peer)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliveries, refreshes and the refusal counts of each ended minute, until `stop`."""
        await self.outbox.run(stop, every_round=self.refusals.flush_due)
        await self.refusals.flush()

    def wake(self) -> None:
        self.outbox.wake()

    async def refresh_metrics(self) -> None:
        """Agreement and peer states as Prometheus gauges (called when /metrics is scraped)."""
        metrics = self.hub.metrics
        metrics.set_states(metrics.agreements, await self.book.state_counts(), tuple(ag.STATE_NAMES[s] for s in ag.STATE_NAMES if s))
        peer_counts: dict[str, int] = {}
        for _, state, _ in await self.registry.list_peers(include_removed=False):
            peer_counts[state] = peer_counts.get(state, 0) + 1
        metrics.set_states(metrics.peers, peer_counts, ("reachable", "unreachable", "descriptor-expired",
                                                                         peers.WAITING_FOR_PIN))

    async def close(self) -> None:
        """After the server stopped: write the refusal counts still held, close the channels."""
        await self.refusals.flush()
        await self.channels.close()
