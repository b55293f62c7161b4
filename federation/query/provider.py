"""The providing hub: Query.Partial (a query relayed by a peer) and this hub's own share of a
query it received. It authenticates the asker's inner envelope, refuses a relayed query that
does not ask it, decides under its own agreement with the asker, spends quota and budget
(refunded when the answer then fails), and seals its signed partial to the asker's key.

The charge is made when the answer is computed, and it is final: once sealed, the answer may
have reached the relaying hub or the asker, and a refund then would let an asker (or a relay
that drops answers on purpose) get answers free. An entry hub killed before it delivered
therefore costs the asker that query; the asker's retry with the SAME signed query is not
charged again: every hub keeps its sealed answer until the query expires (issued_at + twice
the clock skew) and sends the kept bytes again. A retry whose answer is not kept (still
being computed, or the hub stopped between charging and keeping) is refused as a replay,
never computed again: two computations of one signed query would be two releases for one
charge."""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from federation import dp, envelope, partials, policy, sealing
from federation.auth import Authenticated, Caller
from federation.query import releases
from federation.query_spec import bucket_start, buckets, check_shape, label, next_bucket
from federation.service import Federation
from federation.terms import BUCKETS
from node import catalog
from node.api.v1 import admin_pb2, envelope_pb2, query_pb2, query_service_pb2
from node.clock import utc_day
from node.errors import Reason, Rejected
from node.storage.base import AggregateRequest, CellRow, Contribution, ReleasedRun, ReleasedSubcell, ReleaseLine

log = logging.getLogger("smartregion.query")
RUN_METHOD = "/smartregion.v1.Query/Run"
QUANTILE_UNCOARSENED = "subcell_not_coarsenable"  # why a quantile cell is withheld (the audit's reason)
PARTIAL_METHOD = "/smartregion.v1.Query/Partial"


def bucket_finer(a: str, b: str) -> bool:
    """Bucket `a` is finer than bucket `b`."""
    return BUCKETS.index(a) < BUCKETS.index(b)


def describe(spec: query_pb2.QuerySpec) -> str:
    def day(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")

    what = f"{spec.aggregate}{f'({spec.quantile:g})' if spec.aggregate == 'quantile' else ''}"
    window = f"{day(spec.start_ms)}..{day(spec.end_ms)}"
    return f"{what} {spec.dataset}/{spec.metric} by {spec.group_by}/{spec.bucket} {window} for {spec.purpose_code}"


def check_releasable(spec: query_pb2.QuerySpec) -> None:
    """What no agreement can allow: partials sent in the clear, or too large to pad and send."""
    if len(spec.answer_key) != sealing.KEY_BYTES:
        raise Rejected(Reason.INVALID_REQUEST, "a query carries the asker's 32-byte X25519 answer key (answer_key): "
                                               "partial results are sealed to it and never sent in the clear")
    try:  # a low-order point (all zeros, ...) gives an all-zero shared secret: refused before anything is spent
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(spec.answer_key))
    except ValueError:
        raise Rejected(Reason.INVALID_REQUEST, "the query's answer key is not a usable X25519 public key "
                                               "(a low-order point): nothing could be sealed to it") from None
    try:
        partials.check_size(spec)
    except partials.PartialError as exc:
        raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None


@dataclass
class ReleaseHooks:
    """A test hook that forces an interleaving: runs after a query computed its release-log
    fingerprints and before it checks and logs them."""

    before_check: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Sealed:
    sealed: bytes
    agreement_id: str
    agreement: bytes  # the co-signed agreement (serialized SignedTerms) answered under; b"" for own data


class Provider:
    def __init__(self, federation: Federation) -> None:
        self.federation = federation
        self.hub = federation.hub
        self.own_id = federation.own_id
        self.release_hooks = ReleaseHooks()

    # -- Query.Partial ----------------------------------------------------------------------
    async def partial(self, call: Authenticated) -> query_service_pb2.SealedPartial:
        relay, request = call.caller, call.request
        if relay.kind != "hub":
            message = "only a peer hub may relay a query; partners call Query.Run"
            await self.federation.audit(relay.id, "query.partial", "", Reason.PERMISSION_DENIED.label, message)
            raise Rejected(Reason.PERMISSION_DENIED, message)
        if request.WhichOneof("body") != "relayed":
            raise Rejected(Reason.INVALID_REQUEST, "Query.Partial takes a request whose body is the relayed query")
        original = request.relayed
        asker, retry = await self._authenticate_asker(original, relay)
        asked = envelope.parse(original)
        if asked.WhichOneof("body") != "query":
            raise Rejected(Reason.INVALID_REQUEST, "the relayed request is not a query")
        await self._check_asked_here(asked.query, asker.id, relay.id)
        answer = await self.compute(original, asked.query, asker.id, retry=retry)
        return query_service_pb2.SealedPartial(sealed=answer.sealed, agreement_id=answer.agreement_id, agreement=answer.agreement)

    async def _check_asked_here(self, spec: query_pb2.QuerySpec, asker_id: str, relay_id: str) -> None:
        """A relaying hub may only bring this hub a query the asker addressed to it: one whose hub
        ids and municipality filter include this hub (else an entry hub could fan a query for
        its own data out to every hub and spend the asker's agreements there)."""
        municipality = self.hub.config.municipality
        if spec.hub_ids and self.own_id not in spec.hub_ids:
            message = f"the asker asked hubs {', '.join(spec.hub_ids)}, not this hub; relayed by {relay_id}"
        elif spec.municipalities and municipality not in spec.municipalities:
            message = f"the asker asked municipalities {', '.join(spec.municipalities)}, not {municipality}; relayed by {relay_id}"
        else:
            return
        await self.federation.audit(asker_id, "query.partial", "", Reason.PERMISSION_DENIED.label, message)
        raise Rejected(Reason.PERMISSION_DENIED, message)

    async def _authenticate_asker(self, original: envelope_pb2.SignedRequest, relay: Caller) -> tuple[Caller, bool]:
        """The original asker signed this exact query, for the relaying hub, recently; and
        whether this hub saw it before (a retry: answered only from the kept answer)."""
        now_ms = self.hub.clock.now_ms()
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
            asker = await self.federation.authenticator.check_signed(original, asked, asker, relay.id, RUN_METHOD, now_ms)
        except envelope.EnvelopeError as exc:
            await self.federation.audit(asker.id, "query.partial", "", "unauthenticated", f"relayed by {relay.id}: {exc}")
            raise Rejected(Reason.UNAUTHENTICATED, f"the relayed query: {exc}") from None
        expires = asked.issued_at_ms + 2 * envelope.MAX_CLOCK_SKEW_MS
        first_time = await self.hub.storage.write(lambda s: s.remember_nonce(asker.id, asked.nonce, expires, now_ms))
        return asker, not first_time

    async def budget(self, agreement_id: str) -> admin_pb2.AgreementBudget:
        """The agreement's lifetime privacy budget, and what this hub (if it provides) has spent."""
        evidence = await self.federation.ledger.require(agreement_id)
        t = evidence.terms
        budget = dp.micro(t.dp_epsilon)
        providing = t.provider.id == self.own_id
        pooled = await self._budget_line(t.agreement_id, t.consumer.id, t.datasets) if providing else []
        spent = await self.hub.storage.read(lambda s: s.budget_spent(t.agreement_id, pooled)) if providing else 0
        return admin_pb2.AgreementBudget(agreement_id=t.agreement_id, budget_micro=budget, spent_micro=spent,
                                         remaining_micro=max(0, budget - spent), role="provider" if providing else "consumer",
                                         max_contributions=t.dp_max_contributions)

    async def _budget_line(self, agreement_id: str, consumer_id: str, datasets: Iterable[str]) -> list[str]:
        """The other agreements of this hub with the same asker over any of these datasets:
        earlier versions, and agreements revoked and signed anew. A lifetime budget is the
        line's, not one document's: a renewal must not hand the asker a fresh budget (what it
        raises the budget to is what it grants anew)."""
        wanted = set(datasets)
        return [e.agreement_id for e in await self.federation.ledger.all(consumer_id)
                if e.agreement_id != agreement_id and e.terms.provider.id == self.own_id
                and e.terms.consumer.id == consumer_id and wanted & set(e.terms.datasets)]

    # -- deciding and computing ---------------------------------------------------------------
    async def _cells_hiding_small_subcells(self, request: AggregateRequest, grant: policy.Grant) -> frozenset[int]:
        """Cells that contain a sub-cell, at the agreement's finest granularity, with fewer
        contributors than the minimum group size. Releasing them would let an asker subtract
        released cells (a year minus eleven months) and recover the small one, so they are
        withheld too: any difference of released cells is then a union of safe sub-cells."""
        finest = policy.finest_grain(grant.smallest_bucket)  # two allowed windows differ by whole grains
        if grant.min_group_size <= 1 or not bucket_finer(finest, request.bucket):
            return frozenset()
        finer = replace(request, bucket=finest)
        subcells = await self.hub.storage.read(lambda s: s.aggregate(finer))
        withheld: set[int] = set()
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

    async def _spend(self, grant: policy.Grant, epsilon: float, dataset: str) -> int:
        """Charge the query: `epsilon` against the agreement's lifetime budget (integer
        micro-epsilon), then one query against today's quota; all or nothing. Returns the
        micro-epsilon charged, to refund if the query then fails."""
        limit = grant.queries_per_day
        if limit is None:
            return 0
        charged = dp.micro(epsilon)
        budget = dp.micro(grant.dp_budget)
        aid = grant.agreement_id
        pooled = await self._budget_line(aid, grant.asker_id, [dataset]) if charged else []
        if charged and not await self.hub.storage.write(lambda s: s.spend_budget(aid, charged, budget, pooled)):
            spent = await self.hub.storage.read(lambda s: s.budget_spent(aid, pooled))
            raise Rejected(Reason.QUOTA_EXHAUSTED,
                           f"agreement {aid}'s differential-privacy budget of {grant.dp_budget:g} (for its whole lifetime, "
                           f"earlier versions included) cannot pay for epsilon {epsilon:g}: {max(0, budget - spent) / dp.MICRO:g} remains")
        day = utc_day(self.hub.clock.now_ms())
        if await self.hub.storage.write(lambda s: s.use_quota(aid, day, limit)) == "quota":
            await self._refund(grant, charged)
            raise Rejected(Reason.QUOTA_EXHAUSTED, f"agreement {aid} allows {limit} queries a day; today's are used up")
        return charged

    async def _refund(self, grant: policy.Grant, charged: int) -> None:
        if charged:
            await self.hub.storage.write(lambda s: s.refund_budget(grant.agreement_id, charged))

    async def _coarse_sketches(self, request: AggregateRequest, grant: policy.Grant, cells: list[CellRow]
                               ) -> tuple[dict[int, query_pb2.CoarseSketch], dict[int, list[query_pb2.CoarseSketch]]]:
        """Per cell, the sketch coarsened as partials.coarsen rules, per municipality as
        region-wide; a cell that cannot be coarsened so is left out, and then withheld. And per
        cell its sub-cells' sketches, which a per-municipality value is read from.

        Under an agreement each SUB-CELL (a bucket of its finest grain, the release log's) is
        coarsened on its own and a cell's sketch merges its sub-cells' (partials.subcell_sketches):
        two released cells of different extents then differ by per-sub-cell histograms that
        each obey the rule (docs/privacy.md 2, rule 4). A hub's own data needs no such care."""
        threshold = partials.coarse_threshold(grant.min_group_size)
        if not grant.agreement_id:
            rows = await self.hub.storage.read(lambda s: s.sketch_bins_by_contributor(request))
            return partials.coarse_sketches(rows, threshold), {}
        grain = policy.finest_grain(grant.smallest_bucket)
        finer = replace(request, bucket=grain)
        rows = await self.hub.storage.read(lambda s: s.sketch_bins_by_contributor(finer))
        starts = sorted(c.bucket_start_ms for c in cells)
        if not starts:
            return {}, {}

        def cell_of(subcell_start: int) -> int:  # the cell whose span holds the sub-cell (cells are runs of sub-cells)
            return starts[max(0, bisect.bisect_right(starts, max(subcell_start, request.start_ms)) - 1)]

        parts = partials.subcell_sketches(rows, threshold, cell_of)
        return {cell: partials.merged(sketches) for cell, sketches in parts.items()}, parts

    async def _released_before(self, grant: policy.Grant, spec: query_pb2.QuerySpec, request: AggregateRequest,
                               cells: list[CellRow], withheld: frozenset[int]) -> dict[int, releases.Withholding]:
        """The cells the release log withholds, and why (federation/query/releases.py): still
        open, or overlapping a sub-cell released to this agreement line with other content.
        Logs the sub-cells of the cells it lets through, checked and logged in one transaction,
        and the window as a run (the high-water mark) if every cell of it was released. A
        window asked again whose run holds the digest of its sub-cells now is let through
        without the check: it releases only content released before."""
        if not grant.agreement_id:
            return {}
        now = self.hub.clock.now_ms()
        line = ReleaseLine(grant.asker_id, spec.dataset, spec.metric)
        grain = policy.finest_grain(grant.smallest_bucket)
        exact = replace(request, clamp=None, max_contributions=None)
        outcome: dict[int, releases.Withholding] = {}
        extents: dict[int, tuple[int, int]] = {}
        for cell in cells:
            start = cell.bucket_start_ms
            end = spec.end_ms if spec.bucket == "window" else min(next_bucket(spec.bucket, start), spec.end_ms)
            if end > now - releases.SETTLE_MS:
                outcome[start] = releases.Withholding.STILL_OPEN
            elif start not in withheld and cell.contributors >= grant.min_group_size:
                extents[start] = (start, end)
        if not extents:
            return outcome
        spans = buckets(grain, spec.start_ms, spec.end_ms)
        scheme = releases.scheme_for(grain)
        if scheme == releases.READINGS:
            subcells = await self._subcell_readings(exact, spans)
        else:
            subcells = await self._subcell_summaries(replace(exact, bucket=grain), spans)
        releasing = self._matching_subcells(cells, extents, spans, subcells, outcome)
        if self.release_hooks.before_check:
            await self.release_hooks.before_check()
        digest = releases.run_digest(subcells[span].fingerprint for span in spans)
        run = await self.hub.storage.read(lambda s: s.released_run(line, scheme, grain, spec.start_ms, spec.end_ms))
        if run is not None and run.digest == digest:
            # The high-water mark: this window was released whole, and every sub-cell of it holds
            # the same content now: what is released now was released before, nothing to check.
            await self._audit_withheld(grant, spec, outcome)
            return outcome

        earlier = await self.hub.storage.read(lambda s: s.released_overlapping(line, spec.start_ms, spec.end_ms))
        current: dict[releases.ExtentKey, bytes] = {(scheme, s, e): sub.fingerprint for (s, e), sub in subcells.items()}
        current.update(await self._fingerprints_of(exact, [r for r in earlier if (r.scheme, r.start_ms, r.end_ms) not in current]))
        candidates = [releases.Candidate(start, *extents[start], tuple(
            ReleasedSubcell(s, e, scheme, grain, subcells[(s, e)].fingerprint, len(subcells[(s, e)].contributors), grant.agreement_id, now)
            for s, e in mine)) for start, mine in releasing.items()]

        def check_and_log(logged: list[ReleasedSubcell]) -> list[ReleasedSubcell]:
            refused, rows = releases.decide(candidates, current, logged)
            outcome.update(refused)
            return rows

        await self.hub.storage.write(lambda s: s.log_releases_checked(line, spec.start_ms, spec.end_ms, check_and_log))
        if not outcome and len(releasing) == len(cells):  # every cell released: the window is a run
            whole = ReleasedRun(scheme, grain, spec.start_ms, spec.end_ms, digest, now)
            await self.hub.storage.write(lambda s: s.log_release_run(line, whole))
        await self._audit_withheld(grant, spec, outcome)
        return outcome

    @staticmethod
    def _matching_subcells(cells: list[CellRow], extents: dict[int, tuple[int, int]], spans: list[tuple[int, int]],
                           subcells: dict[tuple[int, int], releases.SubcellReadings],
                           outcome: dict[int, releases.Withholding]) -> dict[int, list[tuple[int, int]]]:
        """The sub-cells of each cell to release, if its readings and contributors are those its
        sub-cells hold; a cell whose are not changed between the two reads (withheld, RACED)."""
        position = {start: i for i, (start, _) in enumerate(spans)}  # a cell is a run of whole sub-cells (policy)
        releasing: dict[int, list[tuple[int, int]]] = {}
        for cell in cells:
            if cell.bucket_start_ms not in extents:
                continue
            lo, hi = extents[cell.bucket_start_ms]
            mine = spans[position[lo]:position.get(hi, len(spans))]  # hi: the next cell's first sub-cell, or the window's end
            contents = [subcells[span] for span in mine]
            contributors = contents[0].contributors if len(contents) == 1 else set[str]().union(*(sub.contributors for sub in contents))
            if sum(sub.readings for sub in contents) != cell.count or len(contributors) != cell.contributors:
                outcome[cell.bucket_start_ms] = releases.Withholding.RACED  # a reading came or went between the two reads
            else:
                releasing[cell.bucket_start_ms] = mine
        return releasing

    async def _audit_withheld(self, grant: policy.Grant, spec: query_pb2.QuerySpec,
                              outcome: dict[int, releases.Withholding]) -> None:
        """One audit entry per query that the release log withheld cells of: why, and which."""
        if not outcome:
            return
        parts = []
        for why in releases.Withholding:
            starts = sorted(start for start, reason in outcome.items() if reason is why)
            if starts:
                shown = ", ".join(label(spec.bucket, start) for start in starts[:5]) + (", ..." if len(starts) > 5 else "")
                parts.append(f"{why.value}: {len(starts)} ({shown})")
        await self.federation.audit(grant.asker_id, "query.release_log", grant.agreement_id, "withheld",
                                    f"{describe(spec)}: " + "; ".join(parts))

    async def _audit_uncoarsened(self, grant: policy.Grant, spec: query_pb2.QuerySpec, starts: list[int]) -> None:
        """One audit entry per quantile query with cells withheld because a sub-cell of them
        (or, for a hub's own data, the cell) cannot be binned by the rule (partials.coarsen)."""
        if not starts or not grant.agreement_id:
            return
        shown = ", ".join(label(spec.bucket, start) for start in sorted(starts)[:5]) + (", ..." if len(starts) > 5 else "")
        grain = policy.finest_grain(grant.smallest_bucket)
        await self.federation.audit(grant.asker_id, "query.quantile", grant.agreement_id, "withheld",
                                    f"{describe(spec)}: {QUANTILE_UNCOARSENED}: {len(starts)} ({shown}); a {grain} of each holds "
                                    f"readings that cannot be binned by >= {partials.MIN_BIN_READINGS} readings of "
                                    f">= {partials.coarse_threshold(grant.min_group_size)} contributors")

    async def _contributions(self, request: AggregateRequest) -> dict[int, list[Contribution]]:
        return await self.hub.storage.read(lambda s: s.contributions(request))

    async def _subcell_readings(self, exact: AggregateRequest,
                                extents: list[tuple[int, int]]) -> dict[tuple[int, int], releases.SubcellReadings]:
        """The READINGS fingerprint, readings and contributors of each extent (disjoint, on whole
        hours), from one pass over the readings of their span, hour by hour."""
        hasher = releases.SubcellHasher(extents)
        if extents:
            span = replace(exact, start_ms=min(s for s, _ in extents), end_ms=max(e for _, e in extents))
            await self.hub.storage.read(lambda s: s.readings_by_hour(span, hasher.add))
        return hasher.result()

    async def _subcell_summaries(self, by_grain: AggregateRequest,
                                 extents: list[tuple[int, int]]) -> dict[tuple[int, int], releases.SubcellReadings]:
        """The SUBCELL fingerprint (per-contributor summaries), readings and contributors of each
        of `extents`: the buckets of `by_grain`'s bucket covering its window."""
        by_subcell = await self._contributions(by_grain)
        out = {}
        for extent in extents:
            added = by_subcell.get(extent[0], [])
            out[extent] = releases.SubcellReadings(releases.fingerprint(added), sum(c.readings for c in added),
                                                   {c.contributor for c in added})
        return out

    async def _fingerprints_of(self, exact: AggregateRequest, rows: list[ReleasedSubcell]) -> dict[releases.ExtentKey, bytes]:
        """Fingerprints, in the data now, of logged extents this query did not compute: of another
        grain than this query's (the line's terms changed their smallest bucket), or logged under
        an earlier scheme (per-contributor summaries; the old per-cell log)."""
        out: dict[releases.ExtentKey, bytes] = {}
        for grain in sorted({r.grain for r in rows if r.scheme == releases.READINGS}):
            extents = sorted({(r.start_ms, r.end_ms) for r in rows if r.scheme == releases.READINGS and r.grain == grain})
            readings = await self._subcell_readings(exact, extents)
            out.update({(releases.READINGS, s, e): sub.fingerprint for (s, e), sub in readings.items()})
        for grain in sorted({r.grain for r in rows if r.scheme == releases.SUBCELL}):
            same = [r for r in rows if r.scheme == releases.SUBCELL and r.grain == grain]
            wide = replace(exact, bucket=grain, start_ms=min(r.start_ms for r in same), end_ms=max(r.end_ms for r in same))
            contents = await self._contributions(wide)
            out.update({(r.scheme, r.start_ms, r.end_ms): releases.fingerprint(contents.get(r.start_ms, [])) for r in same})
        for r in rows:
            if r.scheme == releases.LEGACY:
                whole = replace(exact, bucket="window", start_ms=r.start_ms, end_ms=r.end_ms)
                contents = await self._contributions(whole)
                out[(r.scheme, r.start_ms, r.end_ms)] = releases.legacy_fingerprint(contents.get(r.start_ms, []))
        return out

    async def compute(self, signed: envelope_pb2.SignedRequest, spec: query_pb2.QuerySpec, asker_id: str,
                      retry: bool = False) -> Sealed:
        """This hub's partial answer, under its own agreement with the asker, sealed to the asker.
        `retry`: this hub received this signed query before; only a kept answer is sent."""
        check_shape(spec)
        check_releasable(spec)
        kept = await self._kept(signed, spec, asker_id, retry)
        if kept is not None:
            return kept
        evidences = await self.federation.ledger.all(asker_id)
        states = await self.federation.ledger.states()
        try:
            grant = policy.authorize(spec, asker_id, self.own_id, [(e, states[e.agreement_id]) for e in evidences])
            agreement = await self._agreement_document(grant.agreement_id)
            epsilon = (spec.epsilon or dp.default_epsilon(grant.dp_budget)) if grant.dp_budget else 0.0
            bounds = self._dp_bounds(spec) if epsilon else None
            charged = await self._spend(grant, epsilon, spec.dataset)
        except Rejected as refusal:
            await self.federation.audit(asker_id, "query.partial", "", refusal.reason.label, f"{describe(spec)}: {refusal.message}")
            raise
        try:
            sealed, suppressed, cells = await self._release(signed, spec, grant, epsilon, bounds)
        except BaseException:  # nothing was released: give the budget back (fail closed, not open)
            await self._refund(grant, charged)
            raise
        await self._keep(signed, asker_id, grant.agreement_id, sealed)
        await self.federation.audit(asker_id, "query.partial", grant.agreement_id, "ok",
                                    f"{describe(spec)}: {cells} cells, {suppressed} suppressed"
                                    + (f", epsilon {epsilon:g} spent" if epsilon else ""))
        return Sealed(sealed, grant.agreement_id, agreement)

    async def _agreement_document(self, agreement_id: str) -> bytes:
        """The co-signed agreement (serialized SignedTerms) an answer is given under, for the
        asker to check the partial's municipality against; b"" for a hub's own data."""
        if not agreement_id:
            return b""
        evidence = await self.federation.ledger.load(agreement_id)
        return evidence.to_document().signed_terms.SerializeToString() if evidence is not None else b""

    # -- retries of the same signed query (the module's docstring) ------------------------------
    async def _kept(self, signed: envelope_pb2.SignedRequest, spec: query_pb2.QuerySpec, asker_id: str,
                    retry: bool) -> Sealed | None:
        """The answer kept for exactly this signed query; None if it is new. A retry without a
        kept answer is refused."""
        digest = partials.query_digest(signed.payload)
        now_ms = self.hub.clock.now_ms()
        kept = await self.hub.storage.read(lambda s: s.kept_answer(asker_id, digest, now_ms))
        if kept is not None:
            agreement_id, sealed = kept
            await self.federation.audit(asker_id, "query.partial", agreement_id, "ok",
                                        f"{describe(spec)}: the same signed query again; its kept answer sent, nothing charged")
            return Sealed(sealed, agreement_id, await self._agreement_document(agreement_id))
        if retry:
            message = ("this query was already answered (replayed): its answer is not kept (still being computed, "
                       "or this hub stopped before keeping it); ask again with a new query")
            await self.federation.audit(asker_id, "query.partial", "", "replayed", f"{describe(spec)}: {message}")
            raise Rejected(Reason.ALREADY_EXISTS, message)
        return None

    async def _keep(self, signed: envelope_pb2.SignedRequest, asker_id: str, agreement_id: str, sealed: bytes) -> None:
        """Keep the sealed answer while the query can be sent again (its nonce's lifetime)."""
        digest = partials.query_digest(signed.payload)
        expires = envelope.parse(signed).issued_at_ms + 2 * envelope.MAX_CLOCK_SKEW_MS
        now_ms = self.hub.clock.now_ms()
        await self.hub.storage.write(lambda s: s.keep_answer(asker_id, digest, agreement_id, sealed, expires, now_ms))

    async def _release(self, signed: envelope_pb2.SignedRequest, spec: query_pb2.QuerySpec, grant: policy.Grant,
                       epsilon: float, bounds: tuple[float, float] | None) -> tuple[bytes, int, int]:
        request = AggregateRequest(spec.dataset, spec.metric, spec.start_ms, spec.end_ms, spec.bucket,
                                   grant.consent_purpose, clamp=bounds,
                                   max_contributions=grant.dp_max_contributions if epsilon else None)
        cells = await self.hub.storage.read(lambda s: s.aggregate(request))
        min_group_size = grant.min_group_size
        if epsilon and bounds:
            # Every bucket of the window is released (an absent one would tell it is empty) unless
            # its NOISY contributor count is below the group size; never decided on exact counts.
            # OpenDP's exact sampler is slow (bench/dp_noise.py: 0.1-0.4 ms a cell): off the event loop.
            noised = await asyncio.to_thread(dp.noisy_cells, dp.every_bucket(cells, spec), spec.aggregate, epsilon, bounds,
                                             grant.dp_max_contributions, grant.min_group_size)
            cells, withheld, min_group_size = noised.cells, noised.withheld, 0
        else:
            withheld = await self._cells_hiding_small_subcells(request, grant)
            withheld |= frozenset(await self._released_before(grant, spec, request, cells, withheld))
        group = self.hub.config.municipality if spec.group_by == "municipality" else "region"
        coarse, parts = await self._coarse_sketches(request, grant, cells) if spec.aggregate == "quantile" else (None, None)
        if coarse is not None:
            await self._audit_uncoarsened(grant, spec, [c.bucket_start_ms for c in cells
                                                        if c.bucket_start_ms not in coarse and c.bucket_start_ms not in withheld])
        # region-wide, the cells whose sub-cells' sketches go along: decided by the query and agreement alone
        grain = policy.finest_grain(grant.smallest_bucket) if grant.agreement_id else None
        digest = partials.query_digest(signed.payload)
        result = partials.build(digest, self.own_id, self.hub.config.municipality, grant.agreement_id, min_group_size, group,
                                cells, self.hub.clock.now_ms(), spec.aggregate, withheld, noisy=bool(epsilon), quantile=spec.quantile,
                                coarse=coarse, parts=parts, mixture=partials.mixture_cells(spec, grain))
        if epsilon:
            result.dp_budget_micro = dp.micro(grant.dp_budget)
            pooled = await self._budget_line(grant.agreement_id, grant.asker_id, [spec.dataset])
            result.dp_spent_micro = await self.hub.storage.read(lambda s: s.budget_spent(grant.agreement_id, pooled))
        identity = self.hub.identity  # once: the padding must fit the history the partial carries
        signed_partial = partials.sign_partial(identity, result).SerializeToString()
        size = partials.padded_size(spec, self.own_id, self.hub.config.municipality, grant.agreement_id, identity.key_history,
                                    grain)
        sealed = sealing.seal(signed_partial, spec.answer_key, digest, self.own_id, size)
        return sealed, sum(1 for c in result.cells if c.suppressed), len(result.cells)
