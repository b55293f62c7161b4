"""Issue 9, attack 3: differencing over time (late readings, sensor enrolment and revocation),
against a live hub process and a partner.

The hub (Stavanger) has four air-quality stations reporting 12 hourly readings on 2019-01-01;
it grants the partner daily means with k = 3. The partner asks the same daily mean again and
again while the data changes under it. Before issue 9 every answer was released and the
difference of two answers was one station's figures (recovery error 0). Tried again:
* nothing changed: released again, identical (the difference is 0: nothing new);
* one station revoked: its readings stay in the cell, so the cell is unchanged and released
  identically (or, were they dropped, it would have to be withheld);
* a late reading of one station: withheld, recovered nothing;
* one more station enrolled with readings that day: withheld, recovered nothing;
* three more stations (a group the agreement allows): still withheld: a released day is
  frozen, since even a k-sized difference is a group's figures for a part of the day; the next
  day, never released before, is released with every station.
A withdrawal of consent is the same attack on personal data: test_privacy_personal.py.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from federation import partners, peers
from federation.query import asker
from node.api.v1 import admin_pb2, query_pb2
from node.senml import Reading
from tests.conftest import PASSPHRASE
from tests.query_helpers import DAY_MS, HOUR_MS, ms, terms_toml
from tests.region_helpers import enrol, offer_to_partner, send, start_region, stop_region

pytestmark = pytest.mark.asyncio(loop_scope="module")
DAY = ms(2019, 1, 1)
THREE_PER_CELL = terms_toml(aggregates=["mean", "count"], smallest_bucket="day", min_group_size=3)


def readings(value: float, hours: range = range(12)) -> list[Reading]:
    return [Reading("pm25", DAY + h * HOUR_MS, value) for h in hours]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("privacy-differencing")
    [hub] = await start_region(base, (("stavanger", "1103"),))
    channel = None
    try:
        partner = partners.keygen(base / "uis.key", "Universitetet i Stavanger", PASSPHRASE.encode())
        stations = [await enrol(hub, base, f"station{n}", "air_quality", ["pm25"]) for n in range(4)]
        for n, sensor in enumerate(stations):
            await send(sensor, readings(5.0 + n))
        await offer_to_partner(hub, partner, THREE_PER_CELL)
        channel = peers.channel_to(hub.address, hub.hub_id, hub.hub_dir.tls_cert_pem())

        async def ask(spec: query_pb2.QuerySpec):
            return await asker.ask(channel, partner.key, partner.partner_id, hub.hub_id, spec)

        async def daily_mean() -> query_pb2.Row:
            spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=DAY, end_ms=DAY + DAY_MS,
                                       bucket="day", group_by="municipality", purpose_code="environmental_monitoring",
                                       hub_ids=[hub.hub_id])
            [row] = (await ask(spec)).rows
            return row

        yield hub, base, stations, daily_mean, ask
    finally:
        if channel is not None:
            await channel.close()
        await stop_region([hub])


async def test_a_cell_that_changed_by_fewer_than_k_contributors_is_not_released_again(world):
    hub, base, stations, daily_mean, ask = world
    first = await daily_mean()
    assert (first.suppressed, first.contributors, first.readings) == (False, 4, 48)
    again = await daily_mean()
    assert (again.suppressed, again.value, again.readings) == (False, first.value, 48)  # the same release: nothing new

    await hub.admin("RevokeSensor", admin_pb2.RevokeSensorRequest(sensor_id=stations[3].credential.sensor_id))
    revoked = await daily_mean()
    assert revoked.suppressed or (revoked.value, revoked.readings) == (first.value, first.readings), \
        "a revocation changed the cell by one station and it was released: the difference is that station"

    await send(stations[0], [Reading("pm25", DAY + 20 * HOUR_MS, 500.0)])  # a late reading of one station
    late = await daily_mean()
    assert late.suppressed and late.value == 0, "the difference would be station 0's late reading"

    newcomer = await enrol(hub, base, "station-new", "air_quality", ["pm25"])
    await send(newcomer, readings(42.0))  # one more station, fewer than 3 changed
    enrolled = await daily_mean()
    assert enrolled.suppressed, "the difference would be the new station's readings"
    print(f"\nattack 3: the same daily mean after a revocation: {'withheld' if revoked.suppressed else 'identical'}; "
          "after a late reading of one station: withheld; after one station enrolled: withheld (recovered nothing)")

    extras = [await enrol(hub, base, f"station-extra{n}", "air_quality", ["pm25"]) for n in range(2)]
    for n, sensor in enumerate(extras):
        await send(sensor, readings(7.0 + 3 * n))
    frozen = await daily_mean()
    assert frozen.suppressed, "a released day came out again with other content (three stations more)"
    for sensor in [*stations[:3], newcomer, *extras]:  # stations[3] was revoked
        await send(sensor, [Reading("pm25", DAY + DAY_MS + HOUR_MS, 6.0)])
    spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=DAY + DAY_MS,
                               end_ms=DAY + 2 * DAY_MS, bucket="day", group_by="municipality",
                               purpose_code="environmental_monitoring", hub_ids=[hub.hub_id])
    [next_day] = (await ask(spec)).rows
    print("attack 3: three stations more: the released day stays withheld; the next day is released")
    assert not next_day.suppressed and next_day.contributors >= 5
