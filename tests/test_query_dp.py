"""Differential privacy: OpenDP noise whose scale is what the docs say, a data-subject unit with
a contribution bound, small cells withheld on a NOISY contributor count, and a lifetime budget
in integer micro-epsilon that runs out, refuses without spending, and is refunded on failure.

One subject contributes to every cell of a query, so a query of N cells is calibrated to the
sensitivity of the whole vector (N * L for counts): each cell's Laplace scale is N times that of
a one-cell query. The noise tests are statistical: thousands of noise draws of the real noise
function (queries of several cells), compared with the documented Laplace scale; they fail (by
more than 7 standard errors) when the scale is halved, the noise on counts dropped, or a query
charged as if its cells were disjoint (N times too little noise), and pass by a wide margin
otherwise. tests/privacy/test_privacy_dp_composition.py tests the guarantee itself."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import statistics

import aiohttp
import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation import dp, envelope, sealing
from federation.query.provider import RUN_METHOD, Provider
from node.api.v1 import admin_pb2, query_pb2
from node.app.sensor_client import replay
from node.senml import Reading
from node.storage.base import CellRow
from tests.conftest import sign_agreement, start_peered
from tests.test_cli import cli
from tests.test_federation_region import TERMS

BOUNDS = (-80.0, 70.0)  # temperature
DRAWS = 4000  # noise draws per measurement: queries of CELLS cells, DRAWS / CELLS of them
CELLS = 40


def _noise(aggregate: str, epsilon: float, max_contributions: int, true: CellRow, min_group_size: int = 0,
           cells: int = CELLS) -> tuple[float, float, float]:
    """Mean |noise| of the count and the sum, and the share of cells kept, over DRAWS cells
    released by queries of `cells` cells that all equal `true`."""
    counts, sums, kept = [], [], 0
    for _ in range(DRAWS // cells):
        query = [CellRow(i * 3_600_000, true.count, true.sum, 0.0, 0.0, 0.0, true.contributors) for i in range(cells)]
        noised = dp.noisy_cells(query, aggregate, epsilon, BOUNDS, max_contributions, min_group_size)
        counts += [abs(c.count - true.count) for c in noised.cells]
        sums += [abs(c.sum - true.sum) for c in noised.cells]
        kept += cells - len(noised.withheld)
    return statistics.fmean(counts), statistics.fmean(sums), kept / len(counts)


@pytest.mark.parametrize(("max_contributions", "cells"), [(1, 1), (24, CELLS)])
def test_count_noise_has_the_documented_laplace_scale(max_contributions, cells):
    """count: 3/4 of epsilon on the counts, whose L1 sensitivity over the query is N * L; every
    cell gets Laplace(b), b = N * L / (3 epsilon / 4), and E|Laplace(b)| = b. The count is
    rounded, so E|rounded noise| lies within 0.25 of b for b >= 1."""
    epsilon = 1.0
    cell = CellRow(0, 10_000_000, 0.0, 0.0, 0.0, 0.0, 50)  # far above the noise: never clipped at 0
    b = cells * max_contributions / (epsilon * 3 / 4)
    mean_count, _, _ = _noise("count", epsilon, max_contributions, cell, cells=cells)
    # standard error of the mean of |Laplace(b)| is b / sqrt(DRAWS) (its sd is b): 7 SE ~ 0.11 b
    assert abs(mean_count - b) < 0.11 * b + 0.25, (mean_count, b)


def test_sum_noise_has_the_documented_laplace_scale():
    """sum: 3/4 of epsilon on the sums, sensitivity N * L * max(|low|, |high|) = N * 2 * 80."""
    epsilon, bound = 2.0, 2
    cell = CellRow(0, 100, 1234.5, 0.0, 0.0, 0.0, 50)
    b = CELLS * bound * 80.0 / (epsilon * 3 / 4)
    _, mean_sum, _ = _noise("sum", epsilon, bound, cell)
    assert abs(mean_sum - b) < 0.11 * b, (mean_sum, b)


def test_mean_noises_both_count_and_sum_with_half_of_the_rest_each():
    epsilon, bound = 1.0, 1
    cell = CellRow(0, 10_000_000, 5000.0, 0.0, 0.0, 0.0, 50)
    share = epsilon * 3 / 8
    mean_count, mean_sum, _ = _noise("mean", epsilon, bound, cell)
    assert abs(mean_count - CELLS / share) < 0.11 * CELLS / share + 0.25, mean_count
    assert abs(mean_sum - CELLS * 80.0 / share) < 0.11 * CELLS * 80.0 / share, mean_sum


def test_small_cells_are_withheld_on_a_noisy_contributor_count():
    """Threshold = min group size; the contributor counts get Laplace(b), b = N / (epsilon / 4)
    (one subject is in every cell). A cell of exactly k contributors is withheld about half the
    time (noise below 0); one of k + b contributors with probability e^-1 / 2 = 0.184."""
    epsilon, k = 1.0, 5
    _, _, kept = _noise("count", epsilon, 1, CellRow(0, 100, 0.0, 0.0, 0.0, 0.0, k), min_group_size=k)
    assert abs(kept - 0.5) < 0.06, kept  # 7 SE of a proportion over 4000 draws is 0.055
    b = CELLS / (epsilon / 4)
    _, _, kept = _noise("count", epsilon, 1, CellRow(0, 100, 0.0, 0.0, 0.0, 0.0, k + int(b)), min_group_size=k)
    assert abs((1 - kept) - math.exp(-1) / 2) < 0.045, kept  # halved b: 0.068; b of one cell: 0.000
    # Far above the threshold (60 scales): kept always; far below: never.
    big = [dp.noisy_cells([CellRow(0, 100, 0.0, 0.0, 0.0, 0.0, 250)], "count", epsilon, BOUNDS, 1, 5) for _ in range(200)]
    assert not any(n.withheld for n in big)
    empty = [dp.noisy_cells([CellRow(0, 0, 0.0, 0.0, 0.0, 0.0, 0)], "count", epsilon, BOUNDS, 1, 250) for _ in range(200)]
    assert all(n.withheld for n in empty)


def test_the_calibration_is_the_documented_table():
    """docs/privacy.md, section 3: the split and the scales of a query of N cells."""
    c = dp.calibrate("mean", 2.0, (-80.0, 70.0), 24, 365)
    assert (c.subjects_epsilon, c.count_epsilon, c.sum_epsilon) == (0.5, 0.75, 0.75)
    assert (c.subjects_scale, c.count_scale, c.sum_scale) == (365 / 0.5, 365 * 24 / 0.75, 365 * 24 * 80 / 0.75)
    assert dp.calibrate("count", 1.0, (0.0, 1.0), 1, 1).sum_scale == 0 and dp.calibrate("sum", 1.0, (0.0, 1.0), 1, 1).count_scale == 0


@settings(max_examples=200, deadline=None)
@given(aggregate=st.sampled_from(dp.DP_AGGREGATES), epsilon=st.floats(dp.MIN_EPSILON, 10.0),
       bound=st.integers(1, 10_000), cells=st.integers(1, 87_600),
       # a catalogue range is a real one (no subnormal bounds, whose scale rounds past the map)
       low=st.floats(-1e6, 0.0, allow_subnormal=False), high=st.floats(0.0, 1e6, allow_subnormal=False))
def test_a_query_never_spends_more_than_its_epsilon_over_all_its_cells(aggregate, epsilon, bound, cells, low, high):
    """Whatever the query: the shares add up to its epsilon, each figure's sensitivity is that of
    the whole vector (cells x the per-cell bound), and OpenDP's privacy map of the mechanism
    drawn for it, at that sensitivity, is within its share."""
    c = dp.calibrate(aggregate, epsilon, (low, high), bound, cells)
    assert math.isclose(c.subjects_epsilon + c.count_epsilon + c.sum_epsilon, epsilon, rel_tol=1e-12)
    assert c.subjects_sensitivity == cells
    assert c.count_sensitivity == (cells * bound if aggregate != "sum" else 0)
    assert c.sum_sensitivity == (cells * bound * max(-low, high) if aggregate != "count" else 0)
    for sensitivity, share in [(c.subjects_sensitivity, c.subjects_epsilon), (c.count_sensitivity, c.count_epsilon),
                               (c.sum_sensitivity, c.sum_epsilon)]:
        if share and sensitivity:
            assert dp._vector_laplace(sensitivity, share).map(sensitivity) <= share * (1 + 1e-9)


def test_micro_epsilon_never_undercharges():
    assert dp.micro(0.1) == 100_000 and dp.micro(1e-6) == 1 and dp.micro(0.0000015) == 2
    assert dp.micro(0.1 + 0.2) == 300_000  # float noise does not add a micro-epsilon


# -- against live hubs -------------------------------------------------------------------------

DP_TERMS = (TERMS.replace('metrics = ["pm25"]', 'metrics = ["temperature"]')
            .replace('aggregates = ["mean", "count", "min", "max"]', 'aggregates = ["count", "sum", "mean"]')
            .replace("min_group_size = 1", "min_group_size = 2")
            .replace("queries_per_day = 100", "queries_per_day = 100\ndp_epsilon = 2.0\ndp_max_contributions = 744"))
JAN, FEB = (int(dt.datetime(2019, m, 1, tzinfo=dt.UTC).timestamp() * 1000) for m in (1, 2))
HOURS = range(31 * 24)
TRUE_VALUE = lambda sensor, hour: -5.0 + sensor + (hour % 24) / 4  # noqa: E731  (°C)


@pytest.fixture
async def pair(tmp_path):
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        for n in range(30):  # 30 sensors: far above the noisy threshold of 2
            sensor = await provider.add_sensor(tmp_path, f"thermometer{n}", metrics=["temperature"])
            readings = [Reading("temperature", JAN + h * 3_600_000, TRUE_VALUE(n, h)) for h in HOURS[:48]]
            await asyncio.to_thread(replay, sensor, readings)
        agreement = await sign_agreement(provider, consumer, DP_TERMS)
        yield consumer, provider, agreement
    finally:
        await consumer.stop()
        await provider.stop()


def spec(aggregate: str, epsilon: float, provider) -> query_pb2.QuerySpec:
    return query_pb2.QuerySpec(dataset="air_quality", metric="temperature", aggregate=aggregate, start_ms=JAN, end_ms=FEB,
                               bucket="month", group_by="municipality", purpose_code="environmental_monitoring",
                               hub_ids=[provider.hub.config.hub_id], epsilon=epsilon)


async def ask(consumer, query):
    return await consumer.admin.RunQuery(query, metadata=consumer.admin_metadata)


async def spent(provider, agreement: str) -> int:
    return await provider.hub.storage.read(lambda s: s.budget_spent(agreement))


async def test_a_lifetime_budget_in_micro_epsilon_that_runs_out_and_refuses_without_spending(pair):
    consumer, provider, agreement = pair
    first = await ask(consumer, spec("sum", 0.5, provider))
    [row] = first.rows
    # 30 sensors against a threshold of 2 on a noisy count (scale 8): withheld with probability 1.5 %
    assert row.contributors == 0 and (row.noisy or row.suppressed)
    partial = query_pb2.PartialResult.FromString(first.provenance[0].partial.partial)
    assert (partial.dp_budget_micro, partial.dp_spent_micro) == (2_000_000, 500_000)  # shown to the asker, signed
    [cell] = partial.cells
    assert cell.suppressed or (cell.noisy and cell.sum_squares == cell.min == cell.max == cell.contributors == 0)
    await ask(consumer, spec("count", 0.5, provider))
    await ask(consumer, spec("mean", 0.5, provider))
    assert await spent(provider, agreement) == 1_500_000

    # 1.5 of the lifetime 2.0 is spent: 0.6 more is refused, and the refusal spends nothing.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("sum", 0.6, provider))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "0.5 remains" in err.value.details()
    assert await spent(provider, agreement) == 1_500_000
    await ask(consumer, spec("sum", 0.5, provider))  # exactly the rest is still allowed
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("count", 0.001, provider))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await spent(provider, agreement) == 2_000_000

    # `smartregion agreement budget ID`, as the provider's admin runs it (docs/privacy.md)
    shown = await asyncio.to_thread(cli, "agreement", "budget", "--data-dir", str(provider.data_dir), agreement, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"agreement_id": agreement, "role": "provider", "budget_epsilon": 2.0,
                                        "spent_epsilon": 2.0, "remaining_epsilon": 0.0, "max_contributions": 744}
    text = await asyncio.to_thread(cli, "agreement", "budget", "--data-dir", str(consumer.data_dir), agreement)
    assert text.returncode == 0 and "the provider keeps the ledger" in text.stdout, text.stderr


async def test_a_query_that_fails_after_spending_is_refunded(pair, monkeypatch):
    """The provider charges, computes, then cannot seal: nothing is released, and the charge is
    given back. (A low-order answer key no longer gets that far: it is refused before anything
    is charged, tests/privacy/attacks/test_attack_unusable_answer_key.py; so the sealing
    failure is injected here, after the charge.)"""
    consumer, provider, agreement = pair
    query = spec("count", 0.5, provider)
    query.answer_key = sealing.public_raw(sealing.new_answer_key())
    signed = envelope.make(consumer.hub.identity.identity_key, consumer.hub.config.hub_id, provider.hub.config.hub_id,
                           RUN_METHOD, query=query)

    def cannot_seal(*_args: object) -> bytes:
        raise sealing.SealError("injected: sealing failed after the charge")

    monkeypatch.setattr(sealing, "seal", cannot_seal)
    with pytest.raises(sealing.SealError):
        await Provider(provider.running.federation).compute(signed, query, consumer.hub.config.hub_id)
    assert await spent(provider, agreement) == 0


async def test_epsilon_outside_a_budget_is_refused(pair):
    consumer, provider, _ = pair
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("sum", 2.5, provider))  # more than the whole lifetime budget
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("sum", -1.0, provider))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(consumer, spec("stddev", 0.1, provider))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "(allowed: count, sum, mean)" in err.value.details()


async def test_the_query_command_shows_the_budget_left(pair):
    consumer, provider, agreement = pair
    shown = await asyncio.to_thread(
        cli, "query", "run", "--data-dir", str(consumer.data_dir), "--dataset", "air_quality", "--metric", "temperature",
        "--aggregate", "count", "--from", "2019-01-01", "--to", "2019-02-01", "--bucket", "month", "--group-by", "municipality",
        "--ask-hub", provider.hub.config.hub_id, "--purpose", "environmental_monitoring", "--epsilon", "0.1")
    assert shown.returncode == 0, shown.stderr
    assert f"budget of agreement {agreement}: 0.1 of 2 spent, 1.9 left" in " ".join(shown.stdout.split()), shown.stdout


async def _dashboard_agreements(live) -> list[dict]:
    """GET /api/agreements of a live hub's dashboard, logged in with its admin credential (HTTPS)."""
    from node import hubdir
    from node.app.dashboard.routes import SESSION_COOKIE
    from tests.ingest_helpers import client_ssl_context

    url, tls, name = live.hub.endpoint.http_url, client_ssl_context(live), live.hub.config.hub_id
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/login", json={"token": hubdir.HubDir(live.data_dir).admin_token()}, ssl=tls,
                             server_hostname=name) as response:
            assert response.status == 200
            cookie = response.cookies[SESSION_COOKIE].value
        async with http.get(f"{url}/api/agreements", cookies={SESSION_COOKIE: cookie}, ssl=tls, server_hostname=name) as response:
            assert response.status == 200
            return await response.json()


async def test_the_dashboard_shows_the_lifetime_budget_the_command_and_the_answer_show(pair):
    """The dashboard's agreements table reads the lifetime ledger (not today's quota row): what
    `smartregion agreement budget ID --json` shows, and what the provider signed into the answer."""
    consumer, provider, agreement = pair
    await ask(consumer, spec("count", 0.5, provider))
    answer = await ask(consumer, spec("sum", 0.25, provider))
    partial = query_pb2.PartialResult.FromString(answer.provenance[0].partial.partial)
    shown = await asyncio.to_thread(cli, "agreement", "budget", "--data-dir", str(provider.data_dir), agreement, "--json")
    figures = json.loads(shown.stdout)
    [row] = [a for a in await _dashboard_agreements(provider) if a["agreement_id"] == agreement]
    assert (row["dp_budget"], row["dp_spent"], row["dp_remaining"]) == (2.0, 0.75, 1.25)
    assert (row["dp_budget"], row["dp_spent"], row["dp_remaining"]) == (
        figures["budget_epsilon"], figures["spent_epsilon"], figures["remaining_epsilon"])
    assert (partial.dp_budget_micro / dp.MICRO, partial.dp_spent_micro / dp.MICRO) == (row["dp_budget"], row["dp_spent"])
    # The consumer does not keep the ledger: it shows the budget, and no made-up spent figure.
    [seen] = [a for a in await _dashboard_agreements(consumer) if a["agreement_id"] == agreement]
    assert (seen["dp_budget"], seen["dp_spent"], seen["dp_remaining"]) == (2.0, None, None)


async def test_a_renewal_does_not_hand_the_asker_a_fresh_budget(pair):
    """Superseding a DP agreement with an identical version 2, or revoking it and signing a new
    one, continues its line: what v1 spent counts against v2's lifetime budget. Only what a
    renewal raises the budget to is granted anew."""
    consumer, provider, v1 = pair
    await ask(consumer, spec("sum", 1.5, provider))
    v2 = await sign_agreement(provider, consumer, f'version = 2\nsupersedes = "{v1}"\n' + DP_TERMS)
    budget = await provider.admin.GetAgreementBudget(admin_pb2.AgreementRef(agreement_id=v2), metadata=provider.admin_metadata)
    assert (budget.budget_micro, budget.spent_micro, budget.remaining_micro) == (2_000_000, 1_500_000, 500_000)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ask(consumer, spec("sum", 1.0, provider))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "earlier versions included" in refused.value.details()
    assert await spent(provider, v2) == 0  # the refusal spent nothing
    raised = DP_TERMS.replace("dp_epsilon = 2.0", "dp_epsilon = 3.0")
    v3 = await sign_agreement(provider, consumer, f'version = 3\nsupersedes = "{v2}"\n' + raised)
    answer = await ask(consumer, spec("sum", 1.0, provider))  # v3 grants one more: 1.5 + 1.0 <= 3.0
    partial = query_pb2.PartialResult.FromString(answer.provenance[0].partial.partial)
    assert (partial.dp_budget_micro, partial.dp_spent_micro) == (3_000_000, 2_500_000)
    assert (await spent(provider, v3), await spent(provider, v1)) == (1_000_000, 1_500_000)
