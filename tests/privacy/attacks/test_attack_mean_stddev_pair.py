"""Attack (partner): both readings of a two-station cell from its mean and standard deviation.

Tried: Porsgrunn (C) has exactly k = 2 stations (air quality, not personal); the agreement
allows mean and stddev by hour, per municipality, with min_group_size = 2. Two allowed
queries for one day. With n = 2 readings a cell's sample standard deviation is |x1 - x2| / sqrt(2),
so x = mean +- stddev / sqrt(2).

RESULT: BROKE. Both stations' exact readings (as an unordered pair) for 24 of 24 hours (48 of 48
readings, error < 1e-9), from cells that each have the 2 contributors the agreement requires.
Smallest fix: federation/query/provider.py _release (or partials.build): release a stddev cell
only when it has at least max(min_group_size, 3) contributors (with mean and count, a stddev of
two readings determines both), and say so in docs/privacy.md 2.
FIXED (askerfix): partials.contributors_needed: a stddev cell needs max(k, 3) contributors
(k >= 2); docs/privacy.md 2.5.
"""

from __future__ import annotations

import math

import grpc
import pytest
import pytest_asyncio
from attack_helpers import DAY, HOUR_MS, day_query, region, terms_toml

pytestmark = pytest.mark.asyncio(loop_scope="module")
STATIONS = [[12.0 + 0.8 * h for h in range(24)], [30.0 - 0.6 * h for h in range(24)]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    terms = terms_toml(aggregates=["mean", "stddev"], smallest_bucket="hour", min_group_size=2)
    async with region(tmp_path_factory.mktemp("pair"), terms, {0: STATIONS}, towns=(("porsgrunn", "4001"),)) as r:
        yield r


async def _hourly(r, aggregate: str) -> list[float | None]:
    """The 24 hourly values; None for an hour withheld, or for all of them if the query is refused."""
    [c] = r.hubs
    try:
        answer = await r.ask(c, day_query(bucket="hour", aggregate=aggregate, group_by="municipality", hub_ids=[c.id]))
    except grpc.aio.AioRpcError:
        return [None] * 24
    assert all(row.contributors == 2 for row in answer.rows if not row.suppressed), aggregate
    by_hour = {row.bucket_start_ms: None if row.suppressed else row.value for row in answer.rows}
    return [by_hour.get(DAY + h * HOUR_MS) for h in range(24)]


async def test_mean_and_stddev_of_a_two_station_cell_do_not_give_its_readings(attacked):
    means, stddevs = [await _hourly(attacked, agg) for agg in ("mean", "stddev")]
    recovered = 0
    for h, (m, s) in enumerate(zip(means, stddevs, strict=True)):
        if m is None or s is None:
            continue
        pair = sorted((m - s / math.sqrt(2), m + s / math.sqrt(2)))
        truth = sorted((STATIONS[0][h], STATIONS[1][h]))
        recovered += sum(abs(x - t) < 1e-9 for x, t in zip(pair, truth, strict=True))
    assert recovered == 0, f"recovered {recovered} of 48 readings exactly"
