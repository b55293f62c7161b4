"""Issue 12 item 1, done-when (branch liverotate): the identity key of a RUNNING hub is rotated
while two peers and a partner keep querying through it, and they follow the new key at once.

Bergen is the partner's entry hub and the provider of Stavanger and Porsgrunn, which ask it in
their own queries. Every hub refreshes its peers' descriptors only once an hour
(federation.refresh_seconds = 3600), so nothing but the follow-at-once path can explain that
the peers know Bergen's new key within the test: a request, partial or answer whose signature
does not verify under the key known makes them fetch the descriptor and follow the key history
(federation/outbox.py `follow`, federation/auth.py `check_signed`, federation/query/asker.py
`check_current_keys`, federation/partner_client.py). Afterwards what was signed before still
verifies offline with the documented commands, and a forged history (a thief holding the old
key, serving a rotation of its own at Bergen's address) is refused by peers and partner alike.

Test order matters (one module-scoped region). Timing on 2 shared cores: about 30-40 s.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography import x509

from federation import answers, descriptors, partners, peers
from federation.outbox import FOLLOW_INTERVAL_S
from federation.partner_client import PartnerSession
from federation.query import asker
from node import hubdir, identity, senml
from node.api.v1 import admin_pb2, agreement_pb2, query_pb2
from node.clock import SYSTEM_CLOCK, ManualClock
from node.signing import Domain, verify
from node.storage.sqlite import SqliteStore
from tests.conftest import PASSPHRASE
from tests.query_helpers import ms, terms_toml
from tests.region_helpers import (
    ProcessHub,
    agree_between,
    audit_entries,
    cli,
    enrol,
    eventually,
    example_client_asks,
    offer_to_partner,
    send,
    start_region,
    stop_region,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

START_MS = ms(2019, 1, 1)
END_MS = START_MS + 7 * 86_400_000
TERMS = terms_toml("research", queries_per_day=100_000)


def spec(*hub_ids: str) -> query_pb2.QuerySpec:
    return query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=START_MS, end_ms=END_MS,
                               bucket="day", group_by="municipality", purpose_code="research", deadline_ms=4000,
                               hub_ids=list(hub_ids))


@dataclass
class Region:
    bergen: ProcessHub
    stavanger: ProcessHub
    porsgrunn: ProcessHub
    partner: partners.PartnerKey
    session: PartnerSession
    clock: ManualClock  # the partner's: its bound on re-fetching Bergen's descriptor is moved by hand
    tmp: object
    saved: dict = field(default_factory=dict)

    async def ask_as_partner(self):
        self.clock.set_now_ms(max(self.clock.now_ms(), SYSTEM_CLOCK.now_ms()))  # its requests carry the real time
        return await self.session.ask(spec())

    async def ask_as_peer(self, hub: ProcessHub):
        return await hub.admin("RunQuery", spec(self.bergen.hub_id, hub.hub_id))


def bergen_status(region: Region, answer) -> str:
    return next(p.status for p in answer.provenance if p.hub_id == region.bergen.hub_id)


def bergen_keys(region: Region, answer) -> frozenset[bytes]:
    keys = {p.partial.provider_public_key for p in answer.provenance if p.hub_id == region.bergen.hub_id and p.status == "answered"}
    if answer.answered_by == region.bergen.hub_id:
        keys.add(answer.answered_by_public_key)
    return frozenset(keys)


def stored_peer(hub: ProcessHub, peer_id: str):
    store = SqliteStore(hub.hub_dir.file(hubdir.DB_FILE))
    try:
        peer = store.get_peer(peer_id)
    finally:
        store.close()
    assert peer is not None
    return peer


def followed_key(hub: ProcessHub, peer_id: str) -> bytes:
    chain = descriptors.stored_chain(stored_peer(hub, peer_id).descriptor)
    return chain.current if chain else stored_peer(hub, peer_id).public_key


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def region(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live-rotation")
    hubs = await start_region(tmp, (("bergen", "4601"), ("stavanger", "1103"), ("porsgrunn", "4001")), refresh_seconds=3600)
    bergen, stavanger, porsgrunn = hubs
    session = None
    try:
        for i, hub in enumerate(hubs):  # a week of hourly PM2.5 per hub
            sensor = await enrol(hub, tmp, f"station-{i}", "air_quality", ["pm25"])
            await send(sensor, [senml.Reading("pm25", START_MS + h * 3_600_000, float(i * 10 + h % 5)) for h in range(7 * 24)])
        partner = partners.keygen(tmp / "uis.key", "Universitetet i Stavanger", PASSPHRASE.encode())
        for hub in hubs:
            await offer_to_partner(hub, partner, TERMS)
        saved = {"agreement": await agree_between(bergen, stavanger, TERMS)}
        await agree_between(bergen, porsgrunn, TERMS)
        clock = ManualClock(SYSTEM_CLOCK.now_ms())
        session = PartnerSession(partner, bergen.address, bergen.hub_id, clock)
        await session.__aenter__()
        yield Region(bergen, stavanger, porsgrunn, partner, session, clock, tmp, saved)
    finally:
        if session is not None:
            await session.__aexit__(None, None, None)
        await stop_region(hubs)


@dataclass
class Outcome:
    asker: str
    after_rotation: bool  # the query was sent once the rotation command had returned
    bergen: str  # Bergen's status in the answer, or the error the asker got
    bergen_keys: frozenset[bytes] = frozenset()  # the keys Bergen signed this answer with (summary, partial)


async def query_continuously(region: Region, stop: asyncio.Event, rotated: asyncio.Event, outcomes: list[Outcome]) -> None:
    """Both peers (their own queries, which ask Bergen) and the partner (through Bergen) ask
    again and again. An answer returned must verify offline; a refusal of a signature is never
    acceptable. Only a hub briefly unreachable is, and only while the rotation runs."""
    askers = {"stavanger": lambda: region.ask_as_peer(region.stavanger),
              "porsgrunn": lambda: region.ask_as_peer(region.porsgrunn), "partner": region.ask_as_partner}
    while not stop.is_set():
        for name, ask in askers.items():
            after = rotated.is_set()
            try:
                answer = await ask()
            except grpc.aio.AioRpcError as exc:
                if after or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                outcomes.append(Outcome(name, after, f"error {exc.code().name}"))
                continue
            answers.verify(answers.to_json(answer))  # raises on any signature that does not verify
            outcomes.append(Outcome(name, after, bergen_status(region, answer), bergen_keys(region, answer)))
        await asyncio.sleep(0.05)


# -- 1. the rotation while everyone queries ------------------------------------------------------
async def test_rotating_the_running_hub_while_two_peers_and_a_partner_query(region):
    bergen, files = region.bergen, region.tmp / "before"
    files.mkdir()
    before = await region.ask_as_partner()
    assert {p.status for p in before.provenance} == {"answered"}
    (files / "answer.json").write_bytes(answers.to_json(before))
    exported = await bergen.admin("ExportAgreement", admin_pb2.AgreementRef(agreement_id=region.saved["agreement"]))
    (files / "agreement.json").write_bytes(exported.document_json)
    (files / "audit.jsonl").write_bytes((await bergen.admin("ExportAudit", admin_pb2.ExportAuditRequest())).jsonl)
    old = bergen.hub_dir.identity(PASSPHRASE.encode())
    region.saved["leaked"] = old  # for the forgery test: as if the old key had leaked
    for peer in (region.stavanger, region.porsgrunn):
        assert followed_key(peer, bergen.hub_id) == old.public_key_raw

    stop, rotated, outcomes = asyncio.Event(), asyncio.Event(), []
    querying = asyncio.create_task(query_continuously(region, stop, rotated, outcomes))
    try:
        async def some_before() -> bool:
            return len(outcomes) >= 3
        await eventually(some_before)
        done = await cli("key", "rotate", "--data-dir", str(bergen.hub_dir.path))  # the documented command, hub running
        rotated.set()
        assert f"Rotated the identity key of hub {bergen.hub_id} (rotation 1; the hub id stays)" in done.stdout
        assert "the running hub signs with the new key" in done.stdout

        async def each_asker_answered_twice_since() -> bool:
            if querying.done():
                querying.result()  # an asker failed: say why at once
            after = [o for o in outcomes if o.after_rotation]
            return all(sum(o.asker == name for o in after) >= 2 for name in ("stavanger", "porsgrunn", "partner"))
        await eventually(each_asker_answered_twice_since, timeout=30)
    finally:
        stop.set()
        await querying  # re-raises the first failure
    print(f"\nBergen across the live rotation: {[(o.asker, o.after_rotation, o.bergen) for o in outcomes]}")
    assert all(o.bergen == "answered" for o in outcomes if o.after_rotation), outcomes
    assert {o.bergen for o in outcomes} <= {"answered", "error UNAVAILABLE"}, outcomes

    new = bergen.hub_dir.identity(PASSPHRASE.encode())
    assert new.hub_id_text == bergen.hub_id and new.public_key_raw != old.public_key_raw
    # From the moment the command returned, everything Bergen signed is signed by the new key.
    assert all(o.bergen_keys == {new.public_key_raw} for o in outcomes if o.after_rotation), outcomes
    assert all(o.bergen_keys <= {old.public_key_raw, new.public_key_raw} for o in outcomes)
    status = await bergen.admin("GetStatus", admin_pb2.GetStatusRequest())
    assert bytes.fromhex(status.identity_public_key) == new.public_key_raw  # the process signs with the key written
    served = await peers.fetch_certificate(bergen.address)  # the certificate of the next handshake is bound to it
    assert identity.verify_tls_binding(x509.load_pem_x509_certificate(served), new.key_history) == new.public_key_raw
    # The peers followed at once (no refresh in an hour), and audited it; so did the partner.
    for peer in (region.stavanger, region.porsgrunn):
        assert followed_key(peer, bergen.hub_id) == new.public_key_raw
        assert any(e["action"] == "peer.key_rotated" and e["actor"] == bergen.hub_id for e in await audit_entries(peer))
    assert region.session.chain is not None and region.session.chain.current == new.public_key_raw
    assert any(e["action"] == "key.rotate" and "(live)" in e["detail"] for e in await audit_entries(bergen))

    # Offline, with the documented commands: what was signed before the rotation still verifies...
    assert "verifies" in (await cli("query", "verify", str(files / "answer.json"))).stdout
    assert "verifies" in (await cli("agreement", "verify", str(files / "agreement.json"))).stdout
    after = region.tmp / "after"
    after.mkdir()
    audit_after = (await bergen.admin("ExportAudit", admin_pb2.ExportAuditRequest())).jsonl
    (after / "audit.jsonl").write_bytes(audit_after)
    extended = (await cli("audit", "verify", str(after / "audit.jsonl"), "--extends", str(files / "audit.jsonl"),
                          "--hub-id", bergen.hub_id)).stdout
    assert "those entries are unchanged" in extended
    header = json.loads(audit_after.decode().splitlines()[0])  # the head is signed by the new key, history attached
    assert header["public_key"] == new.public_key_raw.hex() and header["key_history"] == [s.hex() for s in new.key_history]
    await python_example_asks_through_the_rotated_hub(region)
    # ...and an agreement signed now is signed by the new key, and delivered in a request signed
    # by it: Porsgrunn proposes, Bergen countersigns, Bergen's outbox brings it back.
    aid = await agree_between(region.porsgrunn, bergen, TERMS)
    document = json.loads((await bergen.admin("ExportAgreement", admin_pb2.AgreementRef(agreement_id=aid))).document_json)
    signed = agreement_pb2.AgreementDocument.FromString(base64.b64decode(document["document"])).signed_terms
    by_bergen = next(s.signature for s in signed.signatures if s.signer_id == bergen.hub_id)
    assert verify(new.public_key_raw, Domain.AGREEMENT, signed.terms, by_bergen)


PYTHON_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python_partner.py"


async def python_example_asks_through_the_rotated_hub(region: Region) -> None:
    """examples/python_partner.py (grpcio, cryptography and the generated code only) pins the
    ROTATED entry hub through the key history of its signed descriptor and verifies its
    answer, signed by the new key."""
    out = await example_client_asks([sys.executable, str(PYTHON_EXAMPLE)], region.tmp / "uis.key", region.bergen)
    assert out["answered_by"] == region.bergen.hub_id and not out["partial"]
    assert {p["hub_id"]: p["signature_verified"] for p in out["provenance"]} == \
        {h.hub_id: True for h in (region.bergen, region.stavanger, region.porsgrunn)}


# -- 2. a forged history at Bergen's address --------------------------------------------------------
async def test_a_forged_rotation_is_refused_by_the_peers_and_the_partner_that_follow_at_once(region):
    bergen = region.bergen
    keys_file = bergen.hub_dir.file(hubdir.KEYS_FILE)
    genuine_keys, genuine_cert = keys_file.read_bytes(), bergen.hub_dir.tls_cert_pem()
    genuine = bergen.hub_dir.identity(PASSPHRASE.encode())
    # A thief holding the leaked genesis key "rotates" Bergen to a key of its own: a chain valid
    # by itself (both signatures), but a fork of the one the peers followed.
    forged = region.saved["leaked"].rotated()
    await bergen.stop()
    try:
        bergen.hub_dir.write_identity(forged, PASSPHRASE.encode())
        await asyncio.to_thread(bergen.launch)
        bergen.connect()
        # The impostor asks the peers (its requests are signed by the forged key): each peer
        # fetches the descriptor at once, finds the fork, refuses and audits it, and keeps the
        # key it followed. (Its bound may hold the fetch back up to FOLLOW_INTERVAL_S.)
        for peer in (region.stavanger, region.porsgrunn):
            async def refused_the_fork(peer=peer) -> bool:
                answer = await bergen.admin("RunQuery", spec(bergen.hub_id, peer.hub_id))
                assert next(p.status for p in answer.provenance if p.hub_id == peer.hub_id) != "answered"
                return any(e["action"] == "peer.refresh" and e["outcome"] == "refused" and "fork" in e["detail"]
                           for e in await audit_entries(peer))
            await eventually(refused_the_fork, timeout=FOLLOW_INTERVAL_S + 15)
            assert followed_key(peer, bergen.hub_id) == genuine.public_key_raw
            assert stored_peer(peer, bergen.hub_id).tls_cert_pem == genuine.tls_cert_pem.decode()
        # The partner, past its own bound, re-fetches the descriptor and refuses the fork too.
        region.clock.advance(FOLLOW_INTERVAL_S)
        with pytest.raises(asker.AnswerRefused, match="fork"):
            await region.ask_as_partner()
        assert region.session.chain.current == genuine.public_key_raw
    finally:
        await bergen.stop()
        keys_file.write_bytes(genuine_keys)
        bergen.hub_dir.file(hubdir.CERT_FILE).write_bytes(genuine_cert)
        await asyncio.to_thread(bergen.launch)
        bergen.connect()
    # The genuine hub back: everyone's answers include it again, under the key they kept.
    region.clock.advance(FOLLOW_INTERVAL_S)
    for ask in (region.ask_as_partner, lambda: region.ask_as_peer(region.stavanger),
                lambda: region.ask_as_peer(region.porsgrunn)):
        async def answered(ask=ask) -> bool:
            try:
                return bergen_status(region, await ask()) == "answered"
            except grpc.aio.AioRpcError as exc:  # reconnecting to the restarted hub
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return False
        await eventually(answered, timeout=30)
