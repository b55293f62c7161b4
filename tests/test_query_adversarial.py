"""An adversarial consumer cannot get a raw reading, a per-sensor series, or a cell with fewer
contributors than the agreement's minimum group size out of a provider, through real in-process
hubs (grpc.aio with pinned TLS, SQLite).

Bergen (B, the provider) has three air-quality sensors (pm25, no2) and three traffic counters
(vehicles). Each reports hourly, on the days of a fixed pattern: some days all three, some days
two, some days only one, one day none. Values are known here exactly (quarters, so every sum
is exact). B has two agreements with Stavanger (A, the attacker), proposed by B and accepted by
A: air quality with min_group_size = 2, traffic with min_group_size = 3; both allow every
aggregate, grouping by municipality and by time, buckets of a day or coarser. A also has a no2
sensor of its own (its own data, which it may always see), to try to pad B's small cells. A
research partner, registered at B, holds a third agreement for air quality: whole windows only
(`smallest_bucket = "window"`, so windows on day boundaries), min_group_size = 2; it asks B
directly with Query.Run.

For every answer, `assert_safe` checks: no unsuppressed row or partial cell has fewer than k of
B's sensors behind it, nor contains a day (the agreement's smallest bucket) with fewer, so no
subtraction of released figures can isolate a small day; a suppressed row carries no figures;
no value equals a raw reading of a cell with a single sensor; no sensor id (hex or raw bytes)
appears anywhere in the serialized answer. `assert_exact` checks each answer against an
independent computation from the readings.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from query_helpers import (
    DAY_MS,
    HOUR_MS,
    UTC,
    Node,
    add_sensor,
    agree,
    asked,
    deliver,
    ms,
    open_partial,
    opened,
    refused,
    relay,
    spec,
    start_nodes,
    stop_nodes,
    terms_toml,
)

from federation import partials, partners, policy
from federation.partner_client import PartnerSession
from node import senml, sketch
from node.api.v1 import admin_pb2, query_pb2, query_service_pb2

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIRST_DAY = ms(2019, 1, 7)  # a Monday
# Which of B's three sensors report on each day (the same for both datasets).
PATTERN = [{0, 1, 2}, {0, 1, 2}, {0, 1, 2}, {0}, {0, 1}, {2}, {0, 1, 2},
           {1}, {0, 1, 2}, {0, 1, 2}, {0, 2}, set(), {0, 1, 2}, {1, 2}]
DAYS = len(PATTERN)
DATASETS = {"air_quality": (["pm25", "no2"], 2), "traffic": (["vehicles"], 3)}  # metrics, min_group_size
ALL_AGGREGATES = ["count", "sum", "mean", "min", "max", "stddev", "quantile"]
A_TOWN, B_TOWN = ("stavanger", "1103"), ("bergen", "4601")


def day_ms(d: int) -> int:
    return FIRST_DAY + d * DAY_MS


def value_of(metric: str, sensor: int, time_ms: int) -> float:
    """Distinct per sensor and hour, in quarters (exact sums), always > 0."""
    d, hour = divmod((time_ms - FIRST_DAY) // HOUR_MS, 24)
    return {"pm25": 0, "no2": 1000, "vehicles": 2000}[metric] + 100 * (sensor + 1) + d + hour / 4


@dataclass(frozen=True)
class Reading:
    hub: str       # "A" or "B"
    sensor: str    # sensor id (hex)
    dataset: str
    metric: str
    time_ms: int
    value: float


@dataclass
class World:
    a: Node
    b: Node
    readings: list[Reading]
    sensor_ids: list[str]       # every sensor, at both hubs
    agreements: dict[str, str]  # dataset -> agreement id (B -> A); "partner" -> B's agreement with the partner
    partner: partners.PartnerKey

    def k(self, dataset: str) -> int:
        return DATASETS[dataset][1]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("query-adversarial")
    a, b = await start_nodes(base, (A_TOWN, B_TOWN))
    try:
        agreements = {}
        for dataset, (metrics, k) in DATASETS.items():
            agreements[dataset] = await agree(b, a, terms_toml(
                datasets=[dataset], metrics=metrics, aggregates=ALL_AGGREGATES, group_by=["municipality", "time_bucket"],
                smallest_bucket="day", longest_window_days=366, min_group_size=k))
        readings = []
        for dataset, (metrics, _) in DATASETS.items():
            for i in range(3):
                sensor = await add_sensor(b, base, f"{dataset}-{i}", dataset, metrics)
                mine = [Reading("B", sensor.credential.sensor_id, dataset, m, t, value_of(m, i, t))
                        for d, present in enumerate(PATTERN) if i in present
                        for t in range(day_ms(d), day_ms(d + 1), HOUR_MS) for m in metrics]
                await deliver(b, sensor, [senml.Reading(r.metric, r.time_ms, r.value) for r in mine])
                readings += mine
        partner = partners.PartnerKey(Ed25519PrivateKey.generate(), "Universitetet i Bergen")
        await b.admin("AddPartner", admin_pb2.AddPartnerRequest(name=partner.name, org_number="874789542",
                                                               public_key_file=partners.public_document(partner)))
        offered = await b.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(to=partner.partner_id, terms_toml=terms_toml(
            purpose="research", datasets=["air_quality"], metrics=["pm25"], aggregates=ALL_AGGREGATES, group_by=["municipality"],
            smallest_bucket="window", longest_window_days=366, min_group_size=2)))
        async with PartnerSession(partner, b.address, b.id) as session:
            await session.accept(offered.terms.agreement_id)
        agreements["partner"] = offered.terms.agreement_id
        own = await add_sensor(a, base, "own-no2", "air_quality", ["no2"])  # A's own, every day
        mine = [Reading("A", own.credential.sensor_id, "air_quality", "no2", t, 50 + (t - FIRST_DAY) // HOUR_MS / 4)
                for t in range(day_ms(0), day_ms(DAYS), HOUR_MS)]
        await deliver(a, own, [senml.Reading(r.metric, r.time_ms, r.value) for r in mine])
        readings += mine
        yield World(a, b, readings, sorted({r.sensor for r in readings}), agreements, partner)
    finally:
        await stop_nodes([a, b])


# -- an independent computation of what may be released ---------------------------------------------

def bucket_of(q: query_pb2.QuerySpec, time_ms: int) -> int:
    if q.bucket == "window":
        return q.start_ms
    t = dt.datetime.fromtimestamp(time_ms / 1000, UTC)
    start = {
        "day": t.replace(hour=0),
        "week": t.replace(hour=0) - dt.timedelta(days=t.weekday()),
        "month": t.replace(day=1, hour=0),
        "year": t.replace(month=1, day=1, hour=0),
    }[q.bucket]
    return int(start.timestamp() * 1000)


def asked_hubs(world: World, q: query_pb2.QuerySpec) -> set[str]:
    """The hubs the entry hub (A) asks: those named in hub_ids (all if none) in the municipality filter."""
    hubs = {"A": world.a, "B": world.b}
    return {name for name, node in hubs.items()
            if (not q.hub_ids or node.id in q.hub_ids) and (not q.municipalities or node.municipality in q.municipalities)}


@dataclass
class Cell:
    group: str
    bucket_start_ms: int
    per_hub: dict  # hub -> list[Reading]

    def sensors(self, hub: str | None = None) -> set[str]:
        return {r.sensor for h, rs in self.per_hub.items() if hub in (None, h) for r in rs}

    def smallest_day(self, hub: str) -> int | None:
        """The fewest sensors of `hub` behind any day of this cell that has readings of it."""
        days = defaultdict(set)
        for r in self.per_hub.get(hub, []):
            days[r.time_ms // DAY_MS].add(r.sensor)
        return min(map(len, days.values()), default=None)

    def withheld_by_b(self, k: int, aggregate: str) -> bool:
        """B withholds a cell with fewer than k of its sensors, or containing such a day; a
        stddev, min or max needs more sensors (docs/privacy.md 2.5: max(k, 3), max(k, 3) + 2)."""
        needed = k if k <= 1 else {"stddev": max(k, 3), "min": max(k, 3) + 2, "max": max(k, 3) + 2}.get(aggregate, k)
        return "B" in self.per_hub and (len(self.sensors("B")) < needed or self.smallest_day("B") < k)


def cells_of(world: World, q: query_pb2.QuerySpec) -> list[Cell]:
    found: dict[tuple[str, int], Cell] = {}
    hubs = asked_hubs(world, q)
    for r in world.readings:
        if r.hub in hubs and (r.dataset, r.metric) == (q.dataset, q.metric) and q.start_ms <= r.time_ms < q.end_ms:
            group = {"A": world.a, "B": world.b}[r.hub].municipality if q.group_by == "municipality" else "region"
            key = (group, bucket_of(q, r.time_ms))
            found.setdefault(key, Cell(group, key[1], defaultdict(list))).per_hub[r.hub].append(r)
    return [found[key] for key in sorted(found, key=lambda key: (key[1], key[0]))]


def aggregate(values: list[float], q: query_pb2.QuerySpec) -> float:
    if q.aggregate == "quantile":
        s = sketch.Sketch()
        for v in values:
            s.add(v)
        return s.quantile(q.quantile)
    return {"count": lambda: float(len(values)), "sum": lambda: math.fsum(values),
            "mean": lambda: math.fsum(values) / len(values), "min": lambda: min(values), "max": lambda: max(values),
            "stddev": lambda: statistics.stdev(values) if len(values) > 1 else 0.0}[q.aggregate]()


def coarse_quantile(world: World, q: query_pb2.QuerySpec, cell: Cell) -> float | None:
    """A quantile as the providing hub releases it (quantiles are per municipality, so one hub's
    cell): read from its readings' sketch coarsened under the hub's k (docs/querying.md 7.6),
    None when no coarsening satisfies the rules (the cell is withheld)."""
    [(hub, rs)] = [(h, rs) for h, rs in cell.per_hub.items() if rs]
    k = world.k(q.dataset) if hub == "B" else policy.own_data_grant().min_group_size
    rows = [(0, *sketch.bin_of(r.value), r.sensor, 1) for r in rs]
    coarse = partials.coarse_sketches(rows, partials.coarse_threshold(k)).get(0)
    return None if coarse is None else partials.coarse_quantile(coarse, q.quantile)


def assert_exact(world: World, q: query_pb2.QuerySpec, answer: query_service_pb2.QueryAnswer) -> None:
    """The answer is exactly what the readings give, with B's small cells, and B's cells that
    contain a small day, withheld (and every row they touch); A's own cells are never withheld."""
    expected, values = [], []
    for cell in cells_of(world, q):
        withheld = cell.withheld_by_b(world.k(q.dataset), q.aggregate)
        readings = [r.value for rs in cell.per_hub.values() for r in rs]
        value = 0.0
        if not withheld and q.aggregate == "quantile":  # read from the coarsened sketch, or withheld
            value_or_none = coarse_quantile(world, q, cell)
            withheld, value = value_or_none is None, value_or_none or 0.0
        elif not withheld:
            value = aggregate(readings, q)
        expected.append((cell.group, cell.bucket_start_ms, withheld, 0 if withheld else len(readings),
                         0 if withheld else len(cell.sensors())))
        values.append(value)
    assert [(r.group, r.bucket_start_ms, r.suppressed, r.readings, r.contributors) for r in answer.rows] == expected
    for row, want in zip(answer.rows, values, strict=True):
        if q.aggregate == "stddev":
            assert math.isclose(row.value, want, rel_tol=1e-9), (row, want)
        else:
            assert row.value == want, (q.aggregate, row, want)


def assert_safe(world: World, q: query_pb2.QuerySpec, answer: query_service_pb2.QueryAnswer) -> None:
    """Nothing in the answer reveals a reading, a sensor, or a cell of fewer than k of B's sensors."""
    k = world.k(q.dataset)
    cells = {(c.group, c.bucket_start_ms): c for c in cells_of(world, q)}
    for row in answer.rows:
        if row.suppressed:
            assert (row.value, row.readings, row.contributors) == (0.0, 0, 0), row
            continue
        cell = cells[(row.group, row.bucket_start_ms)]
        b_sensors = cell.sensors("B")
        if b_sensors:  # a row with B's data in it
            assert len(b_sensors) >= k and row.contributors >= k, f"released {row} from {len(b_sensors)} of B's sensors (k = {k})"
            assert cell.smallest_day("B") >= k, f"released {row} containing a day of {cell.smallest_day('B')} of B's sensors"
        if len(cell.sensors()) == 1:
            raw = {r.value for rs in cell.per_hub.values() for r in rs}
            assert cell.sensors() <= cell.sensors("A") or row.value not in raw, f"{row} is a raw reading"
    for p in answer.provenance:
        if p.status == "answered" and p.hub_id == world.b.id:
            assert_partial_safe(query_pb2.PartialResult.FromString(p.partial.partial), k)
    assert_no_sensor_ids(world, answer.SerializeToString())


def assert_partial_safe(partial: query_pb2.PartialResult, k: int) -> None:
    """What a provider signs for the asker: no cell below k, and withheld cells without figures."""
    assert partial.min_group_size == k
    for cell in partial.cells:
        if cell.suppressed:
            assert cell == query_pb2.Cell(group=cell.group, bucket_start_ms=cell.bucket_start_ms, suppressed=True), cell
        else:
            assert cell.contributors >= k, cell


def assert_no_sensor_ids(world: World, data: bytes) -> None:
    for sensor_id in world.sensor_ids:
        assert sensor_id.encode() not in data.lower() and bytes.fromhex(sensor_id) not in data, f"sensor {sensor_id} in the answer"


async def ask(world: World, q: query_pb2.QuerySpec, as_partner: bool = False) -> query_service_pb2.QueryAnswer:
    """A's admin asks (or the partner asks B with Query.Run); every answer is checked for
    safety, then for exactness."""
    if as_partner:
        p = world.partner
        answer = opened(await world.b.query.Run(asked(p.key, p.partner_id, world.b, q), timeout=10), p.public_key)
    else:
        answer = await world.a.run_query(q)
    assert_safe(world, q, answer)
    assert_exact(world, q, answer)
    return answer


async def ask_b_directly(world: World, q: query_pb2.QuerySpec) -> query_pb2.PartialResult:
    """What a malicious A gets by calling B's Query.Partial itself, without its own merging code."""
    original = asked(world.a.key, world.a.id, world.a, q)
    response = await world.b.query.Partial(relay(world.a, world.b, original), timeout=10)
    partial = open_partial(response, world.b.id, original)
    assert_no_sensor_ids(world, partial.SerializeToString())
    assert_partial_safe(partial, world.k(q.dataset))
    return partial


async def b_refuses(world: World, q: query_pb2.QuerySpec, code: grpc.StatusCode, message: str) -> None:
    """B refuses the query: asked alone, with `code`; asked with every hub (A answers its own
    data), B is `denied` with the message and none of B's cells comes back."""
    alone = query_pb2.QuerySpec()
    alone.CopyFrom(q)
    alone.hub_ids[:] = [world.b.id]
    await refused(lambda: world.a.run_query(alone), code, message)
    q.ClearField("hub_ids")
    answer = await world.a.run_query(q)
    [b] = [p for p in answer.provenance if p.hub_id == world.b.id]
    assert (b.status, answer.partial, list(answer.missing_hubs)) == ("denied", True, [world.b.id]) and message in b.reason
    assert not b.HasField("partial")
    assert all(r.group != world.b.municipality for r in answer.rows)
    assert_no_sensor_ids(world, answer.SerializeToString())


def query(dataset: str = "air_quality", **fields) -> query_pb2.QuerySpec:
    metric = DATASETS[dataset][0][0]
    return spec(**{"dataset": dataset, "metric": metric, "start_ms": day_ms(0), "end_ms": day_ms(DAYS), **fields})


def days_with(count: int) -> list[int]:
    return [d for d, present in enumerate(PATTERN) if len(present) == count]


# -- (a) overlapping windows, shifted ---------------------------------------------------------------

@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("shift", [HOUR_MS, DAY_MS], ids=["by an hour", "by a day"])
async def test_overlapping_windows_are_refused_unless_aligned_and_never_release_a_small_cell(world, dataset, shift):
    answered = 0
    for j in range(8):
        start = day_ms(0) + j * shift
        q = query(dataset, bucket="window", aggregate="sum", start_ms=start, end_ms=start + 3 * DAY_MS)
        if start % DAY_MS:
            await b_refuses(world, q, grpc.StatusCode.PERMISSION_DENIED,
                            f"the window must start and end on day boundaries under agreement {world.agreements[dataset]}")
            continue
        await ask(world, q)
        answered += 1
    assert answered == (8 if shift == DAY_MS else 1)


# -- (b) filters that isolate B ---------------------------------------------------------------------

TARGETS = {
    "B only": lambda w: dict(hub_ids=[w.b.id]),
    "B twice": lambda w: dict(hub_ids=[w.b.id, w.b.id]),
    "every hub": lambda w: dict(),
    "A and B": lambda w: dict(hub_ids=[w.a.id, w.b.id]),
    "B's municipality": lambda w: dict(municipalities=[w.b.municipality]),
    "B's municipality, every hub named": lambda w: dict(municipalities=[w.b.municipality], hub_ids=[w.a.id, w.b.id]),
    "both municipalities": lambda w: dict(municipalities=[w.a.municipality, w.b.municipality]),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("group_by", ["municipality", "region"])
@pytest.mark.parametrize("dataset,metric", [("air_quality", "pm25"), ("air_quality", "no2"), ("traffic", "vehicles")])
async def test_isolating_bergen_still_gives_only_large_cells(world, target, group_by, dataset, metric):
    answer = await ask(world, query(dataset, metric=metric, aggregate="mean", group_by=group_by, **TARGETS[target](world)))
    b_rows = [r for r in answer.rows if r.group in (world.b.municipality, "region")]
    small = [d for d in range(DAYS) if 0 < len(PATTERN[d]) < world.k(dataset)]
    assert {r.bucket_start_ms for r in b_rows if r.suppressed} == {day_ms(d) for d in small}


async def test_a_municipality_filter_that_excludes_the_hub_named_is_refused(world):
    calls = await world.b.requests_from(world.a.id)
    await refused(lambda: world.a.run_query(query(hub_ids=[world.b.id], municipalities=[world.a.municipality])),
                  grpc.StatusCode.INVALID_ARGUMENT, "no hub of this region matches the municipality filter and hub ids")
    assert await world.b.requests_from(world.a.id) == calls


async def test_a_municipality_filter_naming_a_municipality_without_a_hub_is_refused(world):
    """The asker refuses an answer that lists no hub of a municipality it named (docs/querying.md
    7.4 step 6), so the entry hub refuses such a query up front instead of answering without it."""
    calls = await world.b.requests_from(world.a.id)
    await refused(lambda: world.a.run_query(query(municipalities=[world.b.municipality, "3905"])),
                  grpc.StatusCode.INVALID_ARGUMENT, "no hub of this region among those asked holds municipality 3905")
    assert await world.b.requests_from(world.a.id) == calls


async def test_the_attackers_own_sensor_cannot_lift_a_small_cell_over_the_threshold(world):
    """Region-wide, A's own no2 sensor would make every day's cell big enough; B's withheld
    cells still withhold the merged row."""
    answer = await ask(world, query(metric="no2", aggregate="sum", group_by="region"))
    withheld = {r.bucket_start_ms for r in answer.rows if r.suppressed}
    assert withheld == {day_ms(d) for d in days_with(1)}
    silent_day = [r for r in answer.rows if r.bucket_start_ms == day_ms(PATTERN.index(set()))]
    assert [(r.suppressed, r.contributors) for r in silent_day] == [(False, 1)], "A's own data alone, on B's silent day"


# -- (c) grouping tricks ----------------------------------------------------------------------------

@pytest.mark.parametrize("group_by", ["sensor", "sensor_id", "time_bucket", "hub", ""])
async def test_grouping_by_anything_but_municipality_or_region_is_refused(world, group_by):
    q = query(group_by=group_by)
    await refused(lambda: world.a.run_query(q), grpc.StatusCode.INVALID_ARGUMENT, f"grouping {group_by!r} is not one of")
    # B checks the shape itself, for a hub that skips its own checks and relays anyway.
    await refused(lambda: ask_b_directly(world, q), grpc.StatusCode.INVALID_ARGUMENT, f"grouping {group_by!r} is not one of")


@pytest.mark.parametrize("dataset", sorted(DATASETS))
async def test_hourly_buckets_are_refused_when_the_smallest_is_a_day(world, dataset):
    q = query(dataset, bucket="hour")
    message = f"bucket 'hour' is finer than agreement {world.agreements[dataset]} allows (smallest: day)"
    await b_refuses(world, q, grpc.StatusCode.PERMISSION_DENIED, message)
    await refused(lambda: ask_b_directly(world, q), grpc.StatusCode.PERMISSION_DENIED, message)


# -- (d) a window in which too few sensors reported -------------------------------------------------

@pytest.mark.parametrize("aggregate", ALL_AGGREGATES)
@pytest.mark.parametrize("dataset", sorted(DATASETS))
async def test_a_day_with_too_few_sensors_is_withheld(world, dataset, aggregate):
    for d in [d for d in range(DAYS) if 0 < len(PATTERN[d]) < world.k(dataset)]:
        for bucket in ("day", "window"):
            q = query(dataset, aggregate=aggregate, quantile=0.5, bucket=bucket, start_ms=day_ms(d), end_ms=day_ms(d + 1),
                      group_by="municipality" if aggregate == "quantile" else "region")  # no region-wide quantiles
            answer = await ask(world, q)
            assert [(r.suppressed, r.value, r.readings, r.contributors) for r in answer.rows] == [(True, 0.0, 0, 0)]
            [cell] = (await ask_b_directly(world, q)).cells
            assert cell.suppressed and cell.count == 0 and cell.contributors == 0


async def test_a_day_with_no_sensor_has_no_row(world):
    d = PATTERN.index(set())
    answer = await ask(world, query(start_ms=day_ms(d), end_ms=day_ms(d + 1)))
    assert list(answer.rows) == []


# -- (e) differencing -------------------------------------------------------------------------------

@st.composite
def aligned_pairs(draw):
    """Two overlapping day-aligned windows within the data, as an attacker would subtract them."""
    start = draw(st.integers(-1, DAYS - 2))
    end = draw(st.integers(start + 2, DAYS + 1))
    inner_start = draw(st.integers(start, end - 1))
    inner_end = draw(st.integers(inner_start + 1, end))
    return (day_ms(start), day_ms(end)), (day_ms(inner_start), day_ms(inner_end))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(aligned_pairs(), st.sampled_from(sorted(DATASETS)))
async def test_subtracting_aligned_windows_gives_nothing_finer_than_a_day(world, pair, dataset):
    """The difference of two released windows is an aggregate over whole days (the days of the
    outer window outside the inner one), each with at least k sensors, never over part of a day
    or a small day; and an inner window moved by an hour, which would isolate hours, is refused."""
    (outer, inner) = pair
    window = lambda s, e: query(dataset, aggregate="sum", bucket="window", start_ms=s, end_ms=e)  # noqa: E731
    answers = [await ask(world, window(*w)) for w in pair]
    if all(a.rows and not a.rows[0].suppressed for a in answers):
        (o,), (i,) = answers[0].rows, answers[1].rows
        metric = DATASETS[dataset][0][0]
        outside = [r.value for r in world.readings if (r.hub, r.dataset, r.metric) == ("B", dataset, metric)
                   and outer[0] <= r.time_ms < outer[1] and not inner[0] <= r.time_ms < inner[1]]
        assert o.value - i.value == math.fsum(outside) and o.readings - i.readings == len(outside)
        outside_days = {(t - FIRST_DAY) // DAY_MS for t in range(outer[0], outer[1], DAY_MS) if not inner[0] <= t < inner[1]}
        assert all(len(PATTERN[d]) >= world.k(dataset) for d in outside_days if 0 <= d < DAYS and PATTERN[d])
    await b_refuses(world, window(inner[0] + HOUR_MS, inner[1] + HOUR_MS), grpc.StatusCode.PERMISSION_DENIED,
                    f"the window must start and end on day boundaries under agreement {world.agreements[dataset]}")


async def test_differencing_two_windows_cannot_recover_a_suppressed_day(world):
    """The day before a lone sensor's day is released; the two days together would be large
    enough, but are withheld, since subtracting the first day would give the lone sensor's."""
    lone = days_with(1)[0]
    assert PATTERN[lone - 1] == {0, 1, 2}
    window = lambda s, e: query(aggregate="sum", bucket="window", start_ms=day_ms(s), end_ms=day_ms(e))  # noqa: E731
    [before] = (await ask(world, window(lone - 1, lone))).rows
    [alone] = (await ask(world, window(lone, lone + 1))).rows
    [both] = (await ask(world, window(lone - 1, lone + 1))).rows
    assert (before.suppressed, alone.suppressed, both.suppressed) == (False, True, True)
    assert both.contributors == 0 and both.value == 0.0
    # Coarser buckets around it are withheld likewise: the week and the month that contain it.
    for bucket, start, end in (("week", FIRST_DAY, FIRST_DAY + 7 * DAY_MS), ("month", ms(2019, 1, 1), ms(2019, 2, 1))):
        answer = await ask(world, query(aggregate="sum", bucket=bucket, start_ms=start, end_ms=end))
        assert [r.suppressed for r in answer.rows] == [True]


async def test_whole_windows_on_day_boundaries_cannot_be_differenced_either(world):
    """Under an agreement that releases whole windows only, windows still start and end on day
    boundaries: two overlapping windows differ by whole days, and a day with a lone sensor must
    not come out of the difference."""
    lone = days_with(1)[0]
    window = lambda s, e: query(aggregate="sum", bucket="window", start_ms=day_ms(s), end_ms=day_ms(e),  # noqa: E731
                                group_by="municipality", purpose_code="research", hub_ids=[world.b.id])
    [before] = (await ask(world, window(lone - 1, lone), as_partner=True)).rows
    [alone] = (await ask(world, window(lone, lone + 1), as_partner=True)).rows
    [both] = (await ask(world, window(lone - 1, lone + 1), as_partner=True)).rows
    assert (before.suppressed, alone.suppressed, both.suppressed) == (False, True, True)


# -- random aligned queries -------------------------------------------------------------------------

@st.composite
def attacks(draw):
    dataset = draw(st.sampled_from(sorted(DATASETS)))
    bucket = draw(st.sampled_from(["day", "week", "month", "window"]))
    if bucket == "week":
        start = FIRST_DAY + draw(st.integers(-1, 1)) * 7 * DAY_MS
        end = start + draw(st.integers(1, 3)) * 7 * DAY_MS
    elif bucket == "month":
        start, end = draw(st.sampled_from([(ms(2019, 1, 1), ms(2019, 2, 1)), (ms(2018, 12, 1), ms(2019, 2, 1))]))
    else:
        first = draw(st.integers(-2, DAYS))
        start, end = day_ms(first), day_ms(draw(st.integers(first + 1, DAYS + 2)))
    aggregate = draw(st.sampled_from(ALL_AGGREGATES))
    return query(dataset, metric=draw(st.sampled_from(DATASETS[dataset][0])), aggregate=aggregate,
                 quantile=draw(st.sampled_from([0.01, 0.5, 0.99])), bucket=bucket, start_ms=start, end_ms=end,
                 group_by="municipality" if aggregate == "quantile" else draw(st.sampled_from(["municipality", "region"])))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attacks(), st.sampled_from(sorted(TARGETS)))
async def test_random_aligned_queries_never_release_a_small_cell(world, q, target):
    for key, value in TARGETS[target](world).items():
        getattr(q, key).extend(value)
    await ask(world, q)
    await ask_b_directly(world, q)
