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
from federation import descriptors
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
from node.signing import Domain, sign
from node.storage.base import PeerRecord

__all__ = ["EXCHANGE_METHOD", "Federation"]


class Federation:
    def __init__(self, hub: Hub, refresh_seconds: float = 30.0, retry_base_seconds: float = 1.0,
                 retry_max_seconds: float = 60.0) -> None:
        self.hub = hub
        self.clock = hub.clock
        self.own_id = hub.config.hub_id
        storage = hub.storage
        self.ledger = Ledger(storage, self.own_id, hub.identity.public_key_raw, self.clock)
        self.channels = ChannelPool(self.clock)
        self.outbox = Outbox(storage, hub.identity, self.own_id, self.clock, self.ledger, self.channels, self.audit,
                             refresh_seconds, retry_base_seconds, retry_max_seconds)
        self.registry = Registry(storage, self.own_id, hub.config.municipality, self.clock, self.channels, self.audit, self.outbox.schedule)
        self.book = AgreementBook(storage, hub.identity, self.own_party(), self.ledger, self.registry, self.audit,
                                  self.outbox.wake)
        self.refusals = RefusalTally(storage, self.clock)
        self.authenticator = Authenticator(storage, self.own_id, self.clock, self.registry.known_caller,
                                           self._heard_from, self.refusals)
        self._descriptor: federation_pb2.SignedDescriptor | None = None

    # -- who we are ----------------------------------------------------------------------
    def descriptor(self) -> federation_pb2.SignedDescriptor:
        """This hub's signed descriptor, re-signed when less than half its lifetime is left."""
        now = self.clock.now_ms()
        if self._descriptor is None or descriptors.needs_refresh(self._descriptor, now):
            endpoint = self.hub.endpoint
            self._descriptor = descriptors.issue(self.hub.identity, self.hub.config.municipality, endpoint.grpc_address,
                                                 endpoint.http_url, now, datasets=self.hub.catalog)
        return self._descriptor

    async def region_descriptors(self) -> list[federation_pb2.SignedDescriptor]:
        """This hub's descriptor, then each current peer's as last fetched and verified."""
        peers_held = await self.hub.storage.read(lambda s: s.list_peers())
        relayed = [federation_pb2.SignedDescriptor.FromString(p.descriptor) for p in peers_held if p.descriptor]
        return [self.descriptor(), *relayed]

    def own_party(self) -> agreement_pb2.Party:
        return agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=self.own_id,
                                   public_key=self.hub.identity.public_key_raw, name=self.hub.config.municipality_name,
                                   municipality=self.hub.config.municipality)

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
                                  lambda head: sign(identity.identity_key, Domain.AUDIT_HEAD, head), self.clock.now_ms())

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
        metrics.set_states(metrics.peers, peer_counts, ("reachable", "unreachable", "descriptor-expired"))

    async def close(self) -> None:
        """After the server stopped: write the refusal counts still held, close the channels."""
        await self.refusals.flush()
        await self.channels.close()
