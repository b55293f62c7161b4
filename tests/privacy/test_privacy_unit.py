"""Issue 9, attack 5 (the unit protected was one reading, not one data subject), exactly.

In process, on purpose: the live attacks (test_privacy_personal.py) see only noisy answers, so
they cannot show exactly which readings went into a cell. Here the aggregate a provider feeds
to the noise is read from a real hub's own SQLite store: only consenting subjects count, a
withdrawal applies at the next query, a subject with two meters is one contributor, and each
subject adds at most L readings (its earliest) to a cell."""

from __future__ import annotations

import asyncio

from node.api.v1 import admin_pb2
from node.app.sensor_client import replay
from node.senml import Reading
from node.storage.base import AggregateRequest
from tests.query_helpers import DAY_MS, HOUR_MS, ms

JAN = ms(2019, 1, 1)


async def test_only_consenting_subjects_count_and_each_adds_at_most_the_bound(live_hub, tmp_path):
    """Exactly, on the hub's own store: consent filters subjects, withdrawal takes effect at the
    next query, a subject with two meters is one contributor, and the contribution bound keeps
    each subject's earliest L readings per cell."""
    subjects = {"house-a": [1.0] * 30, "house-b": [2.0] * 10, "house-c": [4.0] * 5, "house-d": [8.0] * 3}
    for subject, values in subjects.items():
        sensor = await live_hub.add_sensor(tmp_path, f"meter-{subject}", dataset="electricity", metrics=["energy"], subject_id=subject)
        await asyncio.to_thread(replay, sensor, [Reading("energy", JAN + i * HOUR_MS, v) for i, v in enumerate(values)])
    garden = await live_hub.add_sensor(tmp_path, "meter-a-garden", dataset="electricity", metrics=["energy"], subject_id="house-a")
    await asyncio.to_thread(replay, garden, [Reading("energy", JAN + 40 * HOUR_MS + i * HOUR_MS, 0.5) for i in range(4)])
    for subject in ("house-a", "house-b", "house-c"):
        await live_hub.admin.GrantConsent(admin_pb2.ConsentRequest(subject_id=subject, purpose_code="research"),
                                          metadata=live_hub.admin_metadata)

    def cells(bound: int | None):
        request = AggregateRequest("electricity", "energy", JAN, JAN + DAY_MS * 3, "window", "research",
                                   clamp=(0.0, 1e6), max_contributions=bound)
        return live_hub.hub.storage.read(lambda s: s.aggregate(request))

    [everything] = await cells(None)
    assert (everything.count, everything.sum, everything.contributors) == (30 + 4 + 10 + 5, 30 + 2 + 20 + 20, 3)  # no house-d
    [bounded] = await cells(6)  # house-a: its 6 earliest (all from the house meter), b: 6, c: 5
    assert (bounded.count, bounded.sum, bounded.contributors) == (6 + 6 + 5, 6.0 + 12.0 + 20.0, 3)
    await live_hub.admin.WithdrawConsent(admin_pb2.ConsentRequest(subject_id="house-a", purpose_code="research"),
                                         metadata=live_hub.admin_metadata)
    [after] = await cells(6)
    assert (after.count, after.sum, after.contributors) == (6 + 5, 12.0 + 20.0, 2)

