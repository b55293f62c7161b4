"""Who this hub federates with: its pinned peer hubs and its registered partners."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

from federation import descriptors, partners, peers
from federation.auth import Caller
from federation.channels import ChannelPool
from node import ids
from node.api.v1 import agreement_pb2
from node.clock import Clock
from node.errors import Reason, Rejected
from node.keychain import KeyChain
from node.register import lookup
from node.storage import Storage
from node.storage.base import PartnerRecord, PeerRecord

AuditFn = Callable[..., Awaitable[None]]


class Registry:
    def __init__(self, storage: Storage, own_id: str, own_municipality: str, clock: Clock, channels: ChannelPool, audit: AuditFn,
                 on_new_peer: Callable[[str], Awaitable[None]]) -> None:
        self._storage = storage
        self._own_id = own_id
        self._own_municipality = own_municipality  # a peer claiming it is refused (peers.municipality_conflict)
        self._clock = clock
        self._channels = channels
        self._audit = audit
        self._on_new_peer = on_new_peer  # the outbox schedules a first delivery
        self._chains: dict[str, tuple[bytes, KeyChain]] = {}  # hub id -> (stored descriptor, its key history)

    # -- lookups -------------------------------------------------------------------------
    async def known_caller(self, caller_id: str) -> Caller | None:
        """The pinned peer or registered partner with this id, unless removed."""
        peer = await self._storage.read(lambda s: s.get_peer(caller_id))
        if peer and not peer.removed_at_ms:
            return Caller("hub", peer.hub_id, self._current_key(peer), f"hub {peer.municipality}", identity_key=peer.public_key)
        partner = await self._storage.read(lambda s: s.get_partner(caller_id))
        if partner and not partner.removed_at_ms:
            return Caller("partner", partner.partner_id, partner.public_key, partner.name)
        return None

    async def followed_chain(self, hub_id: str) -> KeyChain | None:
        """The key history of a pinned peer as followed so far (its genesis key alone if it never
        rotated); None if it is not a current peer."""
        peer = await self._storage.read(lambda s: s.get_peer(hub_id))
        return self._chain(peer) if peer is not None and not peer.removed_at_ms else None

    def _current_key(self, peer: PeerRecord) -> bytes:
        """The key the peer signs with now: the last of its stored descriptor's key history
        (verified when stored), or its pinned key."""
        return self._chain(peer).current

    def _chain(self, peer: PeerRecord) -> KeyChain:
        """The peer's followed key history, cached per stored descriptor: checking a history costs
        two signature verifications per rotation, and every request and partial asks."""
        cached = self._chains.get(peer.hub_id)
        if cached is not None and cached[0] == peer.descriptor:
            return cached[1]
        chain = descriptors.stored_chain(peer.descriptor) or KeyChain.genesis_only(peer.public_key)
        self._chains[peer.hub_id] = (peer.descriptor, chain)
        return chain

    async def party(self, party_id: str) -> agreement_pb2.Party:
        """The counterparty of an agreement this hub proposes, as named in its terms."""
        caller = await self.known_caller(party_id.strip())
        if caller is None:
            raise Rejected(Reason.NOT_FOUND, f"{party_id!r} is neither a peer hub nor a registered partner")
        if caller.kind == "hub":
            peer = await self._storage.read(lambda s: s.get_peer(caller.id))
            assert peer is not None
            return agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=caller.id, public_key=caller.agreement_key,
                                       name=lookup(peer.municipality).name, municipality=peer.municipality)
        return agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_PARTNER, id=caller.id, public_key=caller.public_key, name=caller.name)

    async def heard_from(self, caller: Caller) -> None:
        at = self._clock.now_ms()
        if caller.kind == "hub":
            await self._storage.write(lambda s: s.record_peer_contact(caller.id, at, None, ""))
            self._channels.heard_from(caller.id)
        else:
            await self._storage.write(lambda s: s.touch_partner(caller.id, at))

    # -- peers ---------------------------------------------------------------------------
    async def add_peer(self, address: str, hub_id: str) -> PeerRecord:
        try:
            hub_id = ids.to_text(ids.from_text(hub_id, "hub id"))
        except ValueError as exc:
            raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
        if hub_id == self._own_id:
            raise Rejected(Reason.INVALID_REQUEST, "a hub cannot be its own peer")
        try:
            peers.split_address(address)
        except peers.PeerError as exc:
            raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
        existing = await self._storage.read(lambda s: s.get_peer(hub_id))
        # Pinning a known peer again must not undo its followed key history (a fork or replay).
        known = descriptors.stored_chain(existing.descriptor) if existing else None
        try:
            verified, cert_pem = await peers.fetch_descriptor(address, hub_id, self._clock.now_ms(), known)
        except peers.PeerError as exc:
            await self._audit("admin", "peer.add", hub_id, "refused", str(exc))
            raise Rejected(Reason.PERMISSION_DENIED if exc.impostor else Reason.UNAVAILABLE, str(exc)) from None
        now = self._clock.now_ms()
        record = peers.peer_record(verified, address, cert_pem, existing.added_at_ms if existing else now, now)
        conflict = peers.municipality_conflict(record, self._own_municipality,
                                               await self._storage.read(lambda s: s.list_peers(False)))
        if conflict:
            await self._audit("admin", "peer.add", hub_id, "refused", conflict)
            raise Rejected(Reason.ALREADY_EXISTS, conflict)
        await self._storage.write(lambda s: s.upsert_peer(record))
        await self._on_new_peer(hub_id)
        await self._audit("admin", "peer.add", hub_id, "ok", f"{record.municipality} at {address}")
        return record

    async def remove_peer(self, hub_id: str) -> PeerRecord:
        peer = await self._storage.read(lambda s: s.get_peer(hub_id.strip()))
        if peer is None:
            raise Rejected(Reason.NOT_FOUND, f"hub {hub_id} is not a peer")
        await self._storage.write(lambda s: s.remove_peer(peer.hub_id, self._clock.now_ms()))
        self._channels.drop(peer.hub_id)
        await self._audit("admin", "peer.remove", peer.hub_id)
        removed = await self._storage.read(lambda s: s.get_peer(peer.hub_id))
        assert removed is not None
        return removed

    async def list_peers(self, include_removed: bool = False) -> list[tuple[PeerRecord, str, int]]:
        """Each peer with its state and its number of pending deliveries (0 or 1)."""
        found = await self._storage.read(lambda s: s.list_peers(include_removed))
        pending = await self._storage.read(lambda s: s.pending_deliveries())
        now = self._clock.now_ms()
        return [(p, peers.peer_state(p, now, pending[p.hub_id].last_error if p.hub_id in pending else ""),
                 1 if p.hub_id in pending else 0) for p in found]

    # -- partners ------------------------------------------------------------------------
    async def add_partner(self, name: str, org_number: str, public_key_file: bytes) -> PartnerRecord:
        if not name.strip():
            raise Rejected(Reason.INVALID_REQUEST, "a partner needs a name")
        if not partners.ORG_NUMBER.match(org_number):
            raise Rejected(Reason.INVALID_REQUEST, f"organisation number {org_number!r} is not 9 digits")
        try:
            partner_id, key = partners.parse_public(public_key_file)
        except partners.PartnerKeyError as exc:
            raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
        existing = await self._storage.read(lambda s: s.get_partner(partner_id))
        if existing and existing.removed_at_ms:
            raise Rejected(Reason.ALREADY_EXISTS, f"partner {partner_id} was removed from this hub at {_utc(existing.removed_at_ms)}; "
                                                  "a removed partner's key is not registered again (it makes a new one: "
                                                  "smartregion partner keygen)")
        if existing:
            raise Rejected(Reason.ALREADY_EXISTS, f"partner {partner_id} is already registered")
        record = PartnerRecord(partner_id, name.strip(), org_number, key, self._clock.now_ms())
        await self._storage.write(lambda s: s.add_partner(record))
        await self._audit("admin", "partner.add", partner_id, "ok", f"{record.name} ({org_number})")
        return record

    async def list_partners(self, include_removed: bool = False) -> list[PartnerRecord]:
        return await self._storage.read(lambda s: s.list_partners(include_removed))

    async def remove_partner(self, partner_id: str) -> PartnerRecord:
        """Stop accepting the partner's calls (at once: every call is authenticated on its own).
        Removing a removed partner again changes nothing and succeeds (a retry)."""
        partner = await self._storage.read(lambda s: s.get_partner(partner_id.strip()))
        if partner is None:
            raise Rejected(Reason.NOT_FOUND, f"{partner_id.strip()!r} is not a partner registered at this hub")
        if partner.removed_at_ms is None:
            await self._storage.write(lambda s: s.remove_partner(partner.partner_id, self._clock.now_ms()))
        removed = await self._storage.read(lambda s: s.get_partner(partner.partner_id))
        assert removed is not None and removed.removed_at_ms is not None
        return removed

    async def former_caller(self, caller_id: str) -> tuple[Caller, str] | None:
        """A removed peer or partner with this id, and what its refusal says (the Authenticator
        tells it only to a caller whose request verifies under that party's key)."""
        peer = await self._storage.read(lambda s: s.get_peer(caller_id))
        if peer and peer.removed_at_ms:
            return (Caller("hub", peer.hub_id, peer.public_key, f"hub {peer.municipality}"),
                    f"hub {caller_id} was removed as a peer of this hub at {_utc(peer.removed_at_ms)}")
        partner = await self._storage.read(lambda s: s.get_partner(caller_id))
        if partner and partner.removed_at_ms:
            return (Caller("partner", partner.partner_id, partner.public_key, partner.name),
                    f"partner {caller_id} was removed from this hub at {_utc(partner.removed_at_ms)}; "
                    "its agreements with this hub were revoked")
        return None

def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
