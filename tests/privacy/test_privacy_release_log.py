"""Issue 9, "What to build" 3: the release log against three attacks on it, on live hubs.

An independent attacker broke the first release log (which compared only releases of the same
extent, under the same agreement id, by the number of contributors that changed):
1. two daily cells, a late reading, then the same two days as one window cell: the difference
   was the late reading exactly;
2. a renewal (v2 superseding v1, identical terms) started an empty log: the withheld cell came
   out again;
3. re-asking one daily cell as the day's readings arrived gave the hourly figures (k = 1: the
   station's readings; k = 3 with four stations: hourly sums, finer than the agreement's day).
Each test repeats the attack and states what it recovers now: nothing beyond the cells the
agreement grants (federation/query/releases.py; docs/privacy.md section 2)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from federation import envelope, partials, policy, sealing
from federation.query import releases
from federation.query.provider import RUN_METHOD, Provider
from node.api.v1 import admin_pb2, query_pb2
from node.app.sensor_client import replay
from node.clock import SYSTEM_CLOCK, ManualClock
from node.senml import Reading
from node.storage.base import AggregateRequest, ReleasedSubcell, ReleaseLine
from tests.conftest import LiveHub, make_hub_dir, sign_agreement, start_live_hub, start_peered
from tests.test_federation_region import TERMS

HOUR = 3_600_000
DAY = 24 * HOUR
THREE_PER_CELL = TERMS.replace("min_group_size = 1", "min_group_size = 3").replace('smallest_bucket = "month"', 'smallest_bucket = "day"')


def ms(year: int, month: int) -> int:
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp() * 1000)


def _send(sensor, readings) -> None:
    replay(sensor, readings)


async def _ask(consumer: LiveHub, provider: LiveHub, start: int, end: int, bucket: str = "day") -> list[query_pb2.Row]:
    spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=start, end_ms=end, bucket=bucket,
                               group_by="municipality", purpose_code="environmental_monitoring", hub_ids=[provider.hub.config.hub_id])
    answer = await consumer.admin.RunQuery(spec, metadata=consumer.admin_metadata)
    assert [p.status for p in answer.provenance] == ["answered"], answer.provenance
    return list(answer.rows)


def _total(row: query_pb2.Row) -> float | None:
    return None if row.suppressed else row.value * row.readings


async def test_a_late_reading_is_not_recovered_by_changing_the_extent(tmp_path):
    """Tried: days 1 and 2 released; a late reading (500) of one station on day 1; then the two
    days as one window cell. Before: the window minus the two days gave 500.0 exactly. Now the
    window overlaps day 1, released with other content, and is withheld: nothing recovered.
    The other way round too: a window released, a late reading, then day 1 alone: withheld;
    day 2, unchanged, is still released."""
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        stations = [await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"]) for n in range(4)]
        day = ms(2019, 1)
        for n, sensor in enumerate(stations):
            await asyncio.to_thread(_send, sensor, [Reading("pm25", day + d * DAY + h * HOUR, 5.0 + n)
                                                    for d in range(5) for h in range(12)])
        await sign_agreement(provider, consumer, THREE_PER_CELL)

        before = await _ask(consumer, provider, day, day + 2 * DAY)
        assert [r.suppressed for r in before] == [False, False]
        await asyncio.to_thread(_send, stations[0], [Reading("pm25", day + 20 * HOUR, 500.0)])
        [window] = await _ask(consumer, provider, day, day + 2 * DAY, "window")
        assert window.suppressed and window.value == 0, "window - day1 - day2 would be the late reading"
        assert [r.suppressed for r in await _ask(consumer, provider, day, day + 2 * DAY)] == [True, False]
        audit = [r.entry for r in await provider.hub.storage.read(lambda s: s.audit_rows())]
        assert any(b'"query.release_log"' in e and b"changed_since_released: 1 (2019-01-01)" in e for e in audit)

        # Days 3 and 4 first as one window, then a late reading on day 3, then the days.
        [window] = await _ask(consumer, provider, day + 2 * DAY, day + 4 * DAY, "window")
        assert not window.suppressed and window.contributors == 4
        await asyncio.to_thread(_send, stations[1], [Reading("pm25", day + 2 * DAY + 20 * HOUR, 500.0)])
        third, fourth = await _ask(consumer, provider, day + 2 * DAY, day + 4 * DAY)
        assert third.suppressed, "day 3 minus its share of the window would be the late reading"
        assert not fourth.suppressed and fourth.contributors == 4

        # Days 5 and 6 as one window while day 6 is empty; then day 6 fills: the empty day was
        # released as part of the window, so the window is not released again.
        [window] = await _ask(consumer, provider, day + 4 * DAY, day + 6 * DAY, "window")
        assert not window.suppressed and window.readings == 48
        for n, sensor in enumerate(stations):
            await asyncio.to_thread(_send, sensor, [Reading("pm25", day + 5 * DAY + h * HOUR, 9.0 + n) for h in range(3)])
        [window] = await _ask(consumer, provider, day + 4 * DAY, day + 6 * DAY, "window")
        assert window.suppressed, "the window minus the first would be day 6 as it filled"
    finally:
        await consumer.stop()
        await provider.stop()


async def test_a_renewal_or_a_new_agreement_continues_the_release_log(tmp_path):
    """Tried: a daily cell released under v1, a late reading (withheld under v1), then v2
    superseding v1 with identical terms. Before: v2 released the cell again and the difference
    was 500.0 exactly. Now the log belongs to the agreement line (the asker, dataset and metric):
    withheld under v2, and under a brand-new agreement signed after v2 is revoked (which releases
    months: the month holding the changed day is withheld, a month of unchanged released days
    is released): nothing recovered."""
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        stations = [await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"]) for n in range(4)]
        day = ms(2019, 1)
        for n, sensor in enumerate(stations):
            await asyncio.to_thread(_send, sensor, [Reading("pm25", t + h * HOUR, 5.0 + n) for t in (day, ms(2019, 2)) for h in range(12)])
        v1 = await sign_agreement(provider, consumer, THREE_PER_CELL)
        [first] = await _ask(consumer, provider, day, day + DAY)
        assert not first.suppressed
        [february_first] = await _ask(consumer, provider, ms(2019, 2), ms(2019, 2) + DAY)
        assert not february_first.suppressed
        await asyncio.to_thread(_send, stations[0], [Reading("pm25", day + 20 * HOUR, 500.0)])
        [under_v1] = await _ask(consumer, provider, day, day + DAY)
        assert under_v1.suppressed

        v2 = await sign_agreement(provider, consumer, f'version = 2\nsupersedes = "{v1}"\n' + THREE_PER_CELL)
        [under_v2] = await _ask(consumer, provider, day, day + DAY)
        assert under_v2.suppressed, "v2 minus v1 would be the late reading"

        await provider.admin.RevokeAgreement(admin_pb2.RevokeAgreementRequest(agreement_id=v2, reason="ends the line"),
                                             metadata=provider.admin_metadata)
        # A fresh agreement, same partner and dataset, that releases months only: January holds
        # the changed day, February only days released unchanged.
        await sign_agreement(provider, consumer, THREE_PER_CELL.replace('smallest_bucket = "day"', 'smallest_bucket = "month"'))
        january, february = await _ask(consumer, provider, day, ms(2019, 3), "month")
        assert january.suppressed, "the new agreement's January minus v1's day would be the late reading"
        assert not february.suppressed and february.value == february_first.value
    finally:
        await consumer.stop()
        await provider.stop()


@pytest.mark.parametrize("k,stations", [(1, 1), (3, 4)])
async def test_a_daily_cell_asked_every_hour_gives_no_hourly_values(tmp_path, k, stations):
    """Tried: smallest bucket a day; the asker re-asks one (closed, 2019) day while its readings
    arrive hour by hour, six hours. Before: every re-release was answered and successive
    differences were the hourly figures (error 0; k = 1: one station's readings, k = 3: four
    stations' hourly sums). Now the day is released once, with what it held then (a day cell,
    which the agreement grants), and every later answer with other content is withheld: of the
    six hourly figures, none after the first is recovered."""
    terms = THREE_PER_CELL.replace("min_group_size = 3", f"min_group_size = {k}")
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        sensors = [await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"]) for n in range(stations)]
        day = ms(2019, 1)
        await sign_agreement(provider, consumer, terms)
        totals = []
        for h in range(6):
            values = [4.0 + 2.5 * h + 0.7 * n + (h * n) % 3 for n in range(stations)]
            for sensor, v in zip(sensors, values, strict=True):
                await asyncio.to_thread(_send, sensor, [Reading("pm25", day + h * HOUR, v)])
            [row] = await _ask(consumer, provider, day, day + DAY)
            totals.append(_total(row))
        assert totals[0] is not None and totals[1:] == [None] * 5, totals
    finally:
        await consumer.stop()
        await provider.stop()


async def test_asking_the_last_seven_days_every_morning_releases_the_closed_days(tmp_path):
    """A partner's normal use survives: each morning (06:00 UTC) it asks the last seven days and
    today by day, while four stations report every hour. Today is withheld as still open; every
    closed day is released, the same figures each morning; a day released stays released. Asked
    at 01:00, yesterday (ended less than two hours ago) is withheld as open too, and released at 06:00."""
    clock = ManualClock(SYSTEM_CLOCK.now_ms() // DAY * DAY + HOUR)  # today 01:00 UTC, both hubs' time
    consumer = await start_live_hub(make_hub_dir(tmp_path / "consumer", "1103"), clock=clock)
    provider = await start_live_hub(make_hub_dir(tmp_path / "provider", "4601"), clock=clock)
    try:
        for x, y in ((consumer, provider), (provider, consumer)):
            await x.admin.AddPeer(admin_pb2.AddPeerRequest(address=y.hub.endpoint.grpc_address, hub_id=y.hub.config.hub_id),
                                  metadata=x.admin_metadata)
        stations = [await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"]) for n in range(4)]
        await sign_agreement(provider, consumer, THREE_PER_CELL)
        today = clock.now_ms() // DAY * DAY
        for n, sensor in enumerate(stations):  # the last seven days, and today until 06:00
            await asyncio.to_thread(_send, sensor, [Reading("pm25", t, 5.0 + n + t % 7)
                                                    for t in range(today - 7 * DAY, clock.now_ms(), HOUR)])
        # At 01:00 yesterday ended only an hour ago: still open, withheld, and not frozen.
        rows = await _ask(consumer, provider, today - 7 * DAY, today + DAY)
        assert [r.suppressed for r in rows] == [False] * 6 + [True, True]
        before = clock.now_ms()
        clock.advance(5 * 3600)  # 06:00; the readings of the five hours arrive on time
        for n, sensor in enumerate(stations):
            await asyncio.to_thread(_send, sensor, [Reading("pm25", t, 5.0 + n + t % 7) for t in range(before, clock.now_ms(), HOUR)])
        released: dict[str, float] = {}
        for morning in range(3):
            rows = await _ask(consumer, provider, today - 7 * DAY, today + DAY)
            assert rows[-1].suppressed, "today is still open"
            closed = {r.bucket_label: r for r in rows[:-1]}
            assert len(closed) == 7 and all(not r.suppressed and r.contributors == 4 for r in closed.values()), morning
            for label, r in closed.items():
                assert released.setdefault(label, r.value) == r.value  # the same figures each morning
            # a day passes; its readings arrive on time, until the next morning
            before = clock.now_ms()
            clock.advance(DAY / 1000)
            today += DAY
            for n, sensor in enumerate(stations):
                await asyncio.to_thread(_send, sensor, [Reading("pm25", t, 5.0 + n + t % 7)
                                                        for t in range(before, clock.now_ms(), HOUR)])
        assert len(released) == 9
    finally:
        await consumer.stop()
        await provider.stop()


async def test_two_concurrent_queries_cannot_both_pass_the_check_before_either_logs(tmp_path):
    """Forced interleaving: query A computes its fingerprints and waits; a late reading arrives;
    query B computes its own (with the late reading); then both check and log at once. Had
    check and log been two steps, both would find an empty log and both be released, and their
    difference would be the late reading. In one transaction, exactly one is released."""
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        stations = [await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"]) for n in range(4)]
        day = ms(2019, 1)
        for n, sensor in enumerate(stations):
            await asyncio.to_thread(_send, sensor, [Reading("pm25", day + h * HOUR, 5.0 + n) for h in range(12)])
        await sign_agreement(provider, consumer, THREE_PER_CELL)
        answering = Provider(provider.running.federation)
        key = sealing.new_answer_key()
        arrived, both = [], asyncio.Event()

        async def hold() -> None:
            arrived.append(1)
            if len(arrived) == 2:
                both.set()
            await both.wait()

        answering.release_hooks.before_check = hold
        asker, provider_id = consumer.hub.config.hub_id, provider.hub.config.hub_id

        async def answer() -> query_pb2.Cell:
            query = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=day, end_ms=day + DAY,
                                        bucket="day", group_by="municipality", purpose_code="environmental_monitoring",
                                        hub_ids=[provider_id], answer_key=sealing.public_raw(key))
            signed = envelope.make(consumer.hub.identity.identity_key, asker, provider_id, RUN_METHOD, query=query)
            sealed = await answering.compute(signed, query, asker)
            plain = sealing.open_sealed(sealed.sealed, key, partials.query_digest(signed.payload), provider_id)
            [cell] = query_pb2.PartialResult.FromString(query_pb2.SignedPartial.FromString(plain).partial).cells
            return cell

        first = asyncio.create_task(answer())
        for _ in range(1000):  # until A waits at the check (a generous bound, not a timed assertion)
            if arrived:
                break
            await asyncio.sleep(0.01)
        await asyncio.to_thread(_send, stations[0], [Reading("pm25", day + 20 * HOUR, 500.0)])
        a, b = await asyncio.gather(first, answer())
        assert sorted([a.suppressed, b.suppressed]) == [False, True], (a, b)
        assert (a.count or b.count) in (48, 49)  # A's data had no late reading, B's had it
    finally:
        await consumer.stop()
        await provider.stop()


async def test_a_reading_during_the_answer_withholds_the_cell_and_rows_of_the_old_log_still_count(tmp_path):
    """(1) A late reading lands between the provider's aggregate and its release-log check:
    the figures computed would not match the fingerprints logged, so the cell is withheld
    (changed while answering) and nothing is logged. (2) A row of the log before schema
    version 8 (a whole cell, old fingerprints) still holds: the same content is released
    again, a late reading in it withholds the cell. (3) Days of a released month: only the day
    that changed is withheld."""
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        stations = [await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"]) for n in range(4)]
        day = ms(2019, 1)
        for n, sensor in enumerate(stations):
            await asyncio.to_thread(_send, sensor, [Reading("pm25", day + d * DAY + h * HOUR, 5.0 + n)
                                                    for d in range(2) for h in range(12)])
        agreement = await sign_agreement(provider, consumer, THREE_PER_CELL)
        asker = consumer.hub.config.hub_id
        line = ReleaseLine(asker, "air_quality", "pm25")
        grant = policy.Grant(agreement, 3, None, 100, "day", asker_id=asker)
        spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=day, end_ms=day + DAY, bucket="day",
                                   group_by="municipality", purpose_code="environmental_monitoring")
        request = AggregateRequest("air_quality", "pm25", day, day + DAY, "day", None)
        cells = await provider.hub.storage.read(lambda s: s.aggregate(request))
        await asyncio.to_thread(_send, stations[0], [Reading("pm25", day + 20 * HOUR, 500.0)])
        answering = Provider(provider.running.federation)
        assert await answering._released_before(grant, spec, request, cells, frozenset()) == {day: releases.Withholding.RACED}
        assert await provider.hub.storage.read(lambda s: s.released_overlapping(line, day, day + DAY)) == []

        second = day + DAY
        whole = AggregateRequest("air_quality", "pm25", second, second + DAY, "window", None)
        then = (await provider.hub.storage.read(lambda s: s.contributions(whole)))[second]
        old = ReleasedSubcell(second, second + DAY, releases.LEGACY, "window", releases.legacy_fingerprint(then), 4, agreement, 0)
        await provider.hub.storage.write(lambda s: s.log_releases_checked(line, second, second + DAY, lambda _: [old]))
        [same] = await _ask(consumer, provider, second, second + DAY)
        assert not same.suppressed and same.contributors == 4
        await asyncio.to_thread(_send, stations[1], [Reading("pm25", second + 20 * HOUR, 500.0)])
        [changed] = await _ask(consumer, provider, second, second + DAY)
        assert changed.suppressed, "the old log's release minus this one would be the late reading"

        # (3) A month released, then a late reading on its second day: by day, only that day is
        # withheld (the log is kept per day, the agreement's grain, not per cell asked).
        february = ms(2019, 2)
        for n, sensor in enumerate(stations):
            await asyncio.to_thread(_send, sensor, [Reading("pm25", february + d * DAY + h * HOUR, 5.0 + n)
                                                    for d in range(3) for h in range(12)])
        [month] = await _ask(consumer, provider, february, ms(2019, 3), "month")
        assert not month.suppressed and month.readings == 144
        await asyncio.to_thread(_send, stations[2], [Reading("pm25", february + DAY + 20 * HOUR, 500.0)])
        assert [r.suppressed for r in await _ask(consumer, provider, february, february + 3 * DAY)] == [False, True, False]
    finally:
        await consumer.stop()
        await provider.stop()
