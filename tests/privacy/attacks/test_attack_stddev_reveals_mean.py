"""Attack (partner): get an aggregate the agreement does not grant, from the merge inputs of one it does.

Tried: every hub's agreement with the partner allows `stddev` only (not `mean`, not `sum`).
Bergen (B) has two stations, at 10 and 20 all day. The partner asks for B's daily mean
(refused, as it should be), then for the region-wide daily stddev with `hub_ids = [B]`, opens
B's sealed partial and reads its merge inputs.

RESULT: BROKE. A region-wide stddev cell carries count, sum and sum of squares
(partials.RELEASED_FIELDS), so the partner recovers B's exact mean (sum / count = 15.0, error
0) and sum (720.0) although the agreement grants neither. Asked per municipality, the same
stddev releases only its final value and counts (held: test_per_municipality_stddev...).
Smallest fix: federation/policy.py check_terms: refuse a region-wide `stddev` unless the
agreement also allows `mean` (or `sum`), since merging it exactly needs each hub's sum; or
let federation/terms.py validation refuse terms that grant `stddev` without `mean`, and say
so in docs/privacy.md 2.3.
FIXED (askerfix): policy.check_terms refuses a region-wide stddev unless the agreement
also grants mean or sum (PERMISSION_DENIED); docs/privacy.md 2.3.
"""

from __future__ import annotations

import math

import grpc
import pytest
import pytest_asyncio
from attack_helpers import day_query, partial_of, region, terms_toml

pytestmark = pytest.mark.asyncio(loop_scope="module")
STATIONS = [[10.0] * 24, [20.0] * 24]
TRUE_MEAN, TRUE_SUM = 15.0, 720.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    async with region(tmp_path_factory.mktemp("stddev"), terms_toml(aggregates=["stddev"]), {0: STATIONS},
                      towns=(("bergen", "4601"),)) as r:
        yield r


async def test_the_mean_itself_is_refused(attacked):
    [b] = attacked.hubs
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await attacked.ask(b, day_query(bucket="window", aggregate="mean", hub_ids=[b.id]))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "not allowed" in refused.value.details()


async def test_per_municipality_stddev_releases_its_final_value_only(attacked):
    [b] = attacked.hubs
    answer = await attacked.ask(b, day_query(bucket="window", aggregate="stddev", group_by="municipality", hub_ids=[b.id]))
    [cell] = partial_of(answer.provenance[0]).cells
    assert (cell.sum, cell.sum_squares) == (0.0, 0.0) and cell.count == 48 and abs(cell.value - math.sqrt(48 * 25 / 47)) < 1e-9


async def test_a_region_wide_stddev_does_not_reveal_the_mean(attacked):
    [b] = attacked.hubs
    try:
        answer = await attacked.ask(b, day_query(bucket="window", aggregate="stddev", group_by="region", hub_ids=[b.id]))
    except grpc.aio.AioRpcError:
        return  # refused region-wide: held
    [cell] = partial_of(answer.provenance[0]).cells
    recovered_mean = cell.sum / cell.count if cell.count else float("nan")
    assert not abs(recovered_mean - TRUE_MEAN) < 0.01 * TRUE_MEAN, (
        f"recovered mean {recovered_mean:g} (true {TRUE_MEAN:g}) and sum {cell.sum:g} (true {TRUE_SUM:g}) from a stddev")
