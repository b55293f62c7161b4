"""Helpers for region tests: hubs as real processes (`smartregion serve`) with an async admin
stub on each, and polling for conditions that settle asynchronously."""

from __future__ import annotations

import asyncio
import time

import grpc

from node import hubdir
from node.api.v1 import admin_pb2, admin_pb2_grpc
from node.app.launcher import HubProcess
from node.client import open_channel
from tests.conftest import PASSPHRASE, make_hub_dir


class ProcessHub:
    """A hub process plus an async admin stub on it."""

    def __init__(self, path, municipality: str) -> None:
        make_hub_dir(path, municipality)
        hub_dir = hubdir.HubDir(path)
        config = hub_dir.config()
        config.federation = hubdir.FederationConfig(refresh_seconds=1.0, retry_base_seconds=0.2, retry_max_seconds=1.0)
        hub_dir.write_config(config)
        self.hub_dir = hub_dir
        self.hub_id = config.hub_id
        self.process = HubProcess(path, PASSPHRASE)
        self.channel = None

    def start(self) -> ProcessHub:
        self.launch()
        return self.connect()

    def launch(self) -> None:
        """Start the process and wait until it serves (blocking; safe to run in a thread)."""
        self.process.start()
        self.process.grpc_port = int(self.address.rsplit(":", 1)[1])  # a restart keeps the address peers know

    def connect(self) -> ProcessHub:
        """Open the admin channel (in the event loop's thread)."""
        self.channel = open_channel(self.address, hub_id=self.hub_id, cert_pem=self.hub_dir.tls_cert_pem(), aio=True)
        return self

    @property
    def address(self) -> str:
        return self.process.endpoint["grpc_address"]

    async def admin(self, method: str, request):
        stub = admin_pb2_grpc.AdminStub(self.channel)
        metadata = (("authorization", f"Bearer {self.hub_dir.admin_token()}"),)
        return await getattr(stub, method)(request, metadata=metadata, timeout=20)

    async def state_of(self, agreement_id: str) -> int:
        return (await self.admin("GetAgreement", admin_pb2.AgreementRef(agreement_id=agreement_id))).state

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        assert self.process.stop() in (0, None)


async def start_all(hubs: list[ProcessHub]) -> None:
    """Launch hub processes side by side, then connect to each."""
    await asyncio.gather(*(asyncio.to_thread(hub.launch) for hub in hubs))
    for hub in hubs:
        hub.connect()


async def eventually(check, timeout: float = 20.0):
    """Poll an async condition until it holds (delivery is asynchronous by design)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.2)
