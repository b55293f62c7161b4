"""Keeping peers in step: agreement deliveries with backoff, and descriptor refreshes.

Each peer's work runs in its own task, and a round never waits for it: a frozen (SIGSTOPped)
or slow peer holds up only its own deliveries and refresh, never another peer's (issue 11:
one stopped peer delayed every other peer's deliveries by 9.5 s). At most one delivery and one
refresh per peer are in flight at a time. Besides the scheduled refreshes, a peer's descriptor
is refreshed on demand (`follow`) when something it signed does not verify under the key known
for it: a peer that rotated its key is followed at once, within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc

from federation import agreements as ag
from federation import descriptors, envelope, peers
from federation.agreement_book import agreement_id_of
from federation.channels import ChannelPool
from federation.ledger import Ledger
from federation.registry import AuditFn
from node.api.v1 import agreement_pb2, federation_pb2, federation_pb2_grpc
from node.clock import Clock
from node.errors import Rejected
from node.identity import IdentitySource
from node.keychain import KeyChain
from node.storage import Storage
from node.storage.base import Delivery, PeerRecord

log = logging.getLogger("smartregion.federation")
EXCHANGE_METHOD = "/smartregion.v1.Federation/ExchangeAgreements"
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAUTHENTICATED)
# A peer's descriptor is fetched on demand (something it signed did not verify under the key
# known for it) at most once in this many seconds: anyone can send a request in a peer's name
# with a bad signature, and must not make this hub hammer that peer (docs/limits.md).
FOLLOW_INTERVAL_S = 10.0


def _stub(channel: grpc.aio.Channel) -> Any:
    return federation_pb2_grpc.FederationStub(channel)  # generated, untyped


def signed_bytes(verified: descriptors.VerifiedDescriptor) -> bytes:
    return verified.signed.SerializeToString()


def _error_text(exc: BaseException) -> str:
    return f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)


class Outbox:
    def __init__(self, storage: Storage, identity: IdentitySource, own_id: str, clock: Clock, ledger: Ledger,
                 channels: ChannelPool, audit: AuditFn, refresh_seconds: float = 30.0,
                 retry_base_seconds: float = 1.0, retry_max_seconds: float = 60.0) -> None:
        self._storage = storage
        self._identity = identity  # read at each signature: a live key rotation reaches it
        self._own_id = own_id
        self._clock = clock
        self._ledger = ledger
        self._channels = channels
        self._audit = audit
        self.refresh_seconds = refresh_seconds
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self._wake = asyncio.Event()
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}  # (kind, peer id) -> task
        self._followed_at: dict[str, float] = {}  # peer id -> when it was last refreshed on demand (monotonic)

    def wake(self) -> None:
        """Run a round now (new work, or shutting down)."""
        self._wake.set()

    def channel(self, peer: PeerRecord) -> grpc.aio.Channel:
        return self._channels.channel(peer.hub_id, peer.grpc_address, peer.tls_cert_pem)

    async def schedule(self, peer_id: str) -> None:
        await self._storage.write(lambda s: s.schedule_delivery(peer_id, self._clock.now_ms()))
        self.wake()

    async def heard_from(self, peer_id: str) -> None:
        """The peer is up: retry its pending delivery now instead of after its backoff."""
        if await self._storage.write(lambda s: s.reset_backoff(peer_id, self._clock.now_ms())):
            self.wake()

    # -- the background loop -------------------------------------------------------------
    async def run(self, stop: asyncio.Event, every_round: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start due deliveries and refreshes until `stop` (and `every_round`, e.g. writing the
        refusal counts of a minute that ended); then stop the work in flight."""
        for peer in await self._storage.read(lambda s: s.list_peers()):
            await self.schedule(peer.hub_id)  # catch up after downtime
        next_refresh = self._clock.monotonic() + self.refresh_seconds
        while not stop.is_set():
            # Cleared before the round, not after: an update saved during a delivery keeps its wake-up.
            self._wake.clear()
            try:
                await self.start_due()
                if self._clock.monotonic() >= next_refresh:
                    await self.start_refreshes()
                    next_refresh = self._clock.monotonic() + self.refresh_seconds
                if every_round is not None:
                    await every_round()
            except Exception:  # keep the loop alive; the next round retries
                log.exception("federation background round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(1.0, self.refresh_seconds))
        await self.drain()

    def _spawn(self, kind: str, peer_id: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start `work` for the peer, or return the same kind of work already under way for it."""
        key = (kind, peer_id)
        if key in self._in_flight:
            work.close()  # this peer's previous one is still under way; the next round retries
            return self._in_flight[key]
        task = asyncio.get_running_loop().create_task(work, name=f"{kind} {peer_id}")
        self._in_flight[key] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.pop(key, None)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("%s to %s failed", kind, peer_id, exc_info=finished.exception())
            self.wake()  # a delivery scheduled while this one ran may be due now

        task.add_done_callback(done)
        return task

    async def start_due(self) -> None:
        """Start every delivery that is due, each peer in its own task."""
        for delivery in await self._storage.read(lambda s: s.due_deliveries(self._clock.now_ms())):
            self._spawn("delivery", delivery.peer_id, self.deliver(delivery))

    async def start_refreshes(self) -> None:
        for peer in await self._storage.read(lambda s: s.list_peers()):
            self._spawn("refresh", peer.hub_id, self.refresh(peer))

    async def drain(self) -> None:
        """Stop the work in flight (shutting down): a frozen peer must not hold up the stop.
        Nothing is lost: a delivery leaves the outbox only once it succeeded, and every stored
        change is its own transaction, so the next start catches up."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- deliveries ----------------------------------------------------------------------
    async def deliver(self, delivery: Delivery) -> None:
        peer = await self._storage.read(lambda s: s.get_peer(delivery.peer_id))
        if peer is None or peer.removed_at_ms:
            await self._storage.write(lambda s: s.delivery_done(delivery.peer_id, delivery.generation))
            return
        try:
            await self.sync_with(peer)
        except (grpc.aio.AioRpcError, Rejected, OSError) as exc:
            error = _error_text(exc)
            delay_s = min(self.retry_base_seconds * 2**delivery.attempts, self.retry_max_seconds)
            now = self._clock.now_ms()
            await self._storage.write(lambda s: s.delivery_failed(peer.hub_id, error, now + int(delay_s * 1000)))
            await self._storage.write(lambda s: s.record_peer_contact(peer.hub_id, now, None, error))
            self._channels.record_failure(peer.hub_id)
            return
        await self._storage.write(lambda s: s.delivery_done(peer.hub_id, delivery.generation))

    async def sync_with(self, peer: PeerRecord) -> None:
        """Send everything held of agreements with `peer`, one document per exchange so that a
        document the peer refuses cannot hold back the others; merge what it answers. Raises
        only when the peer cannot be reached (the caller retries later)."""
        documents = [e.to_document() for e in await self._ledger.all(peer.hub_id)]
        held: list[agreement_pb2.AgreementDocument] = []
        for batch in [[d] for d in documents] or [[]]:
            try:
                response = await self._exchange(peer, batch)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _RETRYABLE:
                    raise
                # The peer refuses this document for good (expired, overlapping, ...): record it, go on.
                await self._audit(peer.hub_id, "agreement.deliver", agreement_id_of(batch[0]) if batch else "",
                                  exc.code().name.lower(), exc.details() or "")
                continue
            held = list(response.documents.documents)
        for doc in held:
            try:
                merged = await self._ledger.merge_from(peer.hub_id, peer.public_key, [doc])
            except Rejected as rejected:
                await self._audit(peer.hub_id, "agreement.exchange", agreement_id_of(doc), rejected.reason.label, rejected.message)
                continue
            for m in merged:
                if m.changed:
                    await self._audit(peer.hub_id, "agreement.exchange", m.evidence.agreement_id, "ok", ag.STATE_NAMES[m.state])

    async def _exchange(self, peer: PeerRecord,
                        documents: list[agreement_pb2.AgreementDocument]) -> federation_pb2.ExchangeAgreementsResponse:
        signed = envelope.make(self._identity().identity_key, self._own_id, peer.hub_id, EXCHANGE_METHOD, clock=self._clock,
                               agreement_exchange=agreement_pb2.AgreementExchange(documents=documents))
        started = self._clock.monotonic()
        response: federation_pb2.ExchangeAgreementsResponse = await _stub(self.channel(peer)).ExchangeAgreements(
            signed, timeout=peers.CALL_TIMEOUT_S)
        latency = (self._clock.monotonic() - started) * 1000
        await self._storage.write(lambda s: s.record_peer_contact(peer.hub_id, self._clock.now_ms(), latency, ""))
        self._channels.record_success(peer.hub_id)
        return response

    # -- descriptor refreshes ------------------------------------------------------------
    async def follow(self, peer_id: str) -> bool:
        """Something `peer_id` signed did not verify under the key this hub knows for it: it may
        have rotated its key. Refresh its descriptor now, following its key history only if it
        continues the one pinned (`refresh`: a fork or a replay is refused and audited). One
        refresh per peer at a time (callers share it) and at most one on demand per
        FOLLOW_INTERVAL_S; waits at most peers.CALL_TIMEOUT_S. Returns whether a refresh
        finished, so that the caller verifies once more under the key then known."""
        running = self._in_flight.get(("refresh", peer_id))
        if running is None:
            now = self._clock.monotonic()
            last = self._followed_at.get(peer_id)
            if last is not None and now - last < FOLLOW_INTERVAL_S:
                return False
            peer = await self._storage.read(lambda s: s.get_peer(peer_id))
            if peer is None or peer.removed_at_ms:
                return False
            self._followed_at[peer_id] = now
            running = self._spawn("refresh", peer_id, self.refresh(peer))
        try:  # shielded: a caller that gives up does not cancel the refresh the others wait for
            await asyncio.wait_for(asyncio.shield(running), peers.CALL_TIMEOUT_S)
        except TimeoutError:
            return False
        except Exception:  # logged where the refresh ran (`_spawn`); the key known is unchanged
            pass
        return True

    async def _fetch_descriptor(self, peer: PeerRecord, known: KeyChain | None) -> tuple[descriptors.VerifiedDescriptor, bytes]:
        """Through the pooled channel pinned to the stored certificate, as usual; if that fails
        (the hub renewed its certificate or rotated its key and restarted) or the descriptor
        names another certificate, fetch certificate and descriptor afresh (peers.fetch_descriptor)."""
        try:
            signed = await _stub(self.channel(peer)).GetDescriptor(federation_pb2.GetDescriptorRequest(), timeout=peers.CALL_TIMEOUT_S)
            pinned = peer.tls_cert_pem.encode()
            return descriptors.verify_descriptor(signed, peer.hub_id, pinned, self._clock.now_ms(), known), pinned
        except (grpc.aio.AioRpcError, descriptors.DescriptorError):
            return await peers.fetch_descriptor(peer.grpc_address, peer.hub_id, self._clock.now_ms(), known)

    async def refresh(self, peer: PeerRecord) -> None:
        """Fetch and verify the peer's current descriptor. Its key history must continue the
        one followed so far (a rotation is followed; a fork or a replayed older history is
        refused and the last good state kept), and the certificate it serves is re-pinned when
        it is bound to the hub's current key (a renewal or a rotation), not by fingerprint."""
        started = self._clock.monotonic()
        known = descriptors.stored_chain(peer.descriptor)  # verified when it was stored
        try:
            verified, cert_pem = await self._fetch_descriptor(peer, known)
        except peers.PeerError as exc:
            error = str(exc)
            await self._storage.write(lambda s: s.record_peer_contact(peer.hub_id, self._clock.now_ms(), None, error))
            if exc.impostor:  # a broken key history, a certificate bound elsewhere: nothing changes
                await self._audit(peer.hub_id, "peer.refresh", "", "refused", error)
            else:
                self._channels.record_failure(peer.hub_id)
            return
        latency = (self._clock.monotonic() - started) * 1000
        descriptor, valid_until, http_url = signed_bytes(verified), verified.descriptor.valid_until_ms, verified.descriptor.http_url
        now = self._clock.now_ms()
        new_cert = cert_pem.decode() if cert_pem.decode() != peer.tls_cert_pem else ""
        await self._storage.write(lambda s: s.refresh_peer(peer.hub_id, descriptor, valid_until, http_url, now, latency,
                                                           tls_cert_pem=new_cert))
        if known is not None and len(verified.chain.statements) > len(known.statements):
            await self._audit(peer.hub_id, "peer.key_rotated", "", "ok",
                              f"followed to rotation {len(verified.chain.statements)}")
        if new_cert:
            await self._audit(peer.hub_id, "peer.certificate", "", "ok", "re-pinned a certificate bound to its current key")
        self._channels.record_success(peer.hub_id)
        await self.heard_from(peer.hub_id)
