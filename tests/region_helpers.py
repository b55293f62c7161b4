"""Helpers for region tests: hubs as real processes (`smartregion serve`) with an async admin
stub on each, and polling for conditions that settle asynchronously."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from typer.testing import CliRunner

from federation import partners
from federation.partner_client import PartnerSession
from node import hubdir, senml
from node.api.v1 import admin_pb2, admin_pb2_grpc, agreement_pb2
from node.app.cli.main import app
from node.app.launcher import HubProcess
from node.app.sensor_client import Sensor, SensorCredential, replay
from node.client import open_channel
from node.clock import SYSTEM_CLOCK, utc_day
from tests.conftest import PASSPHRASE, make_hub_dir


class ProcessHub:
    """A hub process plus an async admin stub on it."""

    def __init__(self, path, municipality: str, refresh_seconds: float = 1.0) -> None:
        make_hub_dir(path, municipality)
        hub_dir = hubdir.HubDir(path)
        config = hub_dir.config()
        config.federation = hubdir.FederationConfig(refresh_seconds=refresh_seconds, retry_base_seconds=0.2, retry_max_seconds=1.0)
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
        self.process.http_port = int(self.process.endpoint["http_url"].rsplit(":", 1)[1])  # and sensors' credentials name

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


@dataclass
class Ran:
    returncode: int
    stdout: str


def cli_sync(*args: str, check: bool = True) -> Ran:
    """`smartregion ARGS`, in this process (the passphrase comes from the test environment)."""
    outcome = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"}, catch_exceptions=False)
    if check:
        assert outcome.exit_code == 0, outcome.output
    return Ran(outcome.exit_code, outcome.output)


async def cli(*args: str, check: bool = True) -> Ran:
    """In a thread, so the askers keep querying meanwhile (the admin commands call the hubs)."""
    return await asyncio.to_thread(cli_sync, *args, check=check)


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


async def agree_between(provider: ProcessHub, consumer: ProcessHub, terms_toml: str) -> str:
    """The provider proposes the terms to the consumer hub, which countersigns once the proposal
    reached it; returns the agreement id once the provider holds it active."""
    proposal = await provider.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=terms_toml, to=consumer.hub_id))
    aid = proposal.terms.agreement_id

    async def held() -> bool:
        return await consumer.state_of(aid) == agreement_pb2.AGREEMENT_STATE_PROPOSED
    await eventually(held)
    await consumer.admin("AcceptAgreement", admin_pb2.AgreementRef(agreement_id=aid))

    async def active() -> bool:
        return await provider.state_of(aid) == agreement_pb2.AGREEMENT_STATE_ACTIVE
    await eventually(active)
    return aid


# -- for attacks against a live region (tests/privacy/) ---------------------------------------
# Added for issue 9's live attacks: what a hub's operator, a sensor and a partner can each do
# from outside the hub processes, and read-only looks into a provider's own records.

async def start_region(base, towns: tuple[tuple[str, str], ...], refresh_seconds: float = 1.0) -> list[ProcessHub]:
    """Hub processes (directory name, kommunenummer), started side by side, every pair peered;
    each refreshes its peers' descriptors every `refresh_seconds`."""
    hubs = [ProcessHub(base / name, number, refresh_seconds) for name, number in towns]
    try:
        await start_all(hubs)
        for a in hubs:
            for b in hubs:
                if a is not b:
                    await a.admin("AddPeer", admin_pb2.AddPeerRequest(address=b.address, hub_id=b.hub_id))
    except BaseException:
        await stop_region(hubs)
        raise
    return hubs


async def stop_frozen_or_killed(hubs: list[ProcessHub]) -> None:
    """Stop a region whose hubs a test froze (SIGSTOP) or killed: thaw the frozen ones first,
    then stop each, whatever its exit (for the failure tests; stop_region insists on clean exits)."""
    for hub in hubs:
        if hub.process.process is not None and hub.process.process.poll() is None:
            hub.process.process.send_signal(signal.SIGCONT)
        await hub.stop()


async def stop_region(hubs: list[ProcessHub]) -> None:
    """Stop every hub side by side; a hub that did not exit cleanly (crashed under an attack,
    or had to be killed) fails the module, with the end of its log."""
    for hub in hubs:
        if hub.channel is not None:
            await hub.channel.close()
            hub.channel = None
    await asyncio.to_thread(_terminate_once, [hub.process for hub in hubs])
    unclean = [hub for hub in hubs if hub.process.process is not None and hub.process.process.returncode != 0]
    assert not unclean, "\n".join(f"hub {hub.hub_id} exited with {hub.process.process.returncode}:\n{hub.process.log_tail()}"
                                   for hub in unclean)


def _terminate_once(processes: list[HubProcess], timeout: float = 15.0) -> None:
    """One SIGTERM to each hub, then wait. (HubProcess.stop_all signals a hub a second time when
    it is still finishing its clean shutdown, and that second SIGTERM, arriving after the hub
    has removed its handler, kills it: exit -15.)"""
    running = [p.process for p in processes if p.process is not None and p.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def enrol(hub: ProcessHub, tmp, name: str, dataset: str, metrics: list[str], subject_id: str = "") -> Sensor:
    """Enrol a sensor through the admin API; the sensor holds its own credential file."""
    response = await hub.admin("AddSensor", admin_pb2.AddSensorRequest(
        dataset=dataset, metrics=metrics, latitude=59.0, longitude=6.0, subject_id=subject_id, label=name))
    path = tmp / f"{hub.hub_id[:8]}-{name}.credential.json"
    path.write_bytes(response.credential_json)
    return Sensor(SensorCredential.load(path))


async def send(sensor: Sensor, readings: list[senml.Reading]) -> None:
    """The sensor seals and streams its readings (the reference sensor's replay); all stored."""
    summary = await asyncio.to_thread(replay, sensor, readings)
    assert summary.readings_stored == len(readings), summary


async def offer_to_partner(hub: ProcessHub, partner: partners.PartnerKey, terms_toml: str) -> str:
    """The hub registers the partner (idempotently) and proposes the terms; the partner signs
    them with its own key over gRPC. Returns the active agreement's id."""
    known = await hub.admin("ListPartners", admin_pb2.ListPartnersRequest())
    if partner.partner_id not in {p.partner_id for p in known.partners}:
        await hub.admin("AddPartner", admin_pb2.AddPartnerRequest(name=partner.name, org_number="971564679",
                                                                  public_key_file=partners.public_document(partner)))
    proposal = await hub.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=terms_toml, to=partner.partner_id))
    async with PartnerSession(partner, hub.address, hub.hub_id) as session:
        outcome = await session.accept(proposal.terms.agreement_id)
    assert outcome.state == agreement_pb2.AGREEMENT_STATE_ACTIVE, outcome
    return proposal.terms.agreement_id


def operator_identity(hub: ProcessHub):
    """The hub's identity, unlocked from its data directory with the passphrase, as the hub's
    operator (who holds both) can: what a dishonest operator signs with."""
    return hub.hub_dir.identity(PASSPHRASE.encode())


def queries_charged(hub: ProcessHub, agreement_id: str) -> int:
    """Queries the hub has charged today to the agreement's quota, read from its own SQLite
    file (read-only, beside the running process): what the hub itself counts."""
    day = utc_day(SYSTEM_CLOCK.now_ms())
    with contextlib.closing(sqlite3.connect(f"file:{hub.hub_dir.file(hubdir.DB_FILE)}?mode=ro", uri=True, timeout=10)) as db:
        row = db.execute("SELECT queries FROM agreement_usage WHERE agreement_id = ? AND day = ?", (agreement_id, day)).fetchone()
    return int(row[0]) if row else 0


async def budget_spent(hub: ProcessHub, agreement_id: str) -> int:
    """Micro-epsilon the providing hub has spent of the agreement's lifetime budget (admin API)."""
    return (await hub.admin("GetAgreementBudget", admin_pb2.AgreementRef(agreement_id=agreement_id))).spent_micro


async def audit_entries(hub: ProcessHub) -> list[dict]:
    """The hub's audit log as its operator exports it (admin ExportAudit), entries only."""
    export = await hub.admin("ExportAudit", admin_pb2.ExportAuditRequest())
    lines = [json.loads(line) for line in export.jsonl.decode().splitlines() if line.strip()]
    return [json.loads(line["entry"]) for line in lines if "entry" in line]


async def example_client_asks(program: list[str], key_file: Path, entry: ProcessHub) -> dict:
    """Run an example partner client (`program`: the Python or the Node.js one) against `entry`
    as its entry hub, for a week of daily means per municipality; return its JSON output."""
    args = [*program, "--key", str(key_file), "--hub", entry.address, "--hub-id", entry.hub_id,
            "--dataset", "air_quality", "--metric", "pm25", "--aggregate", "mean", "--from", "2019-01-01",
            "--to", "2019-01-08", "--bucket", "day", "--group-by", "municipality", "--purpose", "research",
            "--deadline-ms", "4000"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTREGION_")} | {"SMARTREGION_PASSPHRASE": PASSPHRASE}
    done = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
