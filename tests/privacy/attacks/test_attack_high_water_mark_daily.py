"""Attack (peer asker): get a changed daily sub-cell past the release log's high-water mark
(federation/query/provider.py `_released_before`, `released_runs`), on live hubs.

The existing tests (tests/privacy/test_privacy_release_log_runs.py) try hourly sub-cells
(scheme READINGS). Tried here on DAILY sub-cells (scheme SUBCELL, per-contributor summaries),
four stations, k = 3: days 0-3 released whole by day (a run is logged) and as one window
cell; then one late reading of one station on day 1; then, each of which would give the late
reading by difference if released:
  * the same window by day (the mark's window: its digest no longer matches),
  * the same window as one cell (bucket window: another cell set, same run key),
  * an extent overlapping the mark, days 1-2 as one cell, and days 1-4 by day,
  * day 1 alone,
  * and all of these again after the agreement is revoked and a new agreement of the same line
    is signed (a renewal: the line, and so its log and its marks, go on).
Held if every cell holding day 1 is withheld and every other cell equals its first release.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from federation.query import releases
from node.api.v1 import admin_pb2
from node.app.sensor_client import replay
from node.senml import Reading
from node.storage.base import ReleaseLine
from tests.conftest import sign_agreement, start_peered
from tests.privacy.test_privacy_release_log import _ask, _total
from tests.test_federation_region import TERMS

HOUR, DAY = 3_600_000, 86_400_000
DAILY = TERMS.replace("min_group_size = 1", "min_group_size = 3").replace('smallest_bucket = "month"', 'smallest_bucket = "day"')
DAY0 = int(dt.datetime(2019, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


async def test_a_changed_daily_sub_cell_never_passes_the_high_water_mark(tmp_path):
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        stations = [await provider.add_sensor(tmp_path, f"station{n}", metrics=["pm25"]) for n in range(4)]
        for n, sensor in enumerate(stations):
            await asyncio.to_thread(replay, sensor, [Reading("pm25", DAY0 + h * HOUR, 5.0 + n + h % 5) for h in range(5 * 24)])
        agreement = await sign_agreement(provider, consumer, DAILY)
        line = ReleaseLine(consumer.hub.config.hub_id, "air_quality", "pm25")
        window = (DAY0, DAY0 + 4 * DAY)
        first = await _ask(consumer, provider, *window, "day")
        assert [r.suppressed for r in first] == [False] * 4
        run = await provider.hub.storage.read(lambda s: s.released_run(line, releases.SUBCELL, "day", *window))
        assert run is not None, "days 0-3 released whole: a high-water mark"
        [whole] = await _ask(consumer, provider, *window, "window")
        assert not whole.suppressed

        await asyncio.to_thread(replay, stations[0], [Reading("pm25", DAY0 + DAY + 7 * HOUR + 60_000, 500.0)])

        async def attempts(when: str) -> list[str]:
            tried = []
            by_day = await _ask(consumer, provider, *window, "day")
            assert [r.suppressed for r in by_day] == [False, True, False, False], f"{when}: window by day {by_day}"
            assert [_total(r) for i, r in enumerate(by_day) if i != 1] == [_total(r) for i, r in enumerate(first) if i != 1]
            tried.append("days 0-3 by day: day 1 withheld")
            [again] = await _ask(consumer, provider, *window, "window")
            assert again.suppressed, f"{when}: days 0-3 as one cell released {again.value} (first {whole.value})"
            tried.append("days 0-3 as one cell: withheld")
            [overlap] = await _ask(consumer, provider, DAY0 + DAY, DAY0 + 3 * DAY, "window")
            assert overlap.suppressed, f"{when}: days 1-2 as one cell released"
            tried.append("days 1-2 as one cell: withheld")
            later = await _ask(consumer, provider, DAY0 + DAY, DAY0 + 5 * DAY, "day")
            assert [r.suppressed for r in later] == [True, False, False, False], f"{when}: days 1-4 by day"
            tried.append("days 1-4 by day: day 1 withheld, day 4 (new) released")
            [alone] = await _ask(consumer, provider, DAY0 + DAY, DAY0 + 2 * DAY, "day")
            assert alone.suppressed, f"{when}: day 1 alone released"
            tried.append("day 1 alone: withheld")
            return tried

        tried = await attempts("after the late reading")
        await provider.admin.RevokeAgreement(admin_pb2.RevokeAgreementRequest(agreement_id=agreement, reason="renewal"),
                                             metadata=provider.admin_metadata)
        renewed = await sign_agreement(provider, consumer, DAILY)
        assert renewed != agreement
        tried += [f"renewed: {t}" for t in await attempts("after a renewal")]
        print("held:", "; ".join(tried))
    finally:
        await consumer.stop()
        await provider.stop()
