"""Crash durability of federation (issue 11, item 5): real hub processes killed with SIGKILL
during agreement acceptance and during a query, restarted, and then checked.

- Acceptance: the accepting hub is killed at a random moment of `AcceptAgreement` (or the
  proposer just after it, while the countersignature is on its way). The admin retries the
  accept after the restart; it must report success, and the agreement must end signed by
  both on both sides with the same signed document: never on one side only.
- Query: the entry hub is killed after its own share and a provider's were computed and
  charged, before it answered (a third provider is frozen, so the fan-out is still waiting).
  The asker sends the same signed query again after the restart: every hub answers, and no
  hub charged more than one query for it: nothing was charged that was not delivered.

`make test` runs CRASH_KILLS (default 2) acceptance kills; `make crash` runs more."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import sqlite3

import grpc
import pytest
import pytest_asyncio

from federation import partners, peers
from federation.partner_client import PartnerSession
from federation.query import asker
from node import hubdir
from node.api.v1 import admin_pb2, agreement_pb2, query_pb2
from node.app.sensor_client import Sensor, SensorCredential, replay
from node.senml import Reading
from tests.conftest import PASSPHRASE
from tests.region_helpers import ProcessHub, eventually, start_region, stop_frozen_or_killed
from tests.test_federation_region import TERMS
from tests.test_query_region import AIR_TERMS

pytestmark = pytest.mark.asyncio(loop_scope="module")
State = agreement_pb2.AgreementState
KILLS = int(os.environ.get("CRASH_KILLS", "2"))
T0 = 1546300800000  # 2019-01-01
READINGS_PER_HUB = 48


def window(day: int) -> str:
    """Hub-to-hub terms with a validity window of their own (so proposals never overlap)."""
    start = dt.datetime(2100, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day)
    until = start + dt.timedelta(days=1)
    return (TERMS.replace('from = "now"', f"from = {start:%Y-%m-%dT%H:%M:%SZ}")
            .replace("until = 2030-01-01T00:00:00Z", f"until = {until:%Y-%m-%dT%H:%M:%SZ}"))


def database(hub: ProcessHub) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{hub.hub_dir.path / hubdir.DB_FILE}?mode=ro", uri=True)


def document(hub: ProcessHub, agreement_id: str) -> bytes | None:
    with database(hub) as conn:
        row = conn.execute("SELECT document FROM agreements WHERE agreement_id = ?", (agreement_id,)).fetchone()
    return bytes(row[0]) if row else None


def queries_charged(hub: ProcessHub, agreement_id: str) -> int:
    with database(hub) as conn:
        return conn.execute("SELECT coalesce(sum(queries), 0) FROM agreement_usage WHERE agreement_id = ?",
                            (agreement_id,)).fetchone()[0]


async def restart(hub: ProcessHub) -> None:
    hub.process.kill()
    await hub.channel.close()
    await asyncio.to_thread(hub.launch)
    hub.connect()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def region(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash-federation")
    hubs = await start_region(base, (("stavanger", "1103"), ("bergen", "4601"), ("porsgrunn", "4001")))
    try:
        yield hubs
    finally:
        await stop_frozen_or_killed(hubs)


async def test_sigkill_during_agreement_acceptance_leaves_it_in_force_on_both_sides_after_a_retry(region):
    acceptor, proposer, _ = region
    rng = random.Random(int(os.environ.get("CRASH_SEED", "11")))
    outcomes = {"answered before the kill": 0, "killed before the answer": 0, "in force before the retry": 0}
    for kill in range(KILLS):
        view = await proposer.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=window(kill),
                                                                                          to=acceptor.hub_id))
        aid = view.terms.agreement_id
        await eventually(lambda aid=aid: _state_is(acceptor, aid, State.AGREEMENT_STATE_PROPOSED))
        accepting = asyncio.create_task(acceptor.admin("AcceptAgreement", admin_pb2.AgreementRef(agreement_id=aid)))
        await asyncio.sleep(rng.uniform(0, 0.02))  # a random moment of the accept (not a timing assertion)
        victim = acceptor if kill % 2 == 0 else proposer  # odd rounds: the proposer, as the countersignature arrives
        victim.process.kill()
        try:
            await accepting
            outcomes["answered before the kill"] += 1
        except grpc.aio.AioRpcError:
            outcomes["killed before the answer"] += 1
        await restart(victim)
        if await acceptor.state_of(aid) != State.AGREEMENT_STATE_PROPOSED:
            outcomes["in force before the retry"] += 1
        # The admin retries `agreement accept`: success whether or not the first one took effect.
        retried = await acceptor.admin("AcceptAgreement", admin_pb2.AgreementRef(agreement_id=aid))
        assert retried.state == State.AGREEMENT_STATE_PENDING, retried
        # Signed by both on both sides (PENDING: the terms' window begins in 2100), never on one side only.
        await eventually(lambda aid=aid: _state_is(proposer, aid, State.AGREEMENT_STATE_PENDING), timeout=30)
        assert await acceptor.state_of(aid) == State.AGREEMENT_STATE_PENDING
        assert document(acceptor, aid) == document(proposer, aid)
        for hub in (acceptor, proposer):
            with database(hub) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    print(f"\n{KILLS} SIGKILLs during agreement acceptance ({(KILLS + 1) // 2} of the accepting hub, {KILLS // 2} of the "
          f"proposer): {outcomes}; every retried accept reported success, every agreement signed by both on both sides "
          "with byte-identical documents, integrity ok")


async def _state_is(hub: ProcessHub, agreement_id: str, state: int) -> bool:
    return await hub.state_of(agreement_id) == state


async def test_sigkill_of_the_entry_hub_mid_query_and_a_retry_of_the_same_signed_query_is_charged_once(region, tmp_path):
    entry, provider, frozen = region
    key_path = tmp_path / "partner.key"
    partner = partners.keygen(key_path, "Universitetet i Stavanger", PASSPHRASE.encode())
    public = partners.public_file_path(key_path).read_bytes()
    agreements: dict[str, str] = {}
    for hub in region:
        await hub.admin("AddPartner", admin_pb2.AddPartnerRequest(name="Universitetet i Stavanger", org_number="971564679",
                                                                 public_key_file=public))
        offered = await hub.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=AIR_TERMS, to=partner.partner_id))
        async with PartnerSession(partner, hub.address, hub.hub_id) as session:
            assert (await session.accept(offered.terms.agreement_id)).state == State.AGREEMENT_STATE_ACTIVE
        agreements[hub.hub_id] = offered.terms.agreement_id
        enrolled = await hub.admin("AddSensor", admin_pb2.AddSensorRequest(dataset="air_quality", metrics=["pm25"],
                                                                          latitude=59.0, longitude=6.0, label="station"))
        (tmp_path / f"{hub.hub_id}.json").write_bytes(enrolled.credential_json)
        sensor = Sensor(SensorCredential.load(tmp_path / f"{hub.hub_id}.json"))
        readings = [Reading("pm25", T0 + i * 3_600_000, 10.0) for i in range(READINGS_PER_HUB)]
        assert (await asyncio.to_thread(replay, sensor, readings)).readings_stored == READINGS_PER_HUB

    spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="count", start_ms=T0, end_ms=T0 + 86_400_000 * 3,
                               bucket="window", group_by="municipality", purpose_code="research", deadline_ms=30_000)
    query = asker.sign_query(partner.key, partner.partner_id, entry.hub_id, spec)
    channel = peers.channel_to(entry.address, entry.hub_id, entry.hub_dir.tls_cert_pem())
    os.kill(frozen.process.process.pid, signal.SIGSTOP)  # the fan-out waits for it ...
    try:
        first = asyncio.create_task(asker.send(channel, query))

        async def charged_at_entry_and_provider() -> bool:
            return all(queries_charged(h, agreements[h.hub_id]) == 1 for h in (entry, provider))

        await eventually(charged_at_entry_and_provider, timeout=20)
        entry.process.kill()  # ... when the entry hub is killed: two answers charged, none delivered
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await first
        assert lost.value.code() in asker.RETRY_CODES
    finally:
        os.kill(frozen.process.process.pid, signal.SIGCONT)
    try:
        await restart(entry)
        answer = await asker.send(channel, query, attempts=30, pause_s=0.5)  # the same signed bytes
    finally:
        await channel.close()
    statuses = {p.hub_id: p.status for p in answer.provenance}
    assert statuses == {h.hub_id: "answered" for h in region}, {p.hub_id: (p.status, p.reason) for p in answer.provenance}
    assert {r.group: r.readings for r in answer.rows} == {"1103": READINGS_PER_HUB, "4601": READINGS_PER_HUB,
                                                          "4001": READINGS_PER_HUB}
    charged = {h.hub_id: queries_charged(h, agreements[h.hub_id]) for h in region}
    assert charged == {h.hub_id: 1 for h in region}, f"a hub charged the retried query twice: {charged}"
    print(f"\nentry hub SIGKILLed mid-query (a provider frozen): the retry of the same signed query was answered by "
          f"all {len(statuses)} hubs, each charged once {charged}; nothing charged that was not delivered")
