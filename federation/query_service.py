"""Federated queries: the hub that receives a query fans it out and merges; every hub that
provides data decides for itself, under its own agreement with the asker."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, replace

import grpc
from google.protobuf.message import DecodeError

from federation import dp, envelope, partials, policy
from federation.auth import Authenticated, Caller
from federation.query_spec import DEFAULT_DEADLINE_MS, bucket_start, check_shape, next_bucket
from federation.service import Federation
from federation.terms import BUCKETS
from node import catalog
from node.api.v1 import envelope_pb2, query_pb2, query_service_pb2, query_service_pb2_grpc
from node.errors import Reason, Rejected
from node.storage.base import AggregateRequest, PeerRecord

log = logging.getLogger("smartregion.query")
RUN_METHOD = "/smartregion.v1.Query/Run"
PARTIAL_METHOD = "/smartregion.v1.Query/Partial"
_DENIED_CODES = {
    grpc.StatusCode.PERMISSION_DENIED: Reason.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Reason.QUOTA_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT: Reason.INVALID_REQUEST,
    grpc.StatusCode.UNAUTHENTICATED: Reason.UNAUTHENTICATED,
    grpc.StatusCode.ALREADY_EXISTS: Reason.ALREADY_EXISTS,
}


def _now_ms() -> int:
    return int(time.time() * 1000)


def bucket_finer(a: str, b: str) -> bool:
    """Bucket `a` is finer than bucket `b`."""
    return BUCKETS.index(a) < BUCKETS.index(b)


def describe(spec: query_pb2.QuerySpec) -> str:
    day = lambda ms: dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")  # noqa: E731
    what = f"{spec.aggregate}{f'({spec.quantile:g})' if spec.aggregate == 'quantile' else ''}"
    return f"{what} {spec.dataset}/{spec.metric} by {spec.group_by}/{spec.bucket} {day(spec.start_ms)}..{day(spec.end_ms)} for {spec.purpose_code}"


@dataclass
class Asked:
    provenance: query_pb2.Provenance
    partial: query_pb2.PartialResult | None = None
    denial: Reason | None = None


class QueryService:
    def __init__(self, federation: Federation) -> None:
        self.federation = federation
        self.hub = federation.hub
        self.own_id = federation.own_id

    # -- entry: Query.Run and the admin's own queries ------------------------------------
    async def run(self, call: Authenticated) -> query_service_pb2.QueryAnswer:
        """Query.Run from a peer or partner, already authenticated (node/app/servicers/authenticated.py)."""
        if call.request.WhichOneof("body") != "query":
            raise Rejected(Reason.INVALID_REQUEST, "Query.Run takes a request whose body is a query")
        return await self._answer(call.signed, call.request.query, call.caller.id)

    async def run_as_hub(self, spec: query_pb2.QuerySpec) -> query_service_pb2.QueryAnswer:
        """The hub's own admin asks: the hub signs the query as itself."""
        signed = envelope.make(self.hub.identity.identity_key, self.own_id, self.own_id, RUN_METHOD, query=spec)
        return await self._answer(signed, spec, self.own_id)

    async def _targets(self, spec: query_pb2.QuerySpec) -> tuple[bool, list[PeerRecord]]:
        peers = await self.hub.storage.read(lambda s: s.list_peers())
        wanted = set(spec.hub_ids)
        unknown = wanted - {p.hub_id for p in peers} - {self.own_id}
        if unknown:
            raise Rejected(Reason.INVALID_REQUEST, f"not hubs of this region: {', '.join(sorted(unknown))}")
        in_filter = lambda municipality: not spec.municipalities or municipality in spec.municipalities  # noqa: E731
        chosen = lambda hub_id: not wanted or hub_id in wanted  # noqa: E731
        include_self = chosen(self.own_id) and in_filter(self.hub.config.municipality)
        targets = [p for p in peers if chosen(p.hub_id) and in_filter(p.municipality)]
        if not include_self and not targets:
            raise Rejected(Reason.INVALID_REQUEST, "no hub of this region matches the municipality filter and hub ids")
        return include_self, targets

    async def _answer(self, signed: envelope_pb2.SignedRequest, spec: query_pb2.QuerySpec, asker_id: str) -> query_service_pb2.QueryAnswer:
        try:
            check_shape(spec)
            include_self, peers = await self._targets(spec)
        except Rejected as refusal:  # audited like every refused call (no describe(): the window may be absurd)
            await self.federation.audit(asker_id, "query.run", "", refusal.reason.label, f"{spec.dataset}/{spec.metric}: {refusal.message}")
            raise
        digest = partials.query_digest(signed.payload)
        deadline_s = (spec.deadline_ms or DEFAULT_DEADLINE_MS) / 1000
        jobs = [self._ask_peer(p, signed, spec, digest, deadline_s) for p in peers]
        if include_self:
            jobs.append(self._ask_self(signed, spec, asker_id, deadline_s))
        asked: list[Asked] = list(await asyncio.gather(*jobs))  # each job turns its own failures into a status
        answered = [a for a in asked if a.partial is not None]
        missing = [a.provenance.hub_id for a in asked if a.partial is None]
        if asked and not answered and all(a.denial for a in asked):
            reasons = {a.denial for a in asked}
            reason = reasons.pop() if len(reasons) == 1 else Reason.PERMISSION_DENIED
            message = "; ".join(f"hub {a.provenance.hub_id}: {a.provenance.reason}" for a in asked)
            await self.federation.audit(asker_id, "query.run", "", reason.label, f"{describe(spec)}: {message}")
            raise Rejected(reason, message)
        rows = partials.merge([a.partial for a in answered], spec)
        await self.federation.audit(asker_id, "query.run", "", "ok",
                                    f"{describe(spec)}: {len(answered)}/{len(asked)} hubs answered, {len(rows)} rows")
        answer = query_service_pb2.QueryAnswer(query=signed, rows=rows, provenance=[a.provenance for a in asked],
                                               partial=bool(missing), missing_hubs=missing, answered_by=self.own_id)
        partials.sign_answer(self.hub.identity, answer, digest, _now_ms())
        return answer

    async def _ask_self(self, signed, spec, asker_id, deadline_s: float) -> Asked:
        started = time.monotonic()
        base = query_pb2.Provenance(hub_id=self.own_id, municipality=self.hub.config.municipality)
        try:
            signed_partial = await asyncio.wait_for(self.compute(signed, spec, asker_id), deadline_s)
        except Rejected as refusal:
            base.status, base.reason = "denied", refusal.message
            return Asked(base, denial=refusal.reason)
        except TimeoutError:
            base.status, base.reason = "timed_out", "this hub's own partial missed the deadline"
            base.latency_ms = (time.monotonic() - started) * 1000
            return Asked(base)
        except Exception:  # a fault here must not fail the other hubs' answers
            log.exception("computing this hub's own partial failed")
            base.status, base.reason = "unavailable", "this hub could not compute its partial (see its log)"
            return Asked(base)
        result = query_pb2.PartialResult.FromString(signed_partial.partial)
        base.status, base.agreement_id, base.latency_ms = "answered", result.agreement_id, (time.monotonic() - started) * 1000
        base.partial.CopyFrom(signed_partial)
        return Asked(base, result)

    async def _ask_peer(self, peer: PeerRecord, signed, spec: query_pb2.QuerySpec, digest: bytes, deadline_s: float) -> Asked:
        base = query_pb2.Provenance(hub_id=peer.hub_id, municipality=peer.municipality)
        outer = envelope.make(self.hub.identity.identity_key, self.own_id, peer.hub_id, PARTIAL_METHOD, relayed=signed)
        stub = query_service_pb2_grpc.QueryStub(self.federation.channel(peer))
        started = time.monotonic()
        try:
            response = await stub.Partial(outer, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            base.latency_ms = (time.monotonic() - started) * 1000
            base.reason = exc.details() or exc.code().name
            denial = _DENIED_CODES.get(exc.code())
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                base.status = "timed_out"
            else:
                base.status = "denied" if denial else "unavailable"
            self._observe(peer, base)
            return Asked(base, denial=denial)
        base.latency_ms = (time.monotonic() - started) * 1000
        try:
            result = partials.verify_partial(response, digest, peer.hub_id, peer.public_key)
            partials.check_cells(result, spec, peer.municipality)
        except (partials.PartialError, ValueError, DecodeError) as exc:
            base.status, base.reason = "unavailable", f"its answer was refused: {exc}"
            return Asked(base)
        base.status, base.agreement_id = "answered", result.agreement_id
        base.partial.CopyFrom(response)
        self._observe(peer, base)
        return Asked(base, result)

    def _observe(self, peer: PeerRecord, provenance: query_pb2.Provenance) -> None:
        status = provenance.status or "denied"
        self.hub.metrics.query_peer_seconds.labels(peer.hub_id, status).observe(provenance.latency_ms / 1000)

    # -- provider: Query.Partial ------------------------------------------------------------
    async def partial(self, call: Authenticated) -> query_pb2.SignedPartial:
        """Query.Partial from a peer hub relaying a query, already authenticated."""
        relay, request = call.caller, call.request
        if relay.kind != "hub":
            message = "only a peer hub may relay a query; partners call Query.Run"
            await self.federation.audit(relay.id, "query.partial", "", Reason.PERMISSION_DENIED.label, message)
            raise Rejected(Reason.PERMISSION_DENIED, message)
        if request.WhichOneof("body") != "relayed":
            raise Rejected(Reason.INVALID_REQUEST, "Query.Partial takes a request whose body is the relayed query")
        original = request.relayed
        asker = await self._authenticate_asker(original, relay)
        asked = envelope.parse(original)
        if asked.WhichOneof("body") != "query":
            raise Rejected(Reason.INVALID_REQUEST, "the relayed request is not a query")
        return await self.compute(original, asked.query, asker.id)

    async def _authenticate_asker(self, original: envelope_pb2.SignedRequest, relay: Caller) -> Caller:
        """The original asker signed this exact query, for the relaying hub, recently, once."""
        try:
            asked = envelope.parse(original)
        except envelope.EnvelopeError as exc:
            await self.federation.audit("unknown", "query.partial", "", "unauthenticated", f"relayed by {relay.id}: {exc}")
            raise Rejected(Reason.UNAUTHENTICATED, str(exc)) from None
        if asked.caller_id == self.own_id:
            message = "a query asked by this hub came back to it"
            await self.federation.audit(relay.id, "query.partial", "", Reason.PERMISSION_DENIED.label, f"relayed by {relay.id}: {message}")
            raise Rejected(Reason.PERMISSION_DENIED, message)
        asker = await self.federation.known_caller(asked.caller_id)
        if asker is None:
            await self.federation.audit(f"unknown:{asked.caller_id}", "query.partial", "", "unauthenticated", f"relayed by {relay.id}")
            raise Rejected(Reason.UNAUTHENTICATED, f"the asker {asked.caller_id} is neither a peer nor a partner of this hub")
        try:
            envelope.check(original, asked, asker.public_key, relay.id, RUN_METHOD, _now_ms())
        except envelope.EnvelopeError as exc:
            await self.federation.audit(asker.id, "query.partial", "", "unauthenticated", f"relayed by {relay.id}: {exc}")
            raise Rejected(Reason.UNAUTHENTICATED, f"the relayed query: {exc}") from None
        expires = asked.issued_at_ms + 2 * envelope.MAX_CLOCK_SKEW_MS
        if not await self.hub.storage.write(lambda s: s.remember_nonce(asker.id, asked.nonce, expires, _now_ms())):
            await self.federation.audit(asker.id, "query.partial", "", "replayed", f"relayed by {relay.id}: a query nonce was used again")
            raise Rejected(Reason.ALREADY_EXISTS, "this query was already answered (replayed)")
        return asker

    async def _cells_hiding_small_subcells(self, request: AggregateRequest, grant: policy.Grant) -> frozenset[int]:
        """Cells that contain a sub-cell, at the agreement's finest granularity, with fewer
        contributors than the minimum group size. Releasing them would let an asker subtract
        released cells (a year minus eleven months) and recover the small one, so they are
        withheld too: any difference of released cells is then a union of safe sub-cells."""
        finest = policy.finest_grain(grant.smallest_bucket)  # two allowed windows differ by whole grains
        if grant.min_group_size <= 1 or not bucket_finer(finest, request.bucket):
            return frozenset()
        finer = replace(request, bucket=finest, with_sketch=False)
        subcells = await self.hub.storage.read(lambda s: s.aggregate(finer))
        withheld = set()
        for sub in subcells:
            if sub.contributors < grant.min_group_size:
                last_ms = min(next_bucket(finest, sub.bucket_start_ms), request.end_ms) - 1
                # A sub-cell may straddle two request cells (a week across a month's end): both.
                withheld.add(bucket_start(request.bucket, max(sub.bucket_start_ms, request.start_ms), request.start_ms))
                withheld.add(bucket_start(request.bucket, last_ms, request.start_ms))
        return frozenset(withheld)

    @staticmethod
    def _dp_bounds(spec: query_pb2.QuerySpec) -> tuple[float, float]:
        try:
            return dp.clamp_bounds(catalog.dataset(spec.dataset).metrics[spec.metric])
        except dp.PrivacyError as exc:
            raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None

    async def _spend(self, grant: policy.Grant, epsilon: float) -> None:
        """Count the query against the agreement's daily quota and privacy budget."""
        if grant.queries_per_day is None:
            return
        day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        outcome = await self.hub.storage.write(
            lambda s: s.use_quota(grant.agreement_id, day, grant.queries_per_day, epsilon, grant.dp_budget))
        if outcome == "quota":
            raise Rejected(Reason.QUOTA_EXHAUSTED,
                           f"agreement {grant.agreement_id} allows {grant.queries_per_day} queries a day; today's are used up")
        if outcome == "budget":
            raise Rejected(Reason.QUOTA_EXHAUSTED,
                           f"agreement {grant.agreement_id}'s differential-privacy budget of {grant.dp_budget:g} a day "
                           f"cannot pay for epsilon {epsilon:g} today")

    async def compute(self, signed: envelope_pb2.SignedRequest, spec: query_pb2.QuerySpec, asker_id: str) -> query_pb2.SignedPartial:
        """This hub's partial answer, under its own agreement with the asker."""
        check_shape(spec)
        evidences = await self.federation.ledger.all(asker_id)
        states = await self.federation.ledger.states()
        try:
            grant = policy.authorize(spec, asker_id, self.own_id, [(e, states[e.agreement_id]) for e in evidences])
            epsilon = (spec.epsilon or dp.default_epsilon(grant.dp_budget)) if grant.dp_budget else 0.0
            bounds = self._dp_bounds(spec) if epsilon else None
            await self._spend(grant, epsilon)
        except Rejected as refusal:
            await self.federation.audit(asker_id, "query.partial", "", refusal.reason.label, f"{describe(spec)}: {refusal.message}")
            raise
        request = AggregateRequest(spec.dataset, spec.metric, spec.start_ms, spec.end_ms, spec.bucket,
                                   grant.consent_purpose, with_sketch=spec.aggregate == "quantile", clamp=bounds)
        cells = await self.hub.storage.read(lambda s: s.aggregate(request))
        if epsilon:
            # Every bucket of the window is released (an absent one would tell it is empty), and
            # none is withheld on exact counts: the noise protects them instead (querying.md 3.7).
            cells, withheld = dp.noisy_cells(dp.every_bucket(cells, spec), spec.aggregate, epsilon, bounds), frozenset()
            grant = replace(grant, min_group_size=0)
        else:
            withheld = await self._cells_hiding_small_subcells(request, grant)
        group = self.hub.config.municipality if spec.group_by == "municipality" else "region"
        result = partials.build(partials.query_digest(signed.payload), self.own_id, self.hub.config.municipality,
                                grant.agreement_id, grant.min_group_size, group, cells, _now_ms(), spec.aggregate,
                                withheld, noisy=bool(epsilon))
        suppressed = sum(1 for c in result.cells if c.suppressed)
        await self.federation.audit(asker_id, "query.partial", grant.agreement_id, "ok",
                                    f"{describe(spec)}: {len(result.cells)} cells, {suppressed} suppressed")
        return partials.sign_partial(self.hub.identity, result)
