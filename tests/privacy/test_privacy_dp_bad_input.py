"""Issue 9, bad input under a differential-privacy budget: a query's epsilon that is NaN,
negative, infinite, above the documented ceiling (10) or below the floor (0.001), above the
agreement's lifetime budget, or above what remains of it. Each gets a precise status and
message; nothing is spent (budget or daily quota) and nothing is released."""

from __future__ import annotations

import math
import operator

import grpc
import pytest

from node.clock import utc_day
from tests.test_query_dp import ask, pair, spec, spent  # noqa: F401  (pair is a fixture)


async def _refused(consumer, provider, epsilon: float) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("sum", epsilon, provider))
    return err.value


async def _queries_today(provider, agreement: str) -> int:
    day = utc_day(provider.hub.clock.now_ms())
    used, _ = await provider.hub.storage.read(operator.methodcaller("quota_used", agreement, day))
    return used


async def test_bad_epsilon_is_refused_precisely_and_spends_nothing(pair):  # noqa: F811
    consumer, provider, agreement = pair
    for epsilon, code, message in [
        (math.nan, grpc.StatusCode.INVALID_ARGUMENT, "epsilon must be a finite number >= 0"),
        (-1.0, grpc.StatusCode.INVALID_ARGUMENT, "epsilon must be a finite number >= 0"),
        (math.inf, grpc.StatusCode.INVALID_ARGUMENT, "epsilon must be a finite number >= 0"),
        (10.5, grpc.StatusCode.INVALID_ARGUMENT, "epsilon 10.5 is above the ceiling of 10"),
        (0.0001, grpc.StatusCode.INVALID_ARGUMENT, "epsilon 0.0001 is below 0.001"),
        (2.5, grpc.StatusCode.PERMISSION_DENIED, "epsilon 2.5 is not within agreement"),  # the lifetime budget is 2
    ]:
        refused = await _refused(consumer, provider, epsilon)
        assert (refused.code(), message in refused.details()) == (code, True), (epsilon, refused.code(), refused.details())
    assert await spent(provider, agreement) == 0 and await _queries_today(provider, agreement) == 0

    await ask(consumer, spec("sum", 1.5, provider))
    assert await spent(provider, agreement) == 1_500_000 and await _queries_today(provider, agreement) == 1
    refused = await _refused(consumer, provider, 0.6)  # more than the 0.5 that remains
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "0.5 remains" in refused.details(), refused.details()
    assert await spent(provider, agreement) == 1_500_000 and await _queries_today(provider, agreement) == 1
