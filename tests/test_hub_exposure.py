"""What the hub shows to whom (issue 11, smaller items): the read-only dashboard hides
household meters' labels and exact coordinates from anonymous visitors, and /metrics (which
names peers and gives per-peer and ingest figures) needs the admin token."""

from __future__ import annotations

import aiohttp
import pytest
from conftest import PASSPHRASE, make_hub_dir
from ingest_helpers import client_ssl_context

from node import hubdir
from node.api.v1 import admin_pb2, admin_pb2_grpc
from node.app.server import start
from node.client import open_channel
from node.hub import Hub


@pytest.fixture
async def read_only_hub(tmp_path):
    hub = Hub.open(make_hub_dir(tmp_path / "hub"), PASSPHRASE.encode())
    running = await start(hub, host="127.0.0.1", grpc_port=0, http_port=0, dashboard_read_only=True)
    token = hubdir.HubDir(tmp_path / "hub").admin_token()
    async with open_channel(hub.endpoint.grpc_address, hub_id=hub.config.hub_id, cert_pem=hub.identity.tls_cert_pem,
                            tls=True, aio=True) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        metadata = (("authorization", f"Bearer {token}"),)
        await admin.AddSensor(admin_pb2.AddSensorRequest(dataset="water_consumption", metrics=["water_volume"],
                                                         latitude=58.971234, longitude=5.734567, subject_id="household-17",
                                                         label="Storgata 5, Hansen"), metadata=metadata)
        await admin.AddSensor(admin_pb2.AddSensorRequest(dataset="air_quality", metrics=["pm25"], latitude=58.971234,
                                                         longitude=5.734567, label="Valand station"), metadata=metadata)
    yield running, token
    await running.stop(grace=1)


async def get(running, path: str, session: aiohttp.ClientSession, headers: dict | None = None) -> tuple[int, object]:
    class Live:
        hub = running.hub
    async with session.get(running.hub.endpoint.http_url + path, ssl=client_ssl_context(Live), headers=headers or {},
                           server_hostname=running.hub.config.hub_id) as response:
        body = await response.read()
        return response.status, body


async def test_the_read_only_dashboard_hides_household_labels_and_exact_positions(read_only_hub):
    """Before: anyone saw 'Storgata 5, Hansen' at 58.971234, 5.734567."""
    running, token = read_only_hub
    async with aiohttp.ClientSession() as anonymous:
        status, body = await get(running, "/api/sensors", anonymous)
    assert status == 200
    assert b"Hansen" not in body and b"58.971234" not in body.split(b"Valand")[0]
    import json
    sensors = {s["dataset"]: s for s in json.loads(body)}
    household, station = sensors["water_consumption"], sensors["air_quality"]
    assert household["label"] == "" and (household["latitude"], household["longitude"]) == (58.97, 5.73)
    assert station["label"] == "Valand station" and station["latitude"] == 58.971234  # not personal: shown
    # The operator, logged in, sees everything.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as operator:  # cookies for an IP host
        class Live:
            hub = running.hub
        async with operator.post(running.hub.endpoint.http_url + "/api/login", json={"token": token},
                                 ssl=client_ssl_context(Live), server_hostname=running.hub.config.hub_id) as r:
            assert r.status == 200
        status, body = await get(running, "/api/sensors", operator)
    assert b"Storgata 5, Hansen" in body and b"58.971234" in body


async def test_metrics_need_the_admin_token(read_only_hub):
    """Before: /metrics was open and listed peers, per-peer query counts and ingest totals."""
    running, token = read_only_hub
    async with aiohttp.ClientSession() as session:
        assert (await get(running, "/metrics", session))[0] == 401
        assert (await get(running, "/metrics", session, {"Authorization": "Bearer not-the-token"}))[0] == 401
        status, body = await get(running, "/metrics", session, {"Authorization": f"Bearer {token}"})
    assert status == 200 and b"smartregion_frames_accepted" in body
