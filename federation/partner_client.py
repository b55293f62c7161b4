"""A partner talking to a hub: the partner holds its own key; it pins the hub by hub id."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from federation import agreements as ag
from federation import descriptors, envelope, peers
from federation.known_hubs import KnownHubs, KnownHubsError
from federation.ledger import Ledger
from federation.outbox import EXCHANGE_METHOD, FOLLOW_INTERVAL_S
from federation.partners import PartnerKey
from federation.query import asker
from node.api.v1 import agreement_pb2, federation_pb2, federation_pb2_grpc, query_pb2, query_service_pb2
from node.clock import SYSTEM_CLOCK, Clock
from node.keychain import KeyChain

MAX_REGION_DESCRIPTORS = 1000  # what the session reads of the entry's RegionCatalog
MAX_ADDRESSES_PER_HUB = 4


@dataclass
class HeldAgreement:
    evidence: ag.Evidence
    state: int

    @property
    def awaiting_partner(self) -> bool:
        return self.state == ag.State.AGREEMENT_STATE_PROPOSED


# The most one answer waits to follow the hubs other than the entry (all at once, each from its
# own address as the region's signed descriptors give it); one that does not answer in time is
# marked "key not checked online" in the answer's provenance (docs/limits.md).
PEER_FOLLOW_BUDGET_S = 5.0
CHECKED_ONLINE = "current key checked online"
NOT_CHECKED_ONLINE = "key not checked online"


class PartnerSession:
    """Open with `async with PartnerSession(key, address, hub_id, known_hubs=...) as session:`.
    `known_hubs`: the key histories this partner verified in earlier sessions (the CLI keeps them
    beside the partner key file); without it they are kept for this session only."""

    def __init__(self, key: PartnerKey, hub_address: str, hub_id: str, clock: Clock = SYSTEM_CLOCK,
                 known_hubs: KnownHubs | None = None) -> None:
        self.key = key
        self.clock = clock
        self.hub_address = hub_address
        self.hub_id = hub_id
        self.known_hubs = known_hubs if known_hubs is not None else KnownHubs()
        self.chain: KeyChain | None = None  # the entry hub's key history, as followed since the session opened
        self._channel: grpc.aio.Channel | None = None
        self._followed_at: float | None = None
        self._peer_chains: dict[str, KeyChain] = {}  # the other hubs, followed from their own addresses
        self._peer_followed_at: dict[str, float] = {}
        self._peer_errors: dict[str, str] = {}  # why a hub could not be followed (the last attempt)
        self._peer_flights: dict[str, asyncio.Task[bool]] = {}
        self._addresses: asyncio.Future[dict[str, list[str]]] | None = None  # hub id -> addresses (region descriptors)

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            raise RuntimeError("the session is not open: use `async with PartnerSession(...)`")
        return self._channel

    async def __aenter__(self) -> PartnerSession:
        await self._pin()
        return self

    async def _pin(self) -> None:
        """Fetch the hub's descriptor and certificate; the certificate is checked by its binding
        to the hub's verified key history, which must continue the one followed so far (or, at
        the session's start, the one this partner remembers)."""
        verified, cert_pem = await self._fetch(self.hub_address, self.hub_id)
        old, self._channel = self._channel, peers.channel_to(self.hub_address, self.hub_id, cert_pem)
        self.chain = verified.chain
        if old is not None:
            await old.close()

    async def _fetch(self, address: str, hub_id: str) -> tuple[descriptors.VerifiedDescriptor, bytes]:
        """peers.fetch_descriptor with the longest history known for the hub as `known`; what it
        verifies is remembered. A replayed or forked history names the file it contradicts."""
        followed = self.chain if hub_id == self.hub_id else self._peer_chains.get(hub_id)
        known = followed or self.known_hubs.get(hub_id)
        try:
            verified, cert_pem = await peers.fetch_descriptor(address, hub_id, self.clock.now_ms(), known)
        except peers.PeerError as exc:
            if exc.impostor and known is not None and followed is None:
                raise peers.PeerError(f"{exc} (the history this partner verified before is in {self.known_hubs.where})",
                                      impostor=True) from None
            raise
        try:
            self.known_hubs.remember(verified.chain)
        except KnownHubsError as exc:
            raise peers.PeerError(str(exc), impostor=True) from None
        return verified, cert_pem

    async def follow(self) -> bool:
        """The hub signed with a key this session does not know, or no longer shows the
        certificate pinned: it may have rotated its key. Fetch its descriptor again (at most once
        per outbox.FOLLOW_INTERVAL_S) and follow its history if it continues the one pinned.
        Returns whether it was fetched; raises peers.PeerError for a fork or a replay."""
        now = self.clock.monotonic()
        if self._followed_at is not None and now - self._followed_at < FOLLOW_INTERVAL_S:
            return False
        self._followed_at = now
        await self._pin()
        return True

    async def ask(self, spec: query_pb2.QuerySpec, attempts: int = 1) -> query_service_pb2.QueryAnswer:
        """Ask the region through this hub: the answer opened, verified and merged
        (federation/query/asker.py), every signature by the signer's CURRENT key: the entry hub
        as this session follows it, every other answering hub as followed from its own address
        (within PEER_FOLLOW_BUDGET_S; one that cannot be reached is checked against the history
        this partner remembers, and its provenance says "key not checked online"). A hub that
        rotated its key meanwhile is followed once: the same signed query is sent again on a
        channel pinned to its new certificate (charged once), or the new key checked against
        its new history."""
        query = asker.sign_query(self.key.key, self.key.partner_id, self.hub_id, spec)
        try:
            answer = await asker.send(self.channel, query, attempts, clock=self.clock)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or not await self._follow_quietly():
                raise
            answer = await asker.send(self.channel, query, attempts, clock=self.clock)
        answering = [p.hub_id for p in answer.provenance if p.status == "answered" and p.hub_id != self.hub_id]
        await self._follow_peers(answering)
        now_ms = self.clock.now_ms()
        await asker.check_current_keys(answer, self._followed, self._follow_any, now_ms)
        self._check_remembered(answer, now_ms)
        for p in answer.provenance:
            if p.status == "answered":
                p.key_check = self._key_check(p.hub_id)
        return answer

    async def _followed(self, hub_id: str) -> KeyChain | None:
        """The hub's key history as followed online in this session: the entry's, or another
        hub's fetched from its own address (once, bounded); None if it could not be reached."""
        if hub_id == self.hub_id:
            return self.chain
        if hub_id not in self._peer_followed_at:
            await self._follow_peers([hub_id])
        return self._peer_chains.get(hub_id)

    async def _follow_any(self, hub_id: str) -> bool:
        if hub_id == self.hub_id:
            return await self._follow_refusing()
        return await self._follow_peer(hub_id)

    async def _follow_peers(self, hub_ids: list[str]) -> None:
        """Follow these hubs at once, waiting at most PEER_FOLLOW_BUDGET_S for all of them."""
        flights = [asyncio.ensure_future(self._follow_peer(h)) for h in dict.fromkeys(hub_ids)]
        if not flights:
            return
        _, late = await asyncio.wait(flights, timeout=PEER_FOLLOW_BUDGET_S)
        for flight in late:
            flight.cancel()
        for hub_id in hub_ids:  # the budget is spent: a fetch still running is given up, not left to land later
            running = self._peer_flights.get(hub_id)
            if running is not None and not running.done():
                running.cancel()
        for hub_id in hub_ids:
            if hub_id not in self._peer_chains and hub_id not in self._peer_errors:
                self._peer_errors[hub_id] = f"it did not answer within {PEER_FOLLOW_BUDGET_S:g} s"

    async def _follow_peer(self, hub_id: str) -> bool:
        """Fetch hub `hub_id`'s descriptor from its own address (single flight per hub; at most
        once per FOLLOW_INTERVAL_S); whether it was fetched now."""
        flight = self._peer_flights.get(hub_id)
        if flight is None or flight.done():
            now = self.clock.monotonic()
            last = self._peer_followed_at.get(hub_id)
            if last is not None and now - last < FOLLOW_INTERVAL_S:
                return False
            self._peer_followed_at[hub_id] = now
            flight = self._peer_flights[hub_id] = asyncio.ensure_future(self._fetch_peer(hub_id))
        return await asyncio.shield(flight)

    async def _fetch_peer(self, hub_id: str) -> bool:
        addresses = (await self._region_addresses()).get(hub_id, [])
        if not addresses:
            self._peer_errors[hub_id] = "the region's descriptors give no address for it"
            return False
        errors = []
        for address in addresses:
            try:
                verified, _ = await self._fetch(address, hub_id)
            except peers.PeerError as exc:
                errors.append(str(exc))
                continue
            self._peer_chains[hub_id] = verified.chain
            self._peer_errors.pop(hub_id, None)
            return True
        self._peer_errors[hub_id] = "; ".join(errors)
        return False

    async def _region_addresses(self) -> dict[str, list[str]]:
        """Each hub's addresses, from the signed descriptors the entry hub relays (fetched once a
        session, shared by every hub being followed). Only hints: the hub found there is checked
        by its hub id and key history, whatever the entry hub says."""
        if self._addresses is None:
            self._addresses = asyncio.ensure_future(self._fetch_region_addresses())
        return await asyncio.shield(self._addresses)

    async def _fetch_region_addresses(self) -> dict[str, list[str]]:
        addresses: dict[str, list[str]] = {}
        try:
            region = await federation_pb2_grpc.FederationStub(self.channel).RegionCatalog(
                federation_pb2.GetDescriptorRequest(), timeout=peers.CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return addresses  # every other hub is then "not checked online", saying why
        for signed in region.descriptors[:MAX_REGION_DESCRIPTORS]:
            try:
                d = descriptors.verify_signature(signed)
            except descriptors.DescriptorError:
                continue
            addresses.setdefault(d.hub_id, []).extend(list(d.grpc_addresses)[:MAX_ADDRESSES_PER_HUB])
        return addresses

    def _check_remembered(self, answer: query_service_pb2.QueryAnswer, now_ms: int) -> None:
        """A hub not followed online: a key this partner KNOWS it retired (by the history it
        remembers) is refused all the same; a key it does not know yet passes (offline rule)."""
        for p in answer.provenance:
            if p.status != "answered" or p.hub_id == self.hub_id or p.hub_id in self._peer_chains:
                continue
            remembered = self.known_hubs.get(p.hub_id)
            key = p.partial.provider_public_key
            if remembered is not None and key in remembered.keys and not remembered.signs_now(key, now_ms):
                raise asker.AnswerRefused(f"hub {p.hub_id} signed its partial with a key it retired, by the key history "
                                          f"remembered in {self.known_hubs.where} (an earlier key, perhaps leaked: "
                                          "docs/operations.md, \"Compromise\")")

    def _key_check(self, hub_id: str) -> str:
        if hub_id == self.hub_id or hub_id in self._peer_chains:
            return CHECKED_ONLINE
        return f"{NOT_CHECKED_ONLINE}: {self._peer_errors.get(hub_id, 'not followed')}"

    async def _follow_quietly(self) -> bool:
        """After the hub could not be reached: follow it, or say it is an impostor now."""
        try:
            return await self.follow()
        except peers.PeerError as exc:
            if exc.impostor:
                raise asker.AnswerRefused(f"the server at {self.hub_address} is not hub {self.hub_id} as this session "
                                          f"follows it: {exc}") from None
            return False

    async def _follow_refusing(self) -> bool:
        try:
            return await self.follow()
        except peers.PeerError as exc:
            raise asker.AnswerRefused(f"hub {self.hub_id} signed with a key this session does not know, and its "
                                      f"descriptor does not lead to it: {exc}") from None

    async def __aexit__(self, *exc) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        for flight in self._peer_flights.values():
            flight.cancel()
        if self._addresses is not None:
            self._addresses.cancel()

    async def exchange(self, documents: list[agreement_pb2.AgreementDocument]) -> federation_pb2.ExchangeAgreementsResponse:
        signed = envelope.make(self.key.key, self.key.partner_id, self.hub_id, EXCHANGE_METHOD, clock=self.clock,
                               agreement_exchange=agreement_pb2.AgreementExchange(documents=documents))
        return await federation_pb2_grpc.FederationStub(self.channel).ExchangeAgreements(signed, timeout=peers.CALL_TIMEOUT_S)

    async def agreements(self) -> list[HeldAgreement]:
        response = await self.exchange([])
        now_ms = self.clock.now_ms()
        held = [ag.from_document(d) for d in response.documents.documents]
        superseded = Ledger.superseded_ids(held)  # a version both parties replaced is superseded, not active
        return [HeldAgreement(e, ag.state(e, now_ms, e.agreement_id in superseded)) for e in held]

    async def _find(self, agreement_id: str) -> ag.Evidence:
        """The agreement with this id, or with this unique prefix of its id (also without "urn:uuid:")."""
        given = agreement_id.strip()
        held = [h.evidence for h in await self.agreements()]
        exact = [e for e in held if e.agreement_id == given]
        matches = exact or [e for e in held if given and (e.agreement_id.startswith(given)
                                                         or e.agreement_id.removeprefix("urn:uuid:").startswith(given))]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise LookupError(f"{given!r} is ambiguous: it starts {len(matches)} agreement ids "
                              f"({', '.join(e.agreement_id for e in matches[:10])}); give more characters")
        raise LookupError(f"hub {self.hub_id} holds no agreement {agreement_id} with this partner")

    async def accept(self, agreement_id: str) -> federation_pb2.DocumentOutcome:
        evidence = await self._find(agreement_id)
        if self.key.partner_id in evidence.signatures:
            raise ValueError(f"agreement {agreement_id} is already signed by this partner")
        signed = ag.countersign(evidence, self.key.partner_id, self.key.key)
        return (await self.exchange([signed.to_document()])).outcomes[0]

    async def revoke(self, agreement_id: str, reason: str) -> federation_pb2.DocumentOutcome:
        evidence = await self._find(agreement_id)
        revoked = ag.revoke(evidence, self.key.partner_id, self.key.key, reason, self.clock.now_ms())
        return (await self.exchange([revoked.to_document()])).outcomes[0]
