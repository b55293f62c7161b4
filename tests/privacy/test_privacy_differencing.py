"""Issue 9, attack 3: differencing over time, against live hubs.

Tried: the same daily cell before and after a late reading, and after a sensor enrolment.
Before, both were released and their difference was one station's figures (recovery error 0).
Now the provider's release log withholds the second release; see the test's docstring."""

from __future__ import annotations

import asyncio
import datetime as dt

from node.api.v1 import query_pb2
from node.app.sensor_client import replay
from node.senml import Reading
from tests.conftest import sign_agreement, start_peered
from tests.test_federation_region import TERMS


def ms(year: int, month: int) -> int:
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp() * 1000)


def _send(sensor, readings):
    replay(sensor, readings)


THREE_PER_CELL = TERMS.replace("min_group_size = 1", "min_group_size = 3").replace('smallest_bucket = "month"', 'smallest_bucket = "day"')
DAY = 86_400_000


async def test_a_released_cell_is_not_released_again_with_other_content(tmp_path):
    """Tried: the same daily sum before and after (a) a late reading of one station, (b) one
    station enrolled with readings in that day. Before issue 9 both answers were released and
    their difference was that one station's figure (recovery error 0). Now the second release
    is withheld, and so is a change by k = 3 new stations: a released day is frozen."""
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        stations = [await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"]) for n in range(4)]
        day = ms(2019, 1)
        for n, sensor in enumerate(stations):
            await asyncio.to_thread(_send, sensor, [Reading("pm25", day + h * 3_600_000, 5.0 + n) for h in range(12)])
        await sign_agreement(provider, consumer, THREE_PER_CELL)

        async def daily_sum():
            spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=day, end_ms=day + DAY,
                                       bucket="day", group_by="municipality", purpose_code="environmental_monitoring",
                                       hub_ids=[provider.hub.config.hub_id])
            [row] = (await consumer.admin.RunQuery(spec, metadata=consumer.admin_metadata)).rows
            return row

        first = await daily_sum()
        assert not first.suppressed and first.contributors == 4
        assert not (await daily_sum()).suppressed  # nothing changed: the same release again reveals nothing new

        # (a) a late reading from station 0: one contributor changed what it added
        await asyncio.to_thread(_send, stations[0], [Reading("pm25", day + 20 * 3_600_000, 500.0)])
        late = await daily_sum()
        assert late.suppressed and late.value == 0, "the difference would be station 0's late reading"

        # (b) one more station enrolled with readings that day: still fewer than 3 changed
        newcomer = await provider.add_sensor(tmp_path, "station-new", metrics=["pm25"])
        await asyncio.to_thread(_send, newcomer, [Reading("pm25", day + h * 3_600_000, 42.0) for h in range(12)])
        assert (await daily_sum()).suppressed

        # Three more stations: a change by k contributors. Still withheld: a released sub-cell
        # (here the day) is never released again with other content, since even a k-sized
        # difference is a group's figures for a part of the day (tests/privacy/test_privacy_live_day.py).
        for n in range(2):
            extra = await provider.add_sensor(tmp_path, f"station-extra{n}", metrics=["pm25"])
            await asyncio.to_thread(_send, extra, [Reading("pm25", day + h * 3_600_000, 7.0) for h in range(12)])
        assert (await daily_sum()).suppressed
        # The next day, never released before, is released with all seven stations.
        for sensor in [*stations, newcomer]:
            await asyncio.to_thread(_send, sensor, [Reading("pm25", day + DAY + 3_600_000, 6.0)])
        spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=day + DAY, end_ms=day + 2 * DAY,
                                   bucket="day", group_by="municipality", purpose_code="environmental_monitoring",
                                   hub_ids=[provider.hub.config.hub_id])
        [next_day] = (await consumer.admin.RunQuery(spec, metadata=consumer.admin_metadata)).rows
        assert not next_day.suppressed and next_day.contributors == 5
    finally:
        await consumer.stop()
        await provider.stop()
