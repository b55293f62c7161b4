"""Shared fixtures: real hubs (real grpc.aio and aiohttp servers on port 0, real SQLite files)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

# The CLI's rich consoles are made once, when their module is first imported, with the width
# they then see: the same for every test, whichever file (or pytest-xdist worker) imports first.
os.environ["COLUMNS"] = "200"

from node import hubdir
from node.api.v1 import admin_pb2, admin_pb2_grpc, agreement_pb2, ingest_pb2_grpc
from node.app.sensor_client import Sensor, SensorCredential
from node.app.server import RunningHub, start
from node.client import open_channel
from node.clock import SYSTEM_CLOCK, Clock
from node.hub import Hub

PASSPHRASE = "test-passphrase-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[1]
STATION_DATA = REPO_ROOT / "node" / "data" / "air-quality-norway"
AIR_METRICS = ["pm25", "temperature", "wind_speed", "rain"]


@pytest.fixture(autouse=True)
def _passphrase_env(monkeypatch):
    monkeypatch.setenv("SMARTREGION_PASSPHRASE", PASSPHRASE)


def make_hub_dir(path: Path, municipality: str = "1103") -> Path:
    hubdir.init_hub(path, municipality, PASSPHRASE.encode())
    return path


@dataclass
class LiveHub:
    """A hub served in this process, with an admin stub and helpers for tests."""

    data_dir: Path
    running: RunningHub
    channel: grpc.aio.Channel

    @property
    def hub(self) -> Hub:
        return self.running.hub

    @property
    def admin(self) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel)

    @property
    def ingest(self) -> ingest_pb2_grpc.IngestStub:
        return ingest_pb2_grpc.IngestStub(self.channel)

    @property
    def admin_metadata(self) -> tuple:
        return (("authorization", f"Bearer {hubdir.HubDir(self.data_dir).admin_token()}"),)

    async def add_sensor(self, tmp_path: Path, name: str = "sensor", dataset: str = "air_quality",
                         metrics: list[str] | None = None, subject_id: str = "") -> Sensor:
        response = await self.admin.AddSensor(
            admin_pb2.AddSensorRequest(dataset=dataset, metrics=metrics or AIR_METRICS, latitude=58.97,
                                       longitude=5.73, subject_id=subject_id, label=name),
            metadata=self.admin_metadata,
        )
        path = tmp_path / f"{name}.credential.json"
        path.write_bytes(response.credential_json)
        return Sensor(SensorCredential.load(path))

    async def stop(self) -> None:
        await self.channel.close()
        await self.running.stop(grace=1)


async def start_live_hub(data_dir: Path, insecure: bool = False, clock: Clock = SYSTEM_CLOCK) -> LiveHub:
    hub = Hub.open(data_dir, PASSPHRASE.encode(), clock)
    running = await start(hub, host="127.0.0.1", grpc_port=0, http_port=0, insecure=insecure)
    channel = open_channel(
        hub.endpoint.grpc_address, hub_id=hub.config.hub_id, cert_pem=hub.identity.tls_cert_pem, tls=not insecure, aio=True
    )
    return LiveHub(data_dir, running, channel)


@pytest.fixture
async def live_hub(tmp_path):
    live = await start_live_hub(make_hub_dir(tmp_path / "hub"))
    yield live
    await live.stop()


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_hub(tmp_path_factory):
    """One hub shared by a module's tests (each enrols its own sensors): for modules with many
    small tests, where a hub per test would dominate the run time."""
    live = await start_live_hub(make_hub_dir(tmp_path_factory.mktemp("shared") / "hub"))
    yield live
    await live.stop()


async def start_peered(base: Path, *municipalities: str) -> list[LiveHub]:
    """Live hubs for these municipalities, each pinned as a peer by every other."""
    hubs = [await start_live_hub(make_hub_dir(base / f"hub{i}", number)) for i, number in enumerate(municipalities)]
    for a in hubs:
        for b in hubs:
            if a is not b:
                await a.admin.AddPeer(admin_pb2.AddPeerRequest(address=b.hub.endpoint.grpc_address, hub_id=b.hub.config.hub_id),
                                      metadata=a.admin_metadata)
    return hubs


async def sign_agreement(provider: LiveHub, consumer: LiveHub, terms_toml: str) -> str:
    """The provider proposes, the consumer countersigns once the proposal reaches it, and the
    countersignature is given time to reach the provider. Returns the agreement id."""
    view = await provider.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(terms_toml=terms_toml, to=consumer.hub.config.hub_id),
                                                 metadata=provider.admin_metadata)
    deadline = time.monotonic() + 10
    while True:
        try:
            await consumer.admin.AcceptAgreement(admin_pb2.AgreementRef(agreement_id=view.terms.agreement_id),
                                                 metadata=consumer.admin_metadata)
            break
        except grpc.aio.AioRpcError:
            assert time.monotonic() < deadline, "the proposal did not reach the consumer"
            await asyncio.sleep(0.1)
    while (await provider.admin.GetAgreement(admin_pb2.AgreementRef(agreement_id=view.terms.agreement_id),
                                             metadata=provider.admin_metadata)).state != agreement_pb2.AGREEMENT_STATE_ACTIVE:
        assert time.monotonic() < deadline + 10, "the countersignature did not reach the provider"
        await asyncio.sleep(0.05)
    return view.terms.agreement_id
