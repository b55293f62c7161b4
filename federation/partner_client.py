"""A partner talking to a hub: the partner holds its own key; it pins the hub by hub id."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from federation import agreements as ag
from federation import envelope, peers
from federation.ledger import Ledger
from federation.outbox import EXCHANGE_METHOD, FOLLOW_INTERVAL_S
from federation.partners import PartnerKey
from federation.query import asker
from node.api.v1 import agreement_pb2, federation_pb2, federation_pb2_grpc, query_pb2, query_service_pb2
from node.clock import SYSTEM_CLOCK, Clock
from node.keychain import KeyChain


@dataclass
class HeldAgreement:
    evidence: ag.Evidence
    state: int

    @property
    def awaiting_partner(self) -> bool:
        return self.state == ag.State.AGREEMENT_STATE_PROPOSED


class PartnerSession:
    """Open with `async with PartnerSession(key, address, hub_id) as session:`."""

    def __init__(self, key: PartnerKey, hub_address: str, hub_id: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.key = key
        self.clock = clock
        self.hub_address = hub_address
        self.hub_id = hub_id
        self.chain: KeyChain | None = None  # the hub's key history, as followed since the session opened
        self._channel: grpc.aio.Channel | None = None
        self._followed_at: float | None = None

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
        to the hub's verified key history, which must continue the one followed so far."""
        verified, cert_pem = await peers.fetch_descriptor(self.hub_address, self.hub_id, self.clock.now_ms(), self.chain)
        old, self._channel = self._channel, peers.channel_to(self.hub_address, self.hub_id, cert_pem)
        self.chain = verified.chain
        if old is not None:
            await old.close()

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
        (federation/query/asker.py), signed by the hub's CURRENT key. A hub that rotated its key
        meanwhile is followed once: the same signed query is sent again on a channel pinned to
        its new certificate (charged once), or the new key checked against its new history."""
        query = asker.sign_query(self.key.key, self.key.partner_id, self.hub_id, spec)
        try:
            answer = await asker.send(self.channel, query, attempts, clock=self.clock)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or not await self._follow_quietly():
                raise
            answer = await asker.send(self.channel, query, attempts, clock=self.clock)
        await asker.check_current_keys(answer, self._followed, lambda _: self._follow_refusing(), self.clock.now_ms())
        return answer

    async def _followed(self, hub_id: str) -> KeyChain | None:
        """Only the entry hub is pinned by this session (the others are checked offline, by the
        agreement each co-signed with the partner)."""
        return self.chain if hub_id == self.hub_id else None

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
