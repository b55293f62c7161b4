"""Open data: open datasets' aggregates over HTTP without an agreement; nothing else."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import aiohttp

from node.app.sensor_client import replay
from node.senml import Reading
from node.tlsfiles import pinned_client_ssl_context

JAN = 1546300800000  # 2019-01-01T00:00Z


async def get(live_hub, path: str):
    hub = live_hub.hub
    context = pinned_client_ssl_context(hub.identity.tls_cert_pem)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(hub.endpoint.http_url + path, server_hostname=hub.config.hub_id) as response:
            return response.status, await response.text()


async def test_open_aggregates_are_published_by_day_at_the_finest(live_hub, tmp_path):
    sensor = await live_hub.add_sensor(tmp_path, "station", metrics=["pm25"])
    await asyncio.to_thread(replay, sensor, [Reading("pm25", JAN + h * 3_600_000, float(h % 24)) for h in range(48)])

    status, body = await get(live_hub, "/open/v1/datasets")
    assert status == 200 and '"air_quality"' in body and "water_consumption" not in body

    query = "/open/v1/air_quality/pm25?aggregate=mean&bucket=day&from=2019-01-01&to=2019-01-03"
    status, body = await get(live_hub, query)
    assert status == 200

    rows = json.loads(body)["rows"]
    assert [(r["bucket"], r["value"], r["readings"]) for r in rows] == [("2019-01-01", 11.5, 24), ("2019-01-02", 11.5, 24)]
    status, body = await get(live_hub, query + "&format=csv")
    assert status == 200 and [r["value"] for r in csv.DictReader(io.StringIO(body))] == ["11.5", "11.5"]

    status, body = await get(live_hub, query.replace("bucket=day", "bucket=hour"))
    assert status == 400 and "not finer" in body  # hourly values of one station are its readings
    status, body = await get(live_hub, "/open/v1/water_consumption/water_volume?from=2019-01-01&to=2019-01-03")
    assert status == 403 and "personal" in body
