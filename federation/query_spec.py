"""Query shape checks and time buckets (UTC).

Buckets: hour, day, week (ISO, from Monday), month, year, or the whole window. A window must
start and end on boundaries of its bucket, so that two overlapping queries cannot be
subtracted to reveal anything finer than the bucket the agreement allows.
"""

from __future__ import annotations

import datetime as dt
import math

from federation.terms import AGGREGATES, BUCKETS, MAX_DP_EPSILON, MIN_DP_EPSILON
from node import catalog
from node.api.v1 import query_pb2
from node.errors import Reason, Rejected

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
MAX_WINDOW_MS = 10 * 366 * DAY_MS
EARLIEST_MS = 0
LATEST_MS = int(dt.datetime(2200, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
GROUPS = ("municipality", "region")
DEFAULT_DEADLINE_MS = 10_000
MAX_DEADLINE_MS = 60_000


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def bucket_start(bucket: str, time_ms: int, window_start_ms: int) -> int:
    if bucket == "hour":
        return time_ms - time_ms % HOUR_MS
    if bucket == "day":
        return time_ms - time_ms % DAY_MS
    if bucket == "week":  # 1970-01-01 was a Thursday: shift so weeks start on Monday
        return time_ms - (time_ms + 3 * DAY_MS) % WEEK_MS
    when = _utc(time_ms)
    if bucket == "month":
        return _ms(dt.datetime(when.year, when.month, 1, tzinfo=dt.UTC))
    if bucket == "year":
        return _ms(dt.datetime(when.year, 1, 1, tzinfo=dt.UTC))
    return window_start_ms


def next_bucket(bucket: str, start_ms: int) -> int:
    fixed = {"hour": HOUR_MS, "day": DAY_MS, "week": WEEK_MS}
    if bucket in fixed:
        return start_ms + fixed[bucket]
    when = _utc(start_ms)
    if bucket == "month":
        year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
        return _ms(dt.datetime(year, month, 1, tzinfo=dt.UTC))
    if bucket == "year":
        return _ms(dt.datetime(when.year + 1, 1, 1, tzinfo=dt.UTC))
    raise ValueError("a whole-window bucket has no successor")


def buckets(bucket: str, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """[(start, end)] covering an aligned window."""
    if bucket == "window":
        return [(start_ms, end_ms)]
    spans, at = [], start_ms
    while at < end_ms:
        nxt = next_bucket(bucket, at)
        spans.append((at, nxt))
        at = nxt
    return spans


def label(bucket: str, start_ms: int) -> str:
    when = _utc(start_ms)
    return {
        "hour": when.strftime("%Y-%m-%dT%H:00Z"),
        "day": when.strftime("%Y-%m-%d"),
        "week": f"{when.isocalendar().year}-W{when.isocalendar().week:02d}",
        "month": when.strftime("%Y-%m"),
        "year": when.strftime("%Y"),
    }.get(bucket, "window")


def aligned(bucket: str, time_ms: int) -> bool:
    return bucket == "window" or bucket_start(bucket, time_ms, 0) == time_ms


def check_shape(spec: query_pb2.QuerySpec) -> None:
    """What any hub can check without an agreement; raises Rejected(INVALID_REQUEST)."""
    def bad(message: str) -> Rejected:
        return Rejected(Reason.INVALID_REQUEST, message)

    try:
        ds = catalog.dataset(spec.dataset)
    except catalog.CatalogError as exc:
        raise bad(str(exc)) from None
    if spec.metric not in ds.metrics:
        raise bad(f"dataset {spec.dataset!r} has no metric {spec.metric!r}; known: {', '.join(ds.metrics)}")
    if spec.aggregate not in AGGREGATES:
        raise bad(f"aggregate {spec.aggregate!r} is not one of: {', '.join(AGGREGATES)}")
    if spec.aggregate == "quantile" and not 0 < spec.quantile < 1:
        raise bad("a quantile query needs a quantile between 0 and 1 (exclusive), e.g. 0.5")
    if spec.bucket not in BUCKETS:
        raise bad(f"bucket {spec.bucket!r} is not one of: {', '.join(BUCKETS)}")
    if spec.group_by not in GROUPS:
        raise bad(f"grouping {spec.group_by!r} is not one of: {', '.join(GROUPS)} (never a single sensor)")
    if spec.start_ms >= spec.end_ms:
        raise bad("the window is empty or reversed: start must be before end")
    if spec.start_ms < EARLIEST_MS or spec.end_ms > LATEST_MS:
        raise bad("the window must lie between 1970 and 2200")
    if spec.end_ms - spec.start_ms > MAX_WINDOW_MS:
        raise bad("the window is longer than ten years")
    if not (aligned(spec.bucket, spec.start_ms) and aligned(spec.bucket, spec.end_ms)):
        raise bad(f"the window must start and end on {spec.bucket} boundaries (UTC)")
    if not spec.purpose_code:
        raise bad("a query states its purpose (a purpose code)")
    if not (math.isfinite(spec.epsilon) and spec.epsilon >= 0):
        raise bad("epsilon must be a finite number >= 0")
    if spec.epsilon > MAX_DP_EPSILON:
        raise bad(f"epsilon {spec.epsilon:g} is above the ceiling of {MAX_DP_EPSILON:g}: no agreement's lifetime budget is larger")
    if 0 < spec.epsilon < MIN_DP_EPSILON:
        raise bad(f"epsilon {spec.epsilon:g} is below {MIN_DP_EPSILON:g}: the noise would drown every figure "
                  "(0 spends a tenth of the agreement's budget)")
    if spec.deadline_ms > MAX_DEADLINE_MS:
        raise bad(f"the deadline may be at most {MAX_DEADLINE_MS} ms")
    for number in spec.municipalities:
        if not (len(number) == 4 and number.isascii() and number.isdigit()):
            raise bad(f"municipality filter {number!r} is not a four-digit kommunenummer")
