"""Issue 9 follow-up: the release log made cheap for fine-grained queries (per-reading
fingerprints of hourly sub-cells, the high-water mark of windows released whole) must withhold
exactly what it withheld before, on live hubs. Each test repeats an attack on the shortcut and
states what it recovers: nothing beyond the cells the agreement grants (docs/privacy.md 2)."""

from __future__ import annotations

import asyncio
import datetime as dt

from federation.query import releases
from node.app.sensor_client import replay
from node.senml import Reading
from node.storage.base import AggregateRequest, ReleasedRun, ReleasedSubcell, ReleaseLine
from tests.conftest import LiveHub, sign_agreement, start_peered
from tests.privacy.test_privacy_release_log import _ask, _total
from tests.test_federation_region import TERMS

HOUR = 3_600_000
HOURLY = TERMS.replace("min_group_size = 1", "min_group_size = 3").replace('smallest_bucket = "month"', 'smallest_bucket = "hour"')
DAY0 = int(dt.datetime(2019, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


async def _stations(provider: LiveHub, tmp_path, hours: int) -> list:
    stations = [await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"]) for n in range(4)]
    for n, sensor in enumerate(stations):
        await asyncio.to_thread(replay, sensor, [Reading("pm25", DAY0 + h * HOUR, 5.0 + n + h % 3) for h in range(hours)])
    return stations


async def _run(provider: LiveHub, consumer: LiveHub, start: int, end: int) -> ReleasedRun | None:
    line = ReleaseLine(consumer.hub.config.hub_id, "air_quality", "pm25")
    return await provider.hub.storage.read(lambda s: s.released_run(line, releases.READINGS, "hour", start, end))


async def test_a_changed_reading_inside_a_window_released_whole_is_withheld_on_the_repeat(tmp_path):
    """Tried: six hours released whole by hour (logged as a run), the same window again (the
    high-water mark: one comparison, the same figures), then one late reading inside hour 3 and
    the window again. Before the shortcut was checked this way, a mark that compared only the
    window (not its content) would release hour 3 again, and the two hour-3 sums would differ by
    the late reading exactly. Now hour 3 is withheld (changed since released), the other five
    hours are released with the figures of the first answer: nothing recovered."""
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        stations = await _stations(provider, tmp_path, 6)
        await sign_agreement(provider, consumer, HOURLY)
        window = (DAY0, DAY0 + 6 * HOUR)
        first = await _ask(consumer, provider, *window, "hour")
        assert [r.suppressed for r in first] == [False] * 6
        run = await _run(provider, consumer, *window)
        assert run is not None and len(run.digest) == 32, "the window was released whole"
        again = await _ask(consumer, provider, *window, "hour")
        assert [_total(r) for r in again] == [_total(r) for r in first]

        await asyncio.to_thread(replay, stations[0], [Reading("pm25", DAY0 + 3 * HOUR + 20 * 60_000, 500.0)])
        changed = await _ask(consumer, provider, *window, "hour")
        assert [r.suppressed for r in changed] == [False, False, False, True, False, False], "hour 3 minus its first: the late reading"
        assert [_total(r) for i, r in enumerate(changed) if i != 3] == [_total(r) for i, r in enumerate(first) if i != 3]
        assert await _run(provider, consumer, *window) == run, "the mark stays that of the window's content when released"
        audit = [r.entry for r in await provider.hub.storage.read(lambda s: s.audit_rows())]
        assert any(b'"query.release_log"' in e and b"changed_since_released: 1 (2019-01-01T03:00Z)" in e for e in audit)
    finally:
        await consumer.stop()
        await provider.stop()


async def test_a_window_with_a_withheld_cell_is_never_a_high_water_mark(tmp_path):
    """Tried: hours 0-2 released; a late reading in hour 1; hours 0-5 asked twice. Had the
    second window been logged as released whole although hour 1 was withheld, its repeat would
    pass the mark and release hour 1 again (minus the first release: the late reading). Now the
    window is no run, and hour 1 is withheld on every repeat, the other hours are released."""
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        stations = await _stations(provider, tmp_path, 6)
        await sign_agreement(provider, consumer, HOURLY)
        assert [r.suppressed for r in await _ask(consumer, provider, DAY0, DAY0 + 3 * HOUR, "hour")] == [False] * 3
        await asyncio.to_thread(replay, stations[1], [Reading("pm25", DAY0 + HOUR + 30 * 60_000, 500.0)])
        window = (DAY0, DAY0 + 6 * HOUR)
        for _ in range(2):
            rows = await _ask(consumer, provider, *window, "hour")
            assert [r.suppressed for r in rows] == [False, True, False, False, False, False]
        assert await _run(provider, consumer, *window) is None
    finally:
        await consumer.stop()
        await provider.stop()


async def test_hourly_sub_cells_logged_with_per_contributor_summaries_still_hold(tmp_path):
    """Rows logged before the per-reading fingerprints (scheme 2: per-contributor summaries)
    are still checked by their own fingerprint. Tried: two hours released under the old scheme,
    a late reading in hour 0, then the two hours asked (the new log holds nothing of them): hour
    0 is withheld, hour 1 (unchanged) is released again."""
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        stations = await _stations(provider, tmp_path, 2)
        agreement = await sign_agreement(provider, consumer, HOURLY)
        line = ReleaseLine(consumer.hub.config.hub_id, "air_quality", "pm25")
        by_hour = AggregateRequest("air_quality", "pm25", DAY0, DAY0 + 2 * HOUR, "hour", None)
        then = await provider.hub.storage.read(lambda s: s.contributions(by_hour))
        old = [ReleasedSubcell(DAY0 + h * HOUR, DAY0 + (h + 1) * HOUR, releases.SUBCELL, "hour",
                               releases.fingerprint(then[DAY0 + h * HOUR]), 4, agreement, 0) for h in range(2)]
        await provider.hub.storage.write(lambda s: s.log_releases_checked(line, DAY0, DAY0 + 2 * HOUR, lambda _: old))
        await asyncio.to_thread(replay, stations[2], [Reading("pm25", DAY0 + 10 * 60_000, 500.0)])
        rows = await _ask(consumer, provider, DAY0, DAY0 + 2 * HOUR, "hour")
        assert [r.suppressed for r in rows] == [True, False], "the old row's release of hour 0 minus this one: the late reading"
        assert rows[1].contributors == 4
    finally:
        await consumer.stop()
        await provider.stop()
