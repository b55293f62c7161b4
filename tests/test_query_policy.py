"""Provider-side query policy as pure functions, and the exactness of merging.

* federation.policy.authorize: for hypothesis-generated terms (built through federation.terms,
  so a hub would accept them), agreement evidence signed with real keys (a hub identity and a
  partner key) in every lifecycle state, and shape-valid queries, the provider grants exactly
  what an independent reading of the rules allows: never another purpose, aggregate, grouping,
  a bucket finer than `smallest_bucket`, a window longer than `longest_window_days` or not on
  the smallest bucket's boundaries, never a month or a year under an agreement whose smallest
  bucket is a week (a week is never cut by months), under a differential-privacy budget nothing
  but count, sum and mean with an epsilon of 0 or between 0.001 and the budget (and no epsilon
  at all without a budget), and never under an agreement that is not active. Every refusal is a
  `Rejected` naming the agreement and the rule. A hub's own data is always its own.
* federation.query_spec.check_shape: refuses exactly the malformed queries (oracle below).
* federation.partials.merge: merging per-hub partials equals computing on the union of the
  readings; a cell any hub withheld is withheld in the answer.
* node.sketch: quantiles within relative error alpha of the true value at that rank,
  merging is exact, and the SQL binning equals the Python binning.

The oracles here use datetime arithmetic and the documented rules, not the code under test.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sqlite3
import statistics
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from federation import agreements as ag
from federation import partials, policy
from federation import terms as terms_mod
from federation.partners import PartnerKey
from federation.query_spec import check_shape
from node import catalog, identity, sketch
from node.api.v1 import agreement_pb2, query_pb2
from node.errors import Reason, Rejected
from node.storage.base import CellRow

State = agreement_pb2.AgreementState
UTC = dt.UTC
HOUR_MS, DAY_MS = 3_600_000, 86_400_000
VALID_FROM = dt.datetime(2026, 1, 1, tzinfo=UTC)
VALID_UNTIL = dt.datetime(2027, 1, 1, tzinfo=UTC)
CREATED_MS = int(dt.datetime(2025, 12, 1, tzinfo=UTC).timestamp() * 1000)
INSIDE_MS = int(dt.datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
LATEST_MS = int(dt.datetime(2200, 1, 1, tzinfo=UTC).timestamp() * 1000)
# The documented vocabulary, written out (not imported) so a change to it is noticed.
AGGREGATES = ("count", "sum", "mean", "min", "max", "stddev", "quantile")
BUCKETS = ("hour", "day", "week", "month", "year", "window")  # finest first
GROUPS = ("municipality", "region")
PURPOSES = sorted(terms_mod.PURPOSES)
DP_AGGREGATES = ("count", "sum", "mean")  # the only aggregates released under a privacy budget
MIN_EPSILON = 0.001  # docs/querying.md 3.7: a smaller epsilon is refused, not answered with noise
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POLICY_SETTINGS = settings(SETTINGS, max_examples=500)  # off-by-one rules need many compliant-but-one queries


# -- parties with real keys -------------------------------------------------------------------------

@dataclass(frozen=True)
class Signer:
    party: agreement_pb2.Party
    key: Ed25519PrivateKey

    @property
    def id(self) -> str:
        return self.party.id


def hub_signer(name: str) -> Signer:
    hub = identity.generate()
    return Signer(agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=hub.hub_id_text,
                                      public_key=hub.public_key_raw, name=name), hub.identity_key)


def partner_signer(name: str) -> Signer:
    partner = PartnerKey(Ed25519PrivateKey.generate(), name)
    return Signer(agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_PARTNER, id=partner.partner_id,
                                      public_key=partner.public_key, name=name), partner.key)


PROVIDER = hub_signer("Stavanger")
ASKERS = {"hub": hub_signer("Bergen"), "partner": partner_signer("Universitetet i Stavanger")}
OUTSIDER = hub_signer("Porsgrunn")


# -- an independent reading of the rules ----------------------------------------------------------

def on_boundary(grain: str, ms: int) -> bool:
    """Is `ms` the start of an hour/day/ISO week/month/year (UTC)? A whole window has none."""
    if grain == "window":
        return True
    if ms % 1000:
        return False
    t = dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(milliseconds=ms)
    checks = {
        "hour": (t.minute, t.second) == (0, 0),
        "day": (t.hour, t.minute, t.second) == (0, 0, 0),
    }
    checks["week"] = checks["day"] and t.weekday() == 0
    checks["month"] = checks["day"] and t.day == 1
    checks["year"] = checks["month"] and t.month == 1
    return checks[grain]


# Rule -> what the refusal message must say about it.
RULE_WORDS = {
    "purpose": ("purpose",), "aggregate": ("aggregate",), "grouping": ("grouping",), "time grouping": ("grouping by time",),
    "bucket": ("finer than",), "window length": ("longer than",), "alignment": ("boundaries",),
    "weeks in months": ("whole weeks",), "region-wide stddev": ("region-wide stddev",),
    "dp": ("differential-privacy", "budget of"), "epsilon without a budget": ("no differential-privacy budget",),
}


def epsilon_allowed(epsilon: float, budget: float) -> bool:
    """0 spends the default share; otherwise at least MIN_EPSILON and at most the budget."""
    return epsilon == 0 or MIN_EPSILON <= epsilon <= budget


def broken_rules(spec: query_pb2.QuerySpec, t: agreement_pb2.AgreementTerms) -> set[str]:
    """Every rule of `t` the (shape-valid) query breaks."""
    broken = set()
    if spec.purpose_code != t.purpose_code:
        broken.add("purpose")
    if spec.aggregate not in t.aggregates:
        broken.add("aggregate")
    # Merging a stddev across hubs releases each hub's sum: only where the mean or sum is granted.
    if spec.aggregate == "stddev" and spec.group_by == "region" and not {"mean", "sum"} & set(t.aggregates):
        broken.add("region-wide stddev")
    if spec.group_by == "municipality" and "municipality" not in t.group_by:
        broken.add("grouping")
    if spec.bucket != "window" and "time_bucket" not in t.group_by:
        broken.add("time grouping")
    if BUCKETS.index(spec.bucket) < BUCKETS.index(t.smallest_bucket):
        broken.add("bucket")
    if spec.end_ms - spec.start_ms > t.longest_window_days * DAY_MS:
        broken.add("window length")
    grain = "day" if t.smallest_bucket == "window" else t.smallest_bucket
    if not (on_boundary(grain, spec.start_ms) and on_boundary(grain, spec.end_ms)):
        broken.add("alignment")
    # A month or a year is not made of whole weeks: its first or last week would be cut.
    if t.smallest_bucket == "week" and spec.bucket in ("month", "year"):
        broken.add("weeks in months")
    if t.dp_epsilon > 0 and (spec.aggregate not in DP_AGGREGATES or not epsilon_allowed(spec.epsilon, t.dp_epsilon)):
        broken.add("dp")
    if t.dp_epsilon == 0 and spec.epsilon:
        broken.add("epsilon without a budget")
    return broken


def covers(spec: query_pb2.QuerySpec, t: agreement_pb2.AgreementTerms) -> bool:
    return spec.dataset in t.datasets and spec.metric in t.metrics


def shape_problems(spec: query_pb2.QuerySpec) -> list[str]:
    """What is wrong with a query before any agreement is looked at (empty: nothing)."""
    ds = catalog.DATASETS.get(spec.dataset)
    problems = []
    if ds is None:
        problems.append("dataset")
    elif spec.metric not in ds.metrics:
        problems.append("metric")
    if spec.aggregate not in AGGREGATES:
        problems.append("aggregate")
    elif spec.aggregate == "quantile" and not 0 < spec.quantile < 1:
        problems.append("quantile")
    if spec.bucket not in BUCKETS:
        problems.append("bucket")
    if spec.group_by not in GROUPS:
        problems.append("grouping")
    if not spec.purpose_code:
        problems.append("purpose")
    if spec.deadline_ms > 60_000:
        problems.append("deadline")
    if not (spec.epsilon == 0 or MIN_EPSILON <= spec.epsilon <= 10):  # docs/querying.md 3.7 and 5: NaN fails both
        problems.append("epsilon")
    if any(not re.fullmatch(r"[0-9]{4}", m) for m in spec.municipalities):
        problems.append("municipality")
    if spec.start_ms >= spec.end_ms:
        problems.append("empty window")
    elif spec.start_ms < 0 or spec.end_ms > LATEST_MS:
        problems.append("range")
    elif spec.end_ms - spec.start_ms > 3660 * DAY_MS:
        problems.append("ten years")
    elif spec.bucket in BUCKETS and not (on_boundary(spec.bucket, spec.start_ms) and on_boundary(spec.bucket, spec.end_ms)):
        problems.append("alignment")
    return problems


# -- strategies -----------------------------------------------------------------------------------

def subsets(values, min_size: int = 0):
    return st.lists(st.sampled_from(list(values)), min_size=min_size, max_size=len(values), unique=True)


@st.composite
def terms_for(draw, consumer: Signer, provider: Signer = PROVIDER, **fixed) -> agreement_pb2.AgreementTerms:
    """Terms a hub would accept; `fixed` pins [data] fields (e.g. smallest_bucket="week")."""
    candidates = sorted(catalog.DATASETS)
    if fixed.get("dp_epsilon") == 0.0:  # a personal dataset requires a budget (issue 9): only others
        candidates = [d for d in candidates if catalog.dataset(d).classification is not catalog.Classification.PERSONAL]
    datasets = draw(subsets(candidates, 1).map(lambda d: d[:2]))
    metrics = draw(subsets(sorted({m for d in datasets for m in catalog.dataset(d).metrics}), 1))
    personal = any(catalog.dataset(d).classification is catalog.Classification.PERSONAL for d in datasets)
    doc = {
        "agreement_id": f"urn:uuid:{draw(st.uuids())}",
        "purpose": {"code": draw(st.sampled_from(PURPOSES)), "description": "Generated for a property test"},
        "data": {
            "datasets": datasets, "metrics": metrics,
            "aggregates": draw(subsets(("count", "sum", "mean") if personal else AGGREGATES, 1)),
            "group_by": draw(subsets(("municipality", "time_bucket"))),
            "smallest_bucket": draw(st.sampled_from(BUCKETS)),
            "longest_window_days": draw(st.sampled_from([1, 7, 31, 92, 366, 3660]) | st.integers(1, 3660)),
            "min_group_size": draw(st.integers(1, 25)),
            "consent_required": personal or draw(st.booleans()),
            "queries_per_day": draw(st.integers(1, 10_000)),
            "dp_epsilon": 0.5 if personal else draw(st.sampled_from([0.0, 0.0, 0.0, 0.5, MIN_EPSILON, 4.0])),
        } | fixed,
        "validity": {"from": VALID_FROM, "until": VALID_UNTIL},
    }
    if doc["data"]["dp_epsilon"]:  # issue 9: a DP budget declares the contribution bound, and releases count/sum/mean only
        doc["data"]["dp_max_contributions"] = draw(st.integers(1, 24))
        doc["data"]["aggregates"] = [a for a in doc["data"]["aggregates"] if a in ("count", "sum", "mean")] or ["count"]
    return terms_mod.from_toml(doc, provider.party, consumer.party, now_ms=CREATED_MS)


# Lifecycle -> (who signed, who revoked, when it is now)
LIFECYCLES = {
    "proposed by the provider": (("provider",), (), INSIDE_MS),
    "proposed by the consumer": (("consumer",), (), INSIDE_MS),
    "active": (("provider", "consumer"), (), INSIDE_MS),
    "active, last millisecond": (("provider", "consumer"), (), int(VALID_UNTIL.timestamp() * 1000) - 1),
    "pending": (("provider", "consumer"), (), int(VALID_FROM.timestamp() * 1000) - 1),
    "expired": (("provider", "consumer"), (), int(VALID_UNTIL.timestamp() * 1000)),
    "revoked by the provider": (("provider", "consumer"), ("provider",), INSIDE_MS),
    "revoked by the consumer": (("provider", "consumer"), ("consumer",), INSIDE_MS),
    "revoked while proposed": (("provider",), ("provider",), INSIDE_MS),
}


def evidence_of(terms: agreement_pb2.AgreementTerms, signers: dict[str, Signer], lifecycle: str) -> tuple[ag.Evidence, int]:
    """Evidence signed with the parties' real keys, and its state at the lifecycle's `now`."""
    signed_by, revoked_by, now = LIFECYCLES[lifecycle]
    first, *rest = signed_by
    evidence = ag.propose(terms, signers[first].id, signers[first].key)
    for role in rest:
        evidence = ag.countersign(evidence, signers[role].id, signers[role].key)
    for role in revoked_by:
        evidence = ag.revoke(evidence, signers[role].id, signers[role].key, "property test", now - 1)
    return evidence, ag.state(evidence, now)


GRAINS = ("hour", "day", "week", "month", "year")
UNIT_MS = {"hour": HOUR_MS, "day": DAY_MS, "week": 7 * DAY_MS}


def step(grain: str, ms: int, n: int) -> int:
    """`n` grains after the boundary `ms`."""
    if grain in UNIT_MS:
        return ms + n * UNIT_MS[grain]
    t = dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(milliseconds=ms)
    months = t.year * 12 + t.month - 1 + n * (12 if grain == "year" else 1)
    return int(dt.datetime(months // 12, months % 12 + 1, 1, tzinfo=UTC).timestamp() * 1000)


@st.composite
def boundaries(draw, grain: str, low_year: int = 2018, high_year: int = 2027) -> int:
    t = dt.datetime(draw(st.integers(low_year, high_year)), 1, 1, tzinfo=UTC)
    ms = int(t.timestamp() * 1000)
    if grain == "year":
        return ms
    if grain == "month":
        return step("month", ms, draw(st.integers(0, 11)))
    if grain == "week":
        return ms + ((7 - t.weekday()) % 7) * DAY_MS + draw(st.integers(0, 51)) * 7 * DAY_MS
    return ms + draw(st.integers(0, 364 * DAY_MS // UNIT_MS[grain])) * UNIT_MS[grain]


# Boundaries of these grains are also boundaries of the bucket (a whole window has none).
ALIGNS_TO = {"hour": GRAINS, "day": ("day", "week", "month", "year"), "week": ("week",), "month": ("month", "year"),
             "year": ("year",), "window": GRAINS}


@st.composite
def windows(draw, near_days: int | None = None, bucket: str = "window") -> tuple[int, int, str]:
    """(start, end, grain): both ends on `grain` boundaries, which are also `bucket` boundaries;
    often close to `near_days` long."""
    grain = draw(st.sampled_from(ALIGNS_TO[bucket]))
    start = draw(boundaries(grain))
    target_days = draw(st.integers(1, 4000) if near_days is None else
                       (st.sampled_from([near_days - 1, near_days, near_days + 1]) | st.integers(1, 4000)))
    per_day = {"hour": 24, "day": 1, "week": 1 / 7, "month": 1 / 30.44, "year": 1 / 365.25}[grain]
    n = max(1, round(target_days * per_day) + draw(st.integers(-1, 1)))
    return start, step(grain, start, n), grain


UNIT_DAYS = {"hour": 1 / 24, "day": 1, "week": 7, "month": 31, "year": 366}


@st.composite
def compliant(draw, terms: agreement_pb2.AgreementTerms) -> tuple[query_pb2.QuerySpec, str]:
    """A query written to respect every rule of `terms` (the oracle still judges it), and the
    grain its window is aligned to."""
    dataset = draw(st.sampled_from([d for d in terms.datasets if set(catalog.dataset(d).metrics) & set(terms.metrics)]))
    grain = "day" if terms.smallest_bucket == "window" else terms.smallest_bucket
    allowed = BUCKETS[BUCKETS.index(terms.smallest_bucket):] if "time_bucket" in terms.group_by else ("window",)
    options = [(b, g) for b in allowed for g in set(ALIGNS_TO[b]) & set(ALIGNS_TO[grain])
               if UNIT_DAYS[g] <= terms.longest_window_days]
    assume(options)
    bucket, grain = draw(st.sampled_from(sorted(options)))
    start = draw(boundaries(grain))
    longest_n = max(1, int(terms.longest_window_days // UNIT_DAYS[grain]))
    n = draw(st.integers(1, longest_n) | st.just(longest_n))
    end = step(grain, start, n)
    while end - start > terms.longest_window_days * DAY_MS:  # months and years vary in length
        n -= 1
        end = step(grain, start, n)
    assume(n >= 1)
    aggregates = [a for a in terms.aggregates if a in DP_AGGREGATES or not terms.dp_epsilon]
    assume(aggregates)
    aggregate = draw(st.sampled_from(aggregates))
    epsilon = draw(st.just(0.0) | st.just(terms.dp_epsilon) | st.floats(MIN_EPSILON, terms.dp_epsilon)) if terms.dp_epsilon else 0.0
    spec = query_pb2.QuerySpec(
        dataset=dataset, metric=draw(st.sampled_from([m for m in terms.metrics if m in catalog.dataset(dataset).metrics])),
        aggregate=aggregate, quantile=draw(st.floats(0.01, 0.99)) if aggregate == "quantile" else 0.0,
        start_ms=start, end_ms=end, bucket=bucket,
        group_by=draw(st.sampled_from(["municipality", "region"] if "municipality" in terms.group_by else ["region"])),
        purpose_code=terms.purpose_code, epsilon=epsilon,
    )
    return spec, grain


def compliant_specs(terms: agreement_pb2.AgreementTerms):
    return compliant(terms).map(lambda found: found[0])


# 1 January and other 1sts that are Mondays: the only windows a month query under a week agreement could have.
MONDAY_FIRSTS = [int(dt.datetime(y, m, 1, tzinfo=UTC).timestamp() * 1000)
                 for y in range(2018, 2028) for m in range(1, 13) if dt.date(y, m, 1).weekday() == 0]


@st.composite
def one_rule_broken(draw, terms: agreement_pb2.AgreementTerms, rules: tuple[str, ...] = tuple(RULE_WORDS)) -> query_pb2.QuerySpec:
    """A compliant query with exactly one thing changed, as little as possible, to break a rule."""
    spec, grain = draw(compliant(terms))
    rule = draw(st.sampled_from(rules))

    def on_window_boundaries(bucket: str) -> bool:
        return on_boundary(bucket, spec.start_ms) and on_boundary(bucket, spec.end_ms)

    if rule == "purpose":
        spec.purpose_code = draw(st.sampled_from([p for p in PURPOSES if p != terms.purpose_code]))
    elif rule == "aggregate":
        others = [a for a in AGGREGATES if a not in terms.aggregates]
        assume(others)
        spec.aggregate, spec.quantile = draw(st.sampled_from(others)), 0.5
    elif rule == "region-wide stddev":  # a stddev the terms grant, region-wide, without mean or sum
        assume("stddev" in terms.aggregates and not {"mean", "sum"} & set(terms.aggregates))
        spec.aggregate, spec.quantile, spec.group_by = "stddev", 0.0, "region"
    elif rule == "grouping":
        assume("municipality" not in terms.group_by)
        spec.group_by = "municipality"
    elif rule in ("time grouping", "bucket"):
        finer = BUCKETS[:-1] if rule == "time grouping" else BUCKETS[:BUCKETS.index(terms.smallest_bucket)]
        candidates = [b for b in finer if on_window_boundaries(b)]
        assume(candidates and (rule == "bucket" or "time_bucket" not in terms.group_by))
        spec.bucket = draw(st.sampled_from(candidates))
    elif rule == "weeks in months":  # a month bucket whose window starts and ends on Mondays
        assume(terms.smallest_bucket == "week" and "time_bucket" in terms.group_by)
        pairs = [(a, b) for a in MONDAY_FIRSTS for b in MONDAY_FIRSTS if 0 < b - a <= terms.longest_window_days * DAY_MS]
        assume(pairs)
        spec.start_ms, spec.end_ms = draw(st.sampled_from(pairs))
        spec.bucket = draw(st.sampled_from(["month", "year"] if all(on_boundary("year", t) for t in (spec.start_ms, spec.end_ms))
                                           else ["month"]))
    elif rule == "dp":  # an aggregate the budget does not release, or an epsilon outside it
        assume(terms.dp_epsilon > 0)
        unreleased = [a for a in terms.aggregates if a not in DP_AGGREGATES]
        if unreleased and draw(st.booleans()):
            spec.aggregate = draw(st.sampled_from(unreleased))
            spec.quantile = 0.5 if spec.aggregate == "quantile" else 0.0
        else:
            spec.epsilon = draw(st.sampled_from([math.nextafter(terms.dp_epsilon, math.inf), terms.dp_epsilon * 2,
                                                 MIN_EPSILON / 2, math.nextafter(MIN_EPSILON, 0), 1e-9]))
            assume(not epsilon_allowed(spec.epsilon, terms.dp_epsilon))
    elif rule == "epsilon without a budget":
        assume(terms.dp_epsilon == 0)
        spec.epsilon = draw(st.sampled_from([1e-9, MIN_EPSILON, 0.5]) | st.floats(1e-6, 10))
    elif rule == "window length":  # one grain more than allowed
        while spec.end_ms - spec.start_ms <= terms.longest_window_days * DAY_MS:
            spec.end_ms = step(grain, spec.end_ms, 1)
    else:  # the same length, shifted off the smallest bucket's boundaries (the whole window has none)
        shift = 60_000 if grain == "hour" else HOUR_MS
        spec.bucket, spec.start_ms, spec.end_ms = "window", spec.start_ms + shift, spec.end_ms + shift
    return spec


@st.composite
def nearby_specs(draw, terms: agreement_pb2.AgreementTerms) -> query_pb2.QuerySpec:
    """Queries mostly within the terms' vocabulary, often just outside it."""
    def pick(allowed, everything):
        return draw(st.sampled_from(list(allowed)) if allowed and draw(st.booleans()) else st.sampled_from(list(everything)))

    dataset = pick(terms.datasets, sorted(catalog.DATASETS))
    metrics = catalog.dataset(dataset).metrics
    metric = pick([m for m in terms.metrics if m in metrics], sorted(metrics))
    aggregate = pick(terms.aggregates, AGGREGATES)
    bucket = pick(BUCKETS[BUCKETS.index(terms.smallest_bucket):], BUCKETS)
    start, end, _ = draw(windows(terms.longest_window_days, bucket))
    return query_pb2.QuerySpec(
        dataset=dataset, metric=metric, aggregate=aggregate,
        quantile=draw(st.floats(0.01, 0.99)) if aggregate == "quantile" else 0.0,
        start_ms=start, end_ms=end, bucket=bucket, group_by=draw(st.sampled_from(GROUPS)),
        purpose_code=pick([terms.purpose_code], PURPOSES),
        epsilon=draw(st.sampled_from([0.0, 0.0, MIN_EPSILON / 2, MIN_EPSILON, 0.5, 5.0])),
    )


def specs_for(terms: agreement_pb2.AgreementTerms):
    """Shape-valid queries (the ones the provider's policy gets to see): compliant ones, ones that
    break one rule by a hair, and ones nearby."""
    return (compliant_specs(terms) | one_rule_broken(terms) | nearby_specs(terms)).filter(lambda spec: not shape_problems(spec))


# -- authorize --------------------------------------------------------------------------------------

def assert_refusal(refusal: Rejected, terms: agreement_pb2.AgreementTerms, rules: set[str]) -> None:
    assert isinstance(refusal, Rejected)
    assert terms.agreement_id in refusal.message, refusal.message
    # Asking for epsilon where there is no budget is a malformed query, not a permission.
    invalid = rules == {"epsilon without a budget"}
    assert refusal.reason is (Reason.INVALID_REQUEST if invalid else Reason.PERMISSION_DENIED), refusal
    assert any(word in refusal.message for r in rules for word in RULE_WORDS[r]), (rules, refusal.message)


def assert_grant(grant: policy.Grant, spec: query_pb2.QuerySpec, terms: agreement_pb2.AgreementTerms) -> None:
    personal = catalog.dataset(spec.dataset).classification is catalog.Classification.PERSONAL
    assert grant == policy.Grant(
        agreement_id=terms.agreement_id, min_group_size=terms.min_group_size,
        consent_purpose=terms.purpose_code if (terms.consent_required or personal) else None,
        queries_per_day=terms.queries_per_day, smallest_bucket=terms.smallest_bucket, dp_budget=terms.dp_epsilon,
        dp_max_contributions=terms.dp_max_contributions, asker_id=terms.consumer.id,
    )


# Active agreements are where the rules matter: weight them up.
lifecycles = st.sampled_from(sorted(LIFECYCLES)) | st.sampled_from(["active", "active, last millisecond"])


@POLICY_SETTINGS
@given(st.data(), st.sampled_from(sorted(ASKERS)), lifecycles)
def test_authorize_grants_exactly_what_one_agreement_allows(data, asker_kind, lifecycle):
    asker = ASKERS[asker_kind]
    terms = data.draw(terms_for(asker))
    evidence, state = evidence_of(terms, {"provider": PROVIDER, "consumer": asker}, lifecycle)
    spec = data.draw(specs_for(terms))
    rules = broken_rules(spec, terms)
    event(f"{ag.STATE_NAMES[state]}, covered={covers(spec, terms)}, broken={sorted(rules)}")
    try:
        grant = policy.authorize(spec, asker.id, PROVIDER.id, [(evidence, state)])
    except Rejected as refusal:
        if not covers(spec, terms):
            assert refusal.reason is Reason.PERMISSION_DENIED
            assert f"{spec.dataset}/{spec.metric}" in refusal.message and asker.id in refusal.message
        elif state != State.AGREEMENT_STATE_ACTIVE:
            assert refusal.reason is Reason.PERMISSION_DENIED
            assert f"{terms.agreement_id} is {ag.STATE_NAMES[state]}" in refusal.message, refusal.message
        else:
            assert rules, f"refused a query the terms allow: {refusal}"
            assert_refusal(refusal, terms, rules)
        return
    assert state == State.AGREEMENT_STATE_ACTIVE, f"granted under a {ag.STATE_NAMES[state]} agreement"
    assert covers(spec, terms) and not rules, f"granted {spec} although it breaks {rules}"
    assert_grant(grant, spec, terms)


# Who an agreement is between, seen from PROVIDER answering ASKER: only the first counts.
PAIRS = {
    "provider to asker": ("provider", "asker"),
    "provider to someone else": ("provider", "outsider"),
    "asker to provider (reversed)": ("asker", "provider"),
    "someone else to asker": ("outsider", "asker"),
}


@POLICY_SETTINGS
@given(st.data(), st.lists(st.tuples(st.sampled_from(sorted(PAIRS)) | st.just("provider to asker"), lifecycles), min_size=1, max_size=4))
def test_authorize_uses_only_an_active_agreement_between_the_provider_and_the_asker(data, held):
    asker = ASKERS["hub"]  # a hub, so that it can also be a provider
    people = {"provider": PROVIDER, "asker": asker, "outsider": OUTSIDER}
    agreements, relevant = [], []
    for pair, lifecycle in held:
        provider_role, consumer_role = PAIRS[pair]
        parties = {"provider": people[provider_role], "consumer": people[consumer_role]}
        terms = data.draw(terms_for(parties["consumer"], parties["provider"]))
        evidence, state = evidence_of(terms, parties, lifecycle)
        agreements.append((evidence, state))
        if pair == "provider to asker":
            relevant.append((terms, state))
    source = [t for t, _ in relevant] if relevant and data.draw(st.booleans()) else [e.terms for e, _ in agreements]
    spec = data.draw(specs_for(data.draw(st.sampled_from(source))))
    allowing = {t.agreement_id: t for t, s in relevant
                if s == State.AGREEMENT_STATE_ACTIVE and covers(spec, t) and not broken_rules(spec, t)}
    event(f"allowed by {len(allowing)} of {len(agreements)}")
    try:
        grant = policy.authorize(spec, asker.id, PROVIDER.id, agreements)
    except Rejected as refusal:
        assert not allowing, f"refused although {sorted(allowing)} allow it: {refusal}"
        assert refusal.reason in (Reason.PERMISSION_DENIED, Reason.INVALID_REQUEST)
        named = [t.agreement_id for t, s in relevant if covers(spec, t)]
        if named:
            assert any(aid in refusal.message for aid in named), refusal.message
        else:
            assert PROVIDER.id in refusal.message and asker.id in refusal.message
        return
    assert grant.agreement_id in allowing, f"granted under {grant.agreement_id}, which does not allow {spec}"
    assert_grant(grant, spec, allowing[grant.agreement_id])


@SETTINGS
@given(st.data(), lifecycles)
def test_a_hub_always_has_its_own_data_and_nothing_else_changes_that(data, lifecycle):
    terms = data.draw(terms_for(ASKERS["hub"]))
    evidence, state = evidence_of(terms, {"provider": PROVIDER, "consumer": ASKERS["hub"]}, lifecycle)
    spec = data.draw(specs_for(terms))
    for held in ([], [(evidence, state)]):
        assert policy.authorize(spec, PROVIDER.id, PROVIDER.id, held) == policy.Grant("", 1, None, None, "window")


# For each rule, [data] fields under which a query can break it alone.
RULE_TERMS = {
    "purpose": {}, "aggregate": {}, "grouping": {"group_by": ["time_bucket"]},
    "time grouping": {"group_by": ["municipality"]}, "bucket": {"smallest_bucket": "day", "group_by": ["time_bucket"]},
    "window length": {"longest_window_days": 92}, "alignment": {"smallest_bucket": "day"},
    "weeks in months": {"smallest_bucket": "week", "group_by": ["time_bucket"], "longest_window_days": 3660},
    "dp": {"dp_epsilon": 0.5}, "epsilon without a budget": {"dp_epsilon": 0.0},
    "region-wide stddev": {"aggregates": ["stddev", "count"], "dp_epsilon": 0.0},
}


@settings(SETTINGS, max_examples=60)
@pytest.mark.parametrize("rule", sorted(RULE_WORDS))
@given(data=st.data())
def test_each_rule_broken_alone_is_refused_naming_it(rule, data):
    """Every rule, DP ones included, is exercised on its own (the broad tests above draw them
    among many): removing any one check from federation/policy.py fails its case here."""
    asker = ASKERS[data.draw(st.sampled_from(sorted(ASKERS)))]
    terms = data.draw(terms_for(asker, **RULE_TERMS[rule]))
    evidence, state = evidence_of(terms, {"provider": PROVIDER, "consumer": asker}, "active")
    spec = data.draw(one_rule_broken(terms, (rule,)).filter(lambda spec: not shape_problems(spec)))
    rules = broken_rules(spec, terms)
    assert rule in rules, (rule, rules, spec)
    with pytest.raises(Rejected) as refusal:
        policy.authorize(spec, asker.id, PROVIDER.id, [(evidence, state)])
    assert_refusal(refusal.value, terms, rules)


@pytest.mark.parametrize("bucket", ["month", "year"])
def test_a_week_agreement_never_releases_months_even_between_mondays(bucket):
    """2018-01-01 and 2024-01-01 are Mondays and 1sts of January: aligned to weeks, months and
    years, and still refused, since the bucket would cut the weeks around each month's start."""
    asker = ASKERS["partner"]
    terms = terms_mod.from_toml({
        "agreement_id": "urn:uuid:00000000-0000-4000-8000-000000000007",
        "purpose": {"code": "research", "description": "Weeks, never months"},
        "data": {"datasets": ["air_quality"], "metrics": ["pm25"], "aggregates": ["mean"], "group_by": ["time_bucket"],
                 "smallest_bucket": "week", "longest_window_days": 3660, "min_group_size": 1, "queries_per_day": 10},
        "validity": {"from": VALID_FROM, "until": VALID_UNTIL},
    }, PROVIDER.party, asker.party, now_ms=CREATED_MS)
    evidence, state = evidence_of(terms, {"provider": PROVIDER, "consumer": asker}, "active")
    start, end = (int(dt.datetime(y, 1, 1, tzinfo=UTC).timestamp() * 1000) for y in (2018, 2024))
    spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", bucket=bucket, group_by="region",
                               start_ms=start, end_ms=end, purpose_code="research")
    assert not shape_problems(spec) and broken_rules(spec, terms) == {"weeks in months"}
    with pytest.raises(Rejected, match="whole weeks"):
        policy.authorize(spec, asker.id, PROVIDER.id, [(evidence, state)])
    for allowed in ("week", "window"):  # the same window by week or as a whole is released
        spec.bucket = allowed
        assert policy.authorize(spec, asker.id, PROVIDER.id, [(evidence, state)]).agreement_id == terms.agreement_id


def test_with_no_agreement_at_all_the_refusal_names_both_parties():
    spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", bucket="day", group_by="region",
                               start_ms=0, end_ms=DAY_MS, purpose_code="research")
    with pytest.raises(Rejected) as err:
        policy.authorize(spec, ASKERS["partner"].id, PROVIDER.id, [])
    assert err.value.reason is Reason.PERMISSION_DENIED
    assert PROVIDER.id in err.value.message and ASKERS["partner"].id in err.value.message


# -- check_shape ------------------------------------------------------------------------------------

TRICKY_MUNICIPALITIES = ["1103", "0301", "110", "11033", "11a3", " 110", "١١٠٣", "¹¹⁰³", "１１０３", ""]
any_text = st.text(max_size=12)


@st.composite
def any_specs(draw) -> query_pb2.QuerySpec:
    """Queries of every shape: well-formed ones and ones wrong in one or more fields."""
    dataset = draw(st.sampled_from(sorted(catalog.DATASETS)) | any_text)
    known = sorted(catalog.DATASETS[dataset].metrics) if dataset in catalog.DATASETS else ["pm25"]
    all_metrics = sorted({m for d in catalog.DATASETS.values() for m in d.metrics})
    bucket = draw(st.sampled_from(BUCKETS) | st.sampled_from(["", "minute", "Day", "sensor"]))
    grain = bucket if bucket in GRAINS else draw(st.sampled_from(GRAINS))
    start, end, _ = draw(windows())
    if draw(st.booleans()):  # on the bucket's boundaries, then perhaps nudged off them
        start = draw(boundaries(grain))
        end = step(grain, start, draw(st.integers(0, 40)))
        start += draw(st.sampled_from([0, 0, 0, 1, -1, HOUR_MS, DAY_MS, -3660 * DAY_MS]))
        end += draw(st.sampled_from([0, 0, 0, 1, HOUR_MS, -HOUR_MS, DAY_MS]))
    if draw(st.integers(0, 9)) == 0:
        start, end = draw(st.integers(-2**63, 2**63 - 1)), draw(st.integers(-2**63, 2**63 - 1))
    aggregate = draw(st.sampled_from(AGGREGATES) | st.sampled_from(["median", "", "COUNT"]))
    return query_pb2.QuerySpec(
        dataset=dataset,
        metric=draw(st.sampled_from(known) | st.sampled_from(all_metrics) | any_text),
        aggregate=aggregate,
        quantile=draw(st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, 0.5, 1e-9])),
        start_ms=start, end_ms=end, bucket=bucket,
        group_by=draw(st.sampled_from(GROUPS) | st.sampled_from(["sensor", "time_bucket", "sensor_id", ""]) | any_text),
        municipalities=draw(st.lists(st.sampled_from(TRICKY_MUNICIPALITIES) | st.from_regex(r"\A[0-9]{4}\Z"), max_size=3)),
        purpose_code=draw(st.sampled_from(PURPOSES) | st.just("")),
        deadline_ms=draw(st.sampled_from([0, 1, 10_000, 60_000, 60_001]) | st.integers(0, 2**32 - 1)),
        epsilon=draw(st.sampled_from([0.0, 0.0, 0.0, MIN_EPSILON, MIN_EPSILON / 2, 10.0, math.nextafter(10.0, math.inf), -0.0])
                     | st.floats(allow_nan=True, allow_infinity=True)),
    )


@settings(max_examples=400, deadline=None)
@given(any_specs())
@example(query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", bucket="day", group_by="region",
                             start_ms=0, end_ms=DAY_MS, purpose_code="research", municipalities=["١١٠٣"]))
@example(query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", bucket="window", group_by="region",
                             start_ms=0, end_ms=LATEST_MS, purpose_code="research"))
@example(query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="count", bucket="year", group_by="region",
                             start_ms=int(dt.datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000),
                             end_ms=int(dt.datetime(2010, 1, 1, tzinfo=UTC).timestamp() * 1000), purpose_code="research"))
@example(query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="sum", bucket="day", group_by="region",
                             start_ms=0, end_ms=DAY_MS, purpose_code="research", epsilon=10.5))
@example(query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="sum", bucket="day", group_by="region",
                             start_ms=0, end_ms=DAY_MS, purpose_code="research", epsilon=MIN_EPSILON / 2))
@example(query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="sum", bucket="day", group_by="region",
                             start_ms=0, end_ms=DAY_MS, purpose_code="research", epsilon=math.nan))
def test_check_shape_refuses_exactly_the_malformed_queries(spec):
    problems = shape_problems(spec)
    try:
        check_shape(spec)
    except Rejected as refusal:
        assert refusal.reason is Reason.INVALID_REQUEST
        assert problems, f"refused a well-formed query: {refusal.message}"
        return
    assert not problems, f"accepted a query with {problems}: {spec}"


# -- merging partials -------------------------------------------------------------------------------

@dataclass(frozen=True)
class R:
    """One raw reading, as the test knows it."""
    hub: int
    sensor: int
    bucket: int
    value: float


readings_lists = st.lists(
    st.builds(R, st.integers(0, 2), st.integers(0, 3), st.integers(0, 3),
              st.integers(-4000, 4000).map(lambda v: v / 4)),  # quarters: every sum is exact
    min_size=1, max_size=60,
)
MUNICIPALITIES = ("1103", "4601", "4001")
T0 = int(dt.datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)


def cell_rows(readings: list[R]) -> list[CellRow]:
    """What a provider's SQL yields for its readings (one hub's), per day bucket."""
    rows = []
    for b in sorted({r.bucket for r in readings}):
        values = [r.value for r in readings if r.bucket == b]
        rows.append(CellRow(T0 + b * DAY_MS, len(values), sum(values), sum(v * v for v in values), min(values), max(values),
                            len({r.sensor for r in readings if r.bucket == b})))
    return rows


def direct(values: list[float], aggregate: str) -> float:
    return {
        "count": lambda: float(len(values)), "sum": lambda: math.fsum(values), "mean": lambda: math.fsum(values) / len(values),
        "min": lambda: min(values), "max": lambda: max(values),
        "stddev": lambda: statistics.stdev(values) if len(values) > 1 else 0.0,
    }[aggregate]()


@settings(max_examples=200, deadline=None)
@given(readings_lists, st.sampled_from(AGGREGATES), st.sampled_from(GROUPS), st.integers(1, 4), st.floats(0.01, 0.99))
def test_merged_partials_equal_the_aggregate_of_all_readings(readings, aggregate, group_by, k, q):
    # Quantiles are read from coarsened sketches, not exact: tests/privacy/test_privacy_quantiles.py.
    assume(aggregate != "quantile")
    spec = query_pb2.QuerySpec(aggregate=aggregate, quantile=q, group_by=group_by, bucket="day", start_ms=T0)
    built = []
    for hub in sorted({r.hub for r in readings}):
        mine = [r for r in readings if r.hub == hub]
        group = MUNICIPALITIES[hub] if group_by == "municipality" else "region"
        built.append(partials.build(b"d" * 32, f"hub{hub}", MUNICIPALITIES[hub], "", k, group,
                                    cell_rows(mine), 0, aggregate, quantile=q))
    rows = partials.merge(built, spec)

    def group_of(r: R) -> str:
        return MUNICIPALITIES[r.hub] if group_by == "municipality" else "region"

    cells = sorted({(T0 + r.bucket * DAY_MS, group_of(r)) for r in readings})
    assert [(row.bucket_start_ms, row.group) for row in rows] == cells
    for row in rows:
        mine = [r for r in readings if T0 + r.bucket * DAY_MS == row.bucket_start_ms and group_of(r) == row.group]
        # A hub withholds a cell with fewer than k sensors (for stddev, min and max with k >= 2:
        # max(k, 3) and max(k, 3) + 2, docs/privacy.md 2.5); then so does the answer.
        needed = k if k <= 1 else {"stddev": max(k, 3), "min": max(k, 3) + 2, "max": max(k, 3) + 2}.get(aggregate, k)
        withheld = any(len({r.sensor for r in mine if r.hub == h}) < needed for h in {r.hub for r in mine})
        assert row.bucket_label == dt.datetime.fromtimestamp(row.bucket_start_ms / 1000, UTC).strftime("%Y-%m-%d")
        if withheld:
            assert (row.suppressed, row.value, row.readings, row.contributors) == (True, 0.0, 0, 0)
            continue
        values = [r.value for r in mine]
        assert not row.suppressed
        assert row.readings == len(values)
        assert row.contributors == len({(r.hub, r.sensor) for r in mine})
        expected = direct(values, aggregate)
        if aggregate != "stddev":
            assert row.value == expected, (aggregate, row.value, expected)
        else:  # one pass over sums of squares: exact up to rounding relative to the sum of squares
            scale = math.fsum(v * v for v in values) / max(1, len(values) - 1)
            assert abs(row.value ** 2 - expected ** 2) <= 1e-12 * scale + 1e-12, (row.value, expected)


def test_one_withheld_part_withholds_the_merged_cell():
    spec = query_pb2.QuerySpec(aggregate="sum", group_by="region", bucket="day", start_ms=T0)
    big = CellRow(T0, count=100, sum=5000.0, sum_squares=1e6, min=1.0, max=99.0, contributors=50)
    small = CellRow(T0, count=3, sum=12.0, sum_squares=50.0, min=3.0, max=5.0, contributors=1)
    parts = [partials.build(b"d" * 32, f"hub{i}", m, "", 2, "region", [row], 0, "mean")
             for i, (m, row) in enumerate([("1103", big), ("4601", small), ("4001", big)])]
    assert [c.suppressed for c in parts[1].cells] == [True]
    assert parts[1].cells[0] == query_pb2.Cell(group="region", bucket_start_ms=T0, suppressed=True), "a withheld cell carries no values"
    for order in (parts, parts[::-1]):
        [row] = partials.merge(order, spec)
        assert (row.suppressed, row.value, row.readings, row.contributors) == (True, 0.0, 0, 0)
    [row] = partials.merge([parts[0], parts[2]], spec)
    assert (row.suppressed, row.value, row.contributors) == (False, 10000.0, 100)


# -- the quantile sketch ----------------------------------------------------------------------------

ALPHA = 0.01
values_lists = st.lists(
    st.floats(-1e9, 1e9, allow_nan=False).filter(lambda v: v == 0 or abs(v) >= sketch.MIN_INDEXABLE)
    | st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-9, -1e-9, 1e-6, 123.456]),
    min_size=1, max_size=200,
)


def sketch_of(values) -> sketch.Sketch:
    s = sketch.Sketch()
    for v in values:
        s.add(v)
    return s


@settings(max_examples=300, deadline=None)
@given(values_lists, st.floats(0, 1))
@example([0.0, 0.0, -5.0, 7.5, 1e6], 0.5)
@example([-3.0, -2.0, -1.0], 0.0)
@example([-3.0, -2.0, -1.0], 1.0)
def test_sketch_quantile_is_within_alpha_of_the_true_value_at_that_rank(values, q):
    s = sketch_of(values)
    assert s.alpha == ALPHA and s.count == len(values)
    true = sorted(values)[math.floor(q * (len(values) - 1))]
    estimate = s.quantile(q)
    assert abs(estimate - true) <= ALPHA * abs(true) * (1 + 1e-12), (q, true, estimate)
    assert math.copysign(1, estimate) == math.copysign(1, true) or estimate == 0 == true


@settings(max_examples=200, deadline=None)
@given(st.lists(values_lists, min_size=1, max_size=5))
def test_merging_sketches_equals_sketching_the_union(parts):
    merged = sketch_of(parts[0])
    for part in parts[1:]:
        merged = merged.merge(sketch_of(part))
    union = sketch_of([v for part in parts for v in part])
    assert (merged.positive, merged.negative, merged.zeros) == (union.positive, union.negative, union.zeros)
    for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0):
        assert merged.quantile(q) == union.quantile(q)


def test_sketches_of_other_accuracy_do_not_merge():
    with pytest.raises(ValueError):
        sketch.Sketch(0.01).merge(sketch.Sketch(0.02))


@settings(max_examples=100, deadline=None)
@given(values_lists)
def test_sql_binning_equals_python_binning(values):
    """The provider bins inside SQLite (node/storage/query_tables.py): the same bins as Python."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, value REAL)")
    conn.executemany("INSERT INTO r (value) VALUES (?)", [(v,) for v in values])
    sign, key = sketch.bin_sql("value")
    got = [tuple(row) for row in conn.execute(f"SELECT {sign}, {key} FROM r ORDER BY id")]
    assert got == [sketch.bin_of(v) for v in values]
