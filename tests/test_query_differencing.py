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
                                       group_by="municipality", purpose_code="environmental_monitoring",
                                       hub_ids=[provider.hub.config.hub_id])
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
