"""The entry hub: Query.Run and the admin's own queries. It checks the query's shape, asks
every matching hub (itself too, through the provider), relays each sealed partial unread,
and signs what every hub answered. A hub asking for itself opens and merges as the asker."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from federation import envelope, partials, sealing
from federation.auth import Authenticated
from federation.query import asker
from federation.query.provider import PARTIAL_METHOD, RUN_METHOD, Provider, check_releasable, describe
from federation.query_spec import DEFAULT_DEADLINE_MS, check_shape
from federation.service import Federation
from node.api.v1 import envelope_pb2, query_pb2, query_service_pb2, query_service_pb2_grpc
from node.errors import Reason, Rejected
from node.keychain import KeyChain
from node.storage.base import PeerRecord

log = logging.getLogger("smartregion.query")
_DENIED_CODES = {
    grpc.StatusCode.PERMISSION_DENIED: Reason.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Reason.QUOTA_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT: Reason.INVALID_REQUEST,
    grpc.StatusCode.UNAUTHENTICATED: Reason.UNAUTHENTICATED,
    grpc.StatusCode.ALREADY_EXISTS: Reason.ALREADY_EXISTS,
}


@dataclass
class Asked:
    provenance: query_pb2.Provenance
    answered: bool = False
    denial: Reason | None = None


class QueryService:
    def __init__(self, federation: Federation) -> None:
        self.federation = federation
        self.hub = federation.hub
        self.own_id = federation.own_id
        self.provider = Provider(federation)

    # -- entry: Query.Run and the admin's own queries ------------------------------------
    async def run(self, call: Authenticated) -> query_service_pb2.QueryAnswer:
        if call.request.WhichOneof("body") != "query":
            raise Rejected(Reason.INVALID_REQUEST, "Query.Run takes a request whose body is a query")
        return await self._answer(call.signed, call.request.query, call.caller.id, retry=call.retry)

    async def partial(self, call: Authenticated) -> query_service_pb2.SealedPartial:
        return await self.provider.partial(call)

    async def run_as_hub(self, spec: query_pb2.QuerySpec) -> query_service_pb2.QueryAnswer:
        """The hub's own admin asks: the hub signs the query as itself, with a fresh answer key,
        and opens and merges the sealed partials as any asker does."""
        key = sealing.new_answer_key()
        asked = query_pb2.QuerySpec()
        asked.CopyFrom(spec)
        asked.answer_key = sealing.public_raw(key)
        identity = self.hub.identity  # the key that signs the query is the one the answer is opened with
        signed = envelope.make(identity.identity_key, self.own_id, self.own_id, RUN_METHOD, clock=self.hub.clock, query=asked)
        answer = await self._answer(signed, asked, self.own_id)
        try:
            opened = asker.open_answer(answer, key, identity.public_key_raw, identity.key_history)
            await asker.check_current_keys(opened, self._peer_chain, self.federation.outbox.follow, self.hub.clock.now_ms())
            return opened
        except asker.AnswerRefused as exc:
            raise Rejected(Reason.UNAVAILABLE, f"the region's answer does not verify: {exc}") from None

    async def _peer_chain(self, hub_id: str) -> KeyChain | None:
        """A peer's key history as this hub follows it (None for this hub itself)."""
        return None if hub_id == self.own_id else await self.federation.registry.followed_chain(hub_id)

    async def _targets(self, spec: query_pb2.QuerySpec) -> tuple[bool, list[PeerRecord]]:
        peers = await self.hub.storage.read(lambda s: s.list_peers())
        wanted = set(spec.hub_ids)
        unknown = wanted - {p.hub_id for p in peers} - {self.own_id}
        if unknown:
            raise Rejected(Reason.INVALID_REQUEST, f"not hubs of this region: {', '.join(sorted(unknown))}")

        def in_filter(municipality: str) -> bool:
            return not spec.municipalities or municipality in spec.municipalities

        def chosen(hub_id: str) -> bool:
            return not wanted or hub_id in wanted

        include_self = chosen(self.own_id) and in_filter(self.hub.config.municipality)
        targets = [p for p in peers if chosen(p.hub_id) and in_filter(p.municipality)]
        if not include_self and not targets:
            raise Rejected(Reason.INVALID_REQUEST, "no hub of this region matches the municipality filter and hub ids")
        # Every municipality the asker names must be answered for (the asker checks it, and
        # refuses an answer that lists no hub of one): one this region has no hub for is refused.
        covered = {p.municipality for p in targets} | ({self.hub.config.municipality} if include_self else set())
        if spec.municipalities and (uncovered := sorted(set(spec.municipalities) - covered)):
            raise Rejected(Reason.INVALID_REQUEST, f"no hub of this region among those asked holds municipality {', '.join(uncovered)}")
        return include_self, targets

    async def _answer(self, signed: envelope_pb2.SignedRequest, spec: query_pb2.QuerySpec, asker_id: str,
                      retry: bool = False) -> query_service_pb2.QueryAnswer:
        """`retry`: the asker sent this signed query before (its answer was lost); every hub
        answers it from its kept answer, or refuses it (provider.py)."""
        try:
            check_shape(spec)
            check_releasable(spec)
            include_self, peers = await self._targets(spec)
        except Rejected as refusal:  # audited like every refused call (no describe(): the window may be absurd)
            await self.federation.audit(asker_id, "query.run", "", refusal.reason.label, f"{spec.dataset}/{spec.metric}: {refusal.message}")
            raise
        deadline_s = (spec.deadline_ms or DEFAULT_DEADLINE_MS) / 1000
        jobs = [self._ask_peer(p, signed, deadline_s) for p in peers]
        if include_self:
            jobs.append(self._ask_self(signed, spec, asker_id, deadline_s, retry))
        asked: list[Asked] = list(await asyncio.gather(*jobs))  # each job turns its own failures into a status
        missing = [a.provenance.hub_id for a in asked if not a.answered]
        denials = [a.denial for a in asked if a.denial is not None]
        if asked and len(missing) == len(asked) and len(denials) == len(asked):
            reasons = set(denials)
            reason = reasons.pop() if len(reasons) == 1 else Reason.PERMISSION_DENIED
            message = "; ".join(f"hub {a.provenance.hub_id}: {a.provenance.reason}" for a in asked)
            await self.federation.audit(asker_id, "query.run", "", reason.label, f"{describe(spec)}: {message}")
            raise Rejected(reason, message)
        await self.federation.audit(asker_id, "query.run", "", "ok",
                                    f"{describe(spec)}: {len(asked) - len(missing)}/{len(asked)} hubs answered (sealed to the asker)")
        answer = query_service_pb2.QueryAnswer(query=signed, provenance=[a.provenance for a in asked],
                                               partial=bool(missing), missing_hubs=missing, answered_by=self.own_id)
        partials.sign_answer(self.hub.identity, answer, partials.query_digest(signed.payload), self.hub.clock.now_ms())
        return answer

    async def _ask_self(self, signed: envelope_pb2.SignedRequest, spec: query_pb2.QuerySpec, asker_id: str,
                        deadline_s: float, retry: bool = False) -> Asked:
        started = self.hub.clock.monotonic()
        base = query_pb2.Provenance(hub_id=self.own_id, municipality=self.hub.config.municipality)
        try:
            sealed = await asyncio.wait_for(self.provider.compute(signed, spec, asker_id, retry), deadline_s)
        except Rejected as refusal:
            base.status, base.reason = "denied", refusal.message
            return Asked(base, denial=refusal.reason)
        except TimeoutError:
            base.status, base.reason = "timed_out", "this hub's own partial missed the deadline"
            base.latency_ms = (self.hub.clock.monotonic() - started) * 1000
            return Asked(base)
        except Exception:  # a fault here must not fail the other hubs' answers
            log.exception("computing this hub's own partial failed")
            base.status, base.reason = "unavailable", "this hub could not compute its partial (see its log)"
            return Asked(base)
        base.status, base.agreement_id, base.agreement = "answered", sealed.agreement_id, sealed.agreement
        base.latency_ms = (self.hub.clock.monotonic() - started) * 1000
        base.sealed_partial = sealed.sealed
        return Asked(base, answered=True)

    async def _ask_peer(self, peer: PeerRecord, signed: envelope_pb2.SignedRequest, deadline_s: float) -> Asked:
        base = query_pb2.Provenance(hub_id=peer.hub_id, municipality=peer.municipality)
        outer = envelope.make(self.hub.identity.identity_key, self.own_id, peer.hub_id, PARTIAL_METHOD, clock=self.hub.clock,
                              relayed=signed)
        breaker = self.federation.channels
        if breaker.is_failing(peer.hub_id):
            # It failed moments ago: name it absent at once rather than wait out the deadline
            # for every query (the breaker lets a call through again after a bounded delay).
            base.status, base.reason = "unavailable", "it failed recently; not asked again yet (circuit breaker)"
            self._observe(peer, base)
            return Asked(base)
        stub = query_service_pb2_grpc.QueryStub(self.federation.channel(peer))
        started = self.hub.clock.monotonic()
        try:
            response = await stub.Partial(outer, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            base.latency_ms = (self.hub.clock.monotonic() - started) * 1000
            base.reason = exc.details() or exc.code().name
            denial = _DENIED_CODES.get(exc.code())
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                base.status = "timed_out"
            else:
                base.status = "denied" if denial else "unavailable"
            if denial is None:  # unreachable or frozen; a refusal is an answer
                breaker.record_failure(peer.hub_id)
            self._observe(peer, base)
            return Asked(base, denial=denial)
        breaker.record_success(peer.hub_id)
        base.latency_ms = (self.hub.clock.monotonic() - started) * 1000
        if not response.sealed:
            base.status, base.reason = "unavailable", "its answer was refused: it carries no sealed partial"
            return Asked(base)
        # Sealed to the asker: this hub cannot read or check it; the asker does (asker.py).
        base.status, base.agreement_id, base.sealed_partial = "answered", response.agreement_id, response.sealed
        base.agreement = response.agreement
        self._observe(peer, base)
        return Asked(base, answered=True)

    def _observe(self, peer: PeerRecord, provenance: query_pb2.Provenance) -> None:
        status = provenance.status or "denied"
        self.hub.metrics.query_peer_seconds.labels(peer.hub_id, status).observe(provenance.latency_ms / 1000)
