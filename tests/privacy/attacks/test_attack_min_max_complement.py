"""Attack (partner): a single station's readings from cells of k stations, via min, max and mean.

Tried: Bergen (B) has exactly k = 3 stations (not personal data: air quality); the agreement
allows mean, min and max by hour, per municipality, with min_group_size = 3. Three allowed
queries for the same day: hourly mean, min and max. The middle station is then
3 * mean - min - max (and generally sum - min - max is an aggregate of n - 2 contributors,
fewer than k whenever n < k + 2).

RESULT: BROKE. The middle station's exact reading for 24 of 24 hours (error < 1e-9), although
every released cell has 3 contributors; the other two stations' readings are the min and max
themselves, so the whole day of all three stations is known (72 of 72 readings). docs/privacy.md
does not say that min and max are single readings for non-personal data, nor that they
combine with a mean.
Smallest fix: federation/query/provider.py _release (or partials.build): release a min or max
cell only when it has at least min_group_size + 2 contributors, so that sum - min - max still
covers k contributors; and document in docs/privacy.md that min and max are one station's
reading.
FIXED (askerfix): partials.contributors_needed: a min or max cell needs max(k, 3) + 2
contributors (k >= 2); docs/privacy.md 2.4-2.5 say min and max are single readings.
"""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio
from attack_helpers import DAY, HOUR_MS, day_query, region, terms_toml

pytestmark = pytest.mark.asyncio(loop_scope="module")
STATIONS = [[10.0 + h for h in range(24)], [30.0 + 0.37 * h for h in range(24)], [60.0 + 2.5 * h for h in range(24)]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    terms = terms_toml(aggregates=["mean", "min", "max"], smallest_bucket="hour", min_group_size=3)
    async with region(tmp_path_factory.mktemp("minmax"), terms, {0: STATIONS}, towns=(("bergen", "4601"),)) as r:
        yield r


async def _hourly(r, aggregate: str) -> list[float | None]:
    """The 24 hourly values; None for an hour withheld, or for all of them if the query is refused."""
    [b] = r.hubs
    try:
        answer = await r.ask(b, day_query(bucket="hour", aggregate=aggregate, group_by="municipality", hub_ids=[b.id]))
    except grpc.aio.AioRpcError:
        return [None] * 24
    assert all(row.contributors == 3 for row in answer.rows if not row.suppressed), aggregate
    by_hour = {row.bucket_start_ms: None if row.suppressed else row.value for row in answer.rows}
    return [by_hour.get(DAY + h * HOUR_MS) for h in range(24)]


async def test_min_max_and_mean_do_not_single_out_a_station(attacked):
    means, mins, maxes = [await _hourly(attacked, agg) for agg in ("mean", "min", "max")]
    middle = [3 * m - lo - hi if m is not None and lo is not None and hi is not None else None
              for m, lo, hi in zip(means, mins, maxes, strict=True)]
    recovered = sum(x is not None and abs(x - true) < 1e-9 for x, true in zip(middle, STATIONS[1], strict=True))
    assert recovered == 0, f"the middle station's reading recovered exactly for {recovered} of 24 hours"
