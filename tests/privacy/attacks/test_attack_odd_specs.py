"""Attack (partner): exceed an agreement's time granularity with odd query shapes.

Tried (property-based, against the provider's own decision: query_spec.check_shape, then
policy.check_terms, the two checks every providing hub runs before computing): every
smallest bucket an agreement can state (hour, day, week, month, year, window), against
queries of every bucket whose windows start and end on random boundaries of any unit (hour,
day, ISO week, month, year), including weeks straddling a month or year end (and months between two
month-starts that are Mondays, 2019-04-01..2019-07-01, under a weekly agreement), February of leap
and common years, the days Norway changes to and from summer time (2019-03-31, 2019-10-27:
buckets are UTC, so a 23- or 25-hour local day is not a bucket), and windows up to the
agreement's longest. What must hold for every query accepted: each cell boundary the answer
can carry (its window's ends and every bucket edge) lies on the agreement's finest grain, so
no difference of two allowed answers is finer than the agreement, and no bucket is finer
than the agreement's smallest.
RESULT: HELD for 600 generated shapes (of which about a third accepted) (none accepted that breaks either rule). An agreement
whose smallest bucket is `window` lets windows be cut at whole days (documented as
policy.finest_grain); that is checked here as the rule, not reported as a break.
"""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from federation import sealing
from federation.policy import check_terms, finest_grain
from federation.query_spec import aligned, bucket_start, buckets, check_shape, next_bucket
from federation.terms import BUCKETS
from node.api.v1 import agreement_pb2, query_pb2
from node.errors import Rejected

UNITS = ("hour", "day", "week", "month", "year")
KEY = sealing.public_raw(sealing.new_answer_key())
DST = [int(dt.datetime(2019, m, d, tzinfo=dt.UTC).timestamp() * 1000) for m, d in ((3, 31), (10, 27))]
MONDAY_MONTHS = tuple(int(dt.datetime(2019, m, 1, tzinfo=dt.UTC).timestamp() * 1000) for m in (4, 7))  # both Mondays
BASE = int(dt.datetime(2018, 12, 1, tzinfo=dt.UTC).timestamp() * 1000)


@st.composite
def window(draw) -> tuple[int, int]:
    """A start on a boundary of one unit, an end some steps of another unit later."""
    unit, step = draw(st.sampled_from(UNITS)), draw(st.sampled_from(UNITS))
    around = draw(st.sampled_from(DST) | st.integers(BASE, BASE + 800 * 86_400_000))
    start = end = bucket_start(unit, around, 0)
    for _ in range(draw(st.integers(1, 40 if step in ("hour", "day") else 5))):
        end = next_bucket(step, end)
    return start, end


def _terms(smallest: str, longest_days: int) -> agreement_pb2.AgreementTerms:
    return agreement_pb2.AgreementTerms(agreement_id="urn:uuid:attack", purpose_code="environmental_monitoring",
                                        aggregates=["mean"], group_by=["municipality", "time_bucket"],
                                        smallest_bucket=smallest, longest_window_days=longest_days)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(smallest=st.sampled_from(BUCKETS), bucket=st.sampled_from(BUCKETS), span=window(),
       longest=st.sampled_from([1, 7, 31, 366, 800]))
@example(smallest="week", bucket="month", span=MONDAY_MONTHS, longest=366)  # months between two Monday month-starts
def test_no_accepted_query_is_finer_than_its_agreement(smallest, bucket, span, longest):
    start, end = span
    spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", bucket=bucket, group_by="municipality",
                               start_ms=start, end_ms=end, purpose_code="environmental_monitoring", answer_key=KEY)
    try:
        check_shape(spec)
        check_terms(spec, _terms(smallest, longest))
    except Rejected:
        event("refused")
        return
    event("accepted")
    grain = finest_grain(smallest)
    edges = {start, end} | {edge for span in buckets(bucket, start, end) for edge in span}
    off_grain = sorted(e for e in edges if not aligned(grain, e))
    assert not off_grain, f"{bucket} query {start}..{end} under smallest {smallest} has edges off the {grain} grain: {off_grain}"
    assert BUCKETS.index(bucket) >= BUCKETS.index(smallest), f"bucket {bucket} finer than {smallest}"
    assert (end - start) <= longest * 86_400_000
