"""Agreements with a differential-privacy budget: noisy counts and sums from OpenDP, a daily
epsilon budget that runs out, and only count, sum and mean released."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest

from node.api.v1 import query_pb2
from node.app.sensor_client import replay
from node.senml import Reading
from tests.conftest import sign_agreement, start_peered
from tests.test_federation_region import TERMS

DP_TERMS = (TERMS.replace('metrics = ["pm25"]', 'metrics = ["temperature"]')
            .replace('aggregates = ["mean", "count", "min", "max"]', 'aggregates = ["count", "sum", "mean", "stddev"]')
            .replace("queries_per_day = 100", "queries_per_day = 100\ndp_epsilon = 2.0"))
JAN, FEB = (int(dt.datetime(2019, m, 1, tzinfo=dt.UTC).timestamp() * 1000) for m in (1, 2))
HOURS = range(31 * 24)
TRUE_VALUE = lambda sensor, hour: -5.0 + sensor + (hour % 24) / 4  # noqa: E731  (°C)


@pytest.fixture
async def pair(tmp_path):
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        for n in range(3):
            sensor = await provider.add_sensor(tmp_path, f"thermometer{n}", metrics=["temperature"])
            readings = [Reading("temperature", JAN + h * 3_600_000, TRUE_VALUE(n, h)) for h in HOURS]
            await asyncio.to_thread(replay, sensor, readings)
        await sign_agreement(provider, consumer, DP_TERMS)
        yield consumer, provider
    finally:
        await consumer.stop()
        await provider.stop()


def spec(aggregate: str, epsilon: float, provider) -> query_pb2.QuerySpec:
    return query_pb2.QuerySpec(dataset="air_quality", metric="temperature", aggregate=aggregate, start_ms=JAN, end_ms=FEB,
                               bucket="month", group_by="municipality", purpose_code="environmental_monitoring",
                               hub_ids=[provider.hub.config.hub_id], epsilon=epsilon)


async def ask(consumer, query):
    return await consumer.admin.RunQuery(query, metadata=consumer.admin_metadata)


async def test_noisy_answers_a_budget_that_runs_out_and_only_linear_aggregates(pair):
    consumer, provider = pair
    true_sum = sum(TRUE_VALUE(n, h) for n in range(3) for h in HOURS)
    true_count = 3 * len(HOURS)

    first = await ask(consumer, spec("sum", 0.5, provider))
    [row] = first.rows
    assert row.noisy and not row.suppressed and row.contributors == 0
    # Laplace scale = sensitivity / epsilon = max(|-80|, |70|) / 0.5 = 160: 30 scales is beyond any plausible draw.
    assert abs(row.value - true_sum) < 30 * 160 and row.value != true_sum
    partial = query_pb2.PartialResult.FromString(first.provenance[0].partial.partial)
    assert partial.cells[0].noisy and partial.cells[0].sum_squares == partial.cells[0].min == partial.cells[0].max == 0

    second = await ask(consumer, spec("count", 0.5, provider))
    assert abs(second.rows[0].value - true_count) < 30 * 2  # scale 1 / 0.5
    mean = await ask(consumer, spec("mean", 0.5, provider))
    assert abs(mean.rows[0].value - true_sum / true_count) < 1.0 and mean.rows[0].noisy

    # 1.5 of the daily 2.0 is spent: 0.6 more is refused, and the refusal spends nothing.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("sum", 0.6, provider))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "differential-privacy budget" in err.value.details()
    await ask(consumer, spec("sum", 0.5, provider))  # exactly the rest is still allowed

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("stddev", 0.1, provider))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "only count, sum, mean" in err.value.details()


async def test_a_query_without_epsilon_spends_a_tenth_of_the_budget(pair):
    consumer, provider = pair
    for _ in range(10):
        await ask(consumer, spec("count", 0.0, provider))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("count", 0.0, provider))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_epsilon_outside_a_budget_is_refused(pair):
    consumer, provider = pair
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("sum", 2.5, provider))  # more than the whole daily budget
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("sum", -1.0, provider))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
