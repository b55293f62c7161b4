"""Provider-side enforcement: may this asker have this aggregate of this hub's data?

A pure function of the query, the agreements between this hub (as provider) and the asker,
and the clock. Deny by default; every refusal names the rule and the agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

from federation import agreements as ag
from federation.dp import DP_AGGREGATES, MIN_EPSILON
from federation.query_spec import DAY_MS, aligned
from federation.terms import bucket_allowed
from node import catalog
from node.api.v1 import agreement_pb2, query_pb2
from node.errors import Reason, Rejected


@dataclass(frozen=True)
class Grant:
    agreement_id: str            # "" when a hub asks about its own data
    min_group_size: int
    consent_purpose: str | None  # count only subjects with active consent for this purpose
    queries_per_day: int | None  # None: no quota (own data)
    smallest_bucket: str = "window"  # the finest granularity the agreement releases
    dp_budget: float = 0.0           # the agreement's lifetime differential-privacy epsilon; 0 = none
    dp_max_contributions: int = 0    # under DP: readings one data subject adds to a cell, at most
    asker_id: str = ""               # the agreement's consumer: whose release log (line) a cell joins


def own_data_grant() -> Grant:
    return Grant("", 1, None, None)


def finest_grain(smallest_bucket: str) -> str:
    """The finest time unit an agreement lets a window be cut at: its smallest bucket, or a day
    when it allows only whole windows (windows still start and end on day boundaries)."""
    return smallest_bucket if smallest_bucket != "window" else "day"


def _deny(message: str) -> Rejected:
    return Rejected(Reason.PERMISSION_DENIED, message)


def check_terms(spec: query_pb2.QuerySpec, terms: agreement_pb2.AgreementTerms) -> None:
    """Raise Rejected naming the first rule of `terms` the query breaks."""
    aid = terms.agreement_id
    if spec.purpose_code != terms.purpose_code:
        raise _deny(f"purpose {spec.purpose_code!r} does not match agreement {aid} (purpose {terms.purpose_code!r})")
    if spec.aggregate not in terms.aggregates:
        raise _deny(f"aggregate {spec.aggregate!r} is not allowed by agreement {aid} (allowed: {', '.join(terms.aggregates)})")
    if spec.aggregate == "stddev" and spec.group_by == "region" and not {"mean", "sum"} & set(terms.aggregates):
        # Merging a stddev across hubs needs each hub's count, sum and sum of squares: the sum
        # (so the mean) would leave this hub although the agreement grants neither.
        raise _deny(f"a region-wide stddev releases this hub's sum, and agreement {aid} grants neither mean nor sum; "
                    "ask per municipality")
    if spec.group_by == "municipality" and "municipality" not in terms.group_by:
        raise _deny(f"grouping by municipality is not allowed by agreement {aid}; ask region-wide")
    if spec.bucket != "window" and "time_bucket" not in terms.group_by:
        raise _deny(f"grouping by time is not allowed by agreement {aid}; ask for the whole window")
    if not bucket_allowed(spec.bucket, terms.smallest_bucket):
        raise _deny(f"bucket {spec.bucket!r} is finer than agreement {aid} allows (smallest: {terms.smallest_bucket})")
    days = (spec.end_ms - spec.start_ms) / DAY_MS
    if days > terms.longest_window_days:
        raise _deny(f"a window of {days:g} days is longer than agreement {aid} allows ({terms.longest_window_days} days)")
    # Windows aligned to the smallest bucket (at least whole days): overlapping queries
    # cannot be subtracted to reveal anything finer than the agreement allows.
    grain = finest_grain(terms.smallest_bucket)
    if not (aligned(grain, spec.start_ms) and aligned(grain, spec.end_ms)):
        raise _deny(f"the window must start and end on {grain} boundaries under agreement {aid}")
    if terms.smallest_bucket == "week" and spec.bucket in ("month", "year"):
        raise _deny(f"agreement {aid} releases weeks, and months and years are not made of whole weeks: "
                    "ask by week, or for a whole window")
    if terms.dp_epsilon > 0:
        if spec.aggregate not in DP_AGGREGATES:
            raise _deny(f"agreement {aid} has a differential-privacy budget: only {', '.join(DP_AGGREGATES)} are released under it")
        if spec.epsilon > terms.dp_epsilon or 0 < spec.epsilon < MIN_EPSILON:
            raise _deny(f"epsilon {spec.epsilon:g} is not within agreement {aid}'s budget of {terms.dp_epsilon:g}")
    elif spec.epsilon:
        raise Rejected(Reason.INVALID_REQUEST, f"agreement {aid} has no differential-privacy budget; the query must not set epsilon")


def authorize(spec: query_pb2.QuerySpec, asker_id: str, provider_id: str,
              agreements: list[tuple[ag.Evidence, int]]) -> Grant:
    """The grant under which the provider answers, or Rejected explaining why not."""
    if asker_id == provider_id:
        return own_data_grant()
    between = [(e, s) for e, s in agreements if e.terms.provider.id == provider_id and e.terms.consumer.id == asker_id]
    if not between:
        raise _deny(f"hub {provider_id} has no agreement with {asker_id}")
    covering = [(e, s) for e, s in between if spec.dataset in e.terms.datasets and spec.metric in e.terms.metrics]
    if not covering:
        raise _deny(f"no agreement between hub {provider_id} and {asker_id} covers {spec.dataset}/{spec.metric}")
    active = [e for e, s in covering if s == ag.State.AGREEMENT_STATE_ACTIVE]
    if not active:
        states = ", ".join(f"{e.agreement_id} is {ag.STATE_NAMES[s]}" for e, s in covering)
        raise _deny(f"no active agreement covers {spec.dataset}/{spec.metric}: {states}")
    first_refusal: Rejected | None = None
    for evidence in active:
        try:
            check_terms(spec, evidence.terms)
        except Rejected as refusal:
            first_refusal = first_refusal or refusal
            continue
        t = evidence.terms
        personal = catalog.dataset(spec.dataset).classification is catalog.Classification.PERSONAL
        return Grant(
            agreement_id=t.agreement_id,
            min_group_size=max(1, t.min_group_size),
            consent_purpose=t.purpose_code if (t.consent_required or personal) else None,
            queries_per_day=t.queries_per_day,
            smallest_bucket=t.smallest_bucket,
            dp_budget=t.dp_epsilon,
            dp_max_contributions=t.dp_max_contributions,
            asker_id=t.consumer.id,
        )
    assert first_refusal is not None  # `active` is not empty, and every agreement in it refused
    raise first_refusal
