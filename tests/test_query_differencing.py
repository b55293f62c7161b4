"""Small-cell suppression cannot be undone by subtracting released cells.

Two stations report all of 2019 except February, when only one does. With a minimum group
size of 2, February is withheld; a year cell, which would release February's lone station by
subtraction (year minus the eleven released months), is withheld as well."""

from __future__ import annotations

import asyncio
import datetime as dt

from node.api.v1 import query_pb2
from node.senml import Reading
from tests.conftest import sign_agreement, start_peered
from tests.test_federation_region import TERMS


def ms(year: int, month: int) -> int:
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp() * 1000)


TWO_PER_CELL = TERMS.replace("min_group_size = 1", "min_group_size = 2").replace("longest_window_days = 366", "longest_window_days = 800")


async def test_a_cell_containing_a_small_subcell_is_withheld(tmp_path):
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        for n, skip_february in ((1, False), (2, True)):
            sensor = await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"])
            days = [ms(2019, 1) + d * 86_400_000 for d in range(365)]
            readings = [Reading("pm25", t, 10.0 * n + d % 7) for d, t in enumerate(days)
                        if not (skip_february and ms(2019, 2) <= t < ms(2019, 3))]
            await asyncio.to_thread(_send, sensor, readings)
        await sign_agreement(provider, consumer, TWO_PER_CELL)

        async def ask(bucket: str, start: int, end: int):
            spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=start, end_ms=end, bucket=bucket,
                                       group_by="municipality", purpose_code="environmental_monitoring", hub_ids=[provider.hub.config.hub_id])
            answer = await consumer.admin.RunQuery(spec, metadata=consumer.admin_metadata)
            assert [p.status for p in answer.provenance] == ["answered"]
            return {r.bucket_label: r for r in answer.rows}

        months = await ask("month", ms(2019, 1), ms(2020, 1))
        assert months["2019-02"].suppressed and months["2019-02"].value == 0
        assert all(not r.suppressed and r.contributors == 2 for label, r in months.items() if label != "2019-02")
        year = await ask("year", ms(2019, 1), ms(2020, 1))
        assert year["2019"].suppressed, "year minus the eleven released months would reveal February's single station"
        window = await ask("window", ms(2019, 1), ms(2019, 2))
        assert not window["window"].suppressed  # January alone has two stations in every month: released
        spanning = await ask("window", ms(2019, 1), ms(2019, 3))
        assert spanning["window"].suppressed  # January and February together contain February
    finally:
        await consumer.stop()
        await provider.stop()


def _send(sensor, readings):
    from node.app.sensor_client import replay

    replay(sensor, readings)




# -- issue 9, attack 3: differencing over time ----------------------------------------------------
THREE_PER_CELL = TERMS.replace("min_group_size = 1", "min_group_size = 3").replace('smallest_bucket = "month"', 'smallest_bucket = "day"')
DAY = 86_400_000


async def test_a_cell_that_changed_by_fewer_than_k_contributors_is_not_released_again(tmp_path):
    """Tried: the same daily sum before and after (a) a late reading of one station, (b) one
    station enrolled with readings in that day. Before issue 9 both answers were released and
    their difference was that one station's figure (recovery error 0). Now the second release
    is withheld; a change by k = 3 new stations (a group the agreement allows) is released."""
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

        # three contributors changed against every earlier release: a group of k, released
        for n in range(2):
            extra = await provider.add_sensor(tmp_path, f"station-extra{n}", metrics=["pm25"])
            await asyncio.to_thread(_send, extra, [Reading("pm25", day + h * 3_600_000, 7.0) for h in range(12)])
        released = await daily_sum()
        assert not released.suppressed and released.contributors == 7
    finally:
        await consumer.stop()
        await provider.stop()
