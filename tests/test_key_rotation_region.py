"""Issue 12 items 1-2, done-when: identity-key rotation and certificate renewal in a region of
real hub processes (TLS, loopback) while peers and a partner keep querying.

Stavanger (entry for the partner) and Porsgrunn are peers of Bergen, which shares its readings
with both and with a research partner. Bergen rotates its identity key (stopped, `smartregion
key rotate`, started again) while the others query; afterwards the answers, agreement and audit
exports made before the rotation still verify offline with the documented commands, and new
ones signed under the new key verify too. A hub at Bergen's address showing a forged key history
(a fork signed with a leaked old key) or a replayed older one is refused by the peers, which keep
the last good state. Bergen then renews its certificate while serving and the peers keep querying.
Bergen's sensor, enrolled at the start, keeps delivering (gRPC and HTTP, new connections) with
its SAME credential file after the rotation and after the renewal: it trusts Bergen's TLS
issuer, which signs each new certificate.

Test order matters (one module-scoped region). Timing on 2 shared cores: about 30-40 s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import time

import grpc
import pytest
import pytest_asyncio
from cryptography import x509

from federation import answers, descriptors, export, partners, peers
from federation.partner_client import PartnerSession
from federation.query import asker
from node import audit, hubdir, identity, keychain, keystore, senml
from node.api.v1 import admin_pb2, agreement_pb2, query_pb2
from node.app.sensor_client import Sensor, SensorCredential, replay
from node.tlsfiles import pinned_client_ssl_context
from tests.conftest import PASSPHRASE
from tests.node_helpers import NODE_CLIENT, node_partner_client
from tests.region_helpers import ProcessHub, agree_between, cli, eventually, example_client_asks, start_all

pytestmark = pytest.mark.asyncio(loop_scope="module")

State = agreement_pb2.AgreementState
UNTIL = (dt.date.today() + dt.timedelta(days=365)).isoformat()
TERMS = f"""
[purpose]
code = "research"
description = "Fine particulate matter across the region"
[data]
datasets = ["air_quality"]
metrics = ["pm25"]
aggregates = ["count", "mean"]
group_by = ["municipality", "time_bucket"]
smallest_bucket = "day"
longest_window_days = 31
min_group_size = 1
queries_per_day = 100000
[validity]
from = "now"
until = {UNTIL}
"""
START_MS = int(dt.datetime(2019, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
END_MS = START_MS + 7 * 86_400_000
HOURS = 7 * 24


def spec() -> query_pb2.QuerySpec:
    return query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=START_MS, end_ms=END_MS,
                               bucket="day", group_by="municipality", purpose_code="research", deadline_ms=4000)


class Region:
    def __init__(self, hubs: dict[str, ProcessHub], partner: partners.PartnerKey, tmp) -> None:
        self.hubs = hubs
        self.stavanger, self.bergen, self.porsgrunn = hubs["stavanger"], hubs["bergen"], hubs["porsgrunn"]
        self.partner = partner
        self.tmp = tmp
        self.partner_channel = None
        self.agreements: dict[str, str] = {}  # name -> an agreement of Bergen's

    async def open_partner(self) -> None:
        _, cert = await peers.fetch_descriptor(self.stavanger.address, self.stavanger.hub_id, int(time.time() * 1000))
        self.partner_channel = peers.channel_to(self.stavanger.address, self.stavanger.hub_id, cert)

    async def ask_as_partner(self):
        return await asker.ask(self.partner_channel, self.partner.key, self.partner.partner_id, self.stavanger.hub_id, spec())

    async def ask_as_hub(self, hub: ProcessHub):
        return await hub.admin("RunQuery", spec())


def bergen_status(region: Region, answer) -> str:
    by_hub = {p.hub_id: p for p in answer.provenance}
    return by_hub[region.bergen.hub_id].status if region.bergen.hub_id in by_hub else "not asked"


async def agree_hubs(provider: ProcessHub, consumer: ProcessHub) -> str:
    return await agree_between(provider, consumer, TERMS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def region(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("key-region")
    hubs = {name: ProcessHub(tmp / name, number) for name, number in
            (("stavanger", "1103"), ("bergen", "4601"), ("porsgrunn", "4001"))}
    try:
        await start_all(list(hubs.values()))
        for a in hubs.values():
            for b in hubs.values():
                if a is not b:
                    await a.admin("AddPeer", admin_pb2.AddPeerRequest(address=b.address, hub_id=b.hub_id))
        for i, hub in enumerate(hubs.values()):  # a week of hourly PM2.5 per hub, values known
            response = await hub.admin("AddSensor", admin_pb2.AddSensorRequest(
                dataset="air_quality", metrics=["pm25"], latitude=60.0, longitude=5.0, label=f"station {i}"))
            path = tmp / f"station-{i}.credential.json"
            path.write_bytes(response.credential_json)
            readings = [senml.Reading("pm25", START_MS + h * 3_600_000, float(i * 10 + h % 5)) for h in range(HOURS)]
            summary = await asyncio.to_thread(replay, Sensor(SensorCredential.load(path)), readings)
            assert summary.readings_stored == HOURS
        key_path = tmp / "uis.key"
        partner = partners.keygen(key_path, "Universitetet i Stavanger", PASSPHRASE.encode())
        public = partners.public_file_path(key_path).read_bytes()
        region = Region(hubs, partner, tmp)
        for hub in hubs.values():
            await hub.admin("AddPartner", admin_pb2.AddPartnerRequest(
                name="Universitetet i Stavanger", org_number="971564679", public_key_file=public))
            offered = await hub.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=TERMS, to=partner.partner_id))
            async with PartnerSession(partner, hub.address, hub.hub_id) as session:
                assert (await session.accept(offered.terms.agreement_id)).state == State.AGREEMENT_STATE_ACTIVE
            if hub is region.bergen:
                region.agreements["partner"] = offered.terms.agreement_id
        region.agreements["stavanger"] = await agree_hubs(region.bergen, region.stavanger)
        region.agreements["porsgrunn"] = await agree_hubs(region.bergen, region.porsgrunn)
        await region.open_partner()
        yield region
    finally:
        if "region" in locals() and region.partner_channel is not None:
            await region.partner_channel.close()
        for hub in hubs.values():
            await hub.stop()


async def query_continuously(region: Region, stop: asyncio.Event, outcomes: list[tuple[str, str]]) -> None:
    """Stavanger and Porsgrunn (as hubs) and the partner (through Stavanger) ask again and
    again; every answer returned must verify offline, whatever Bergen's status in it."""
    askers = {"stavanger": lambda: region.ask_as_hub(region.stavanger), "porsgrunn": lambda: region.ask_as_hub(region.porsgrunn),
              "partner": region.ask_as_partner}
    while not stop.is_set():
        for name, ask in askers.items():
            answer = await ask()
            answers.verify(answers.to_json(answer))  # never wrongly verified: this raises on any bad signature
            outcomes.append((name, bergen_status(region, answer)))
        await asyncio.sleep(0.1)


def pinned_chain(hub: ProcessHub, peer_id: str) -> keychain.KeyChain | None:
    from node.storage.sqlite import SqliteStore

    store = SqliteStore(hub.hub_dir.file(hubdir.DB_FILE))
    try:
        peer = store.get_peer(peer_id)
    finally:
        store.close()
    assert peer is not None
    return descriptors.stored_chain(peer.descriptor)


def pinned_cert(hub: ProcessHub, peer_id: str) -> str:
    from node.storage.sqlite import SqliteStore

    store = SqliteStore(hub.hub_dir.file(hubdir.DB_FILE))
    try:
        peer = store.get_peer(peer_id)
    finally:
        store.close()
    assert peer is not None
    return peer.tls_cert_pem


BERGEN_STATION = "station-1.credential.json"  # enrolled by the fixture, before any rotation or renewal
SENT_LATER: list[int] = []  # readings Bergen's station delivered after the fixture's week


async def bergen_station_delivers(region: Region) -> None:
    """Bergen's station sends a day of readings over gRPC and one over HTTP (each on a new
    connection) with its enrolment credential file, untouched; every reading is stored. The
    readings lie after the queried week, so the answers the askers check do not change."""
    credential = SensorCredential.load(region.tmp / BERGEN_STATION)
    issuer = region.bergen.hub_dir.tls_issuer_pem()
    assert issuer is not None and credential.hub_cert_pem == issuer  # it trusts the issuer, not the certificate
    sensor = Sensor(credential)
    day = len(SENT_LATER) // 2
    start = END_MS + day * 2 * 86_400_000
    over_grpc = [senml.Reading("pm25", start + h * 3_600_000, 7.0) for h in range(24)]
    summary = await asyncio.to_thread(replay, sensor, over_grpc)
    assert summary.readings_stored == 24
    over_http = [senml.Reading("pm25", start + 86_400_000 + h * 3_600_000, 8.0) for h in range(24)]
    body = await asyncio.to_thread(sensor.send_http, sensor.seal([over_http])[0])
    assert body["status"] == 200 and body["readings_stored"] == 24, body
    SENT_LATER.extend([24, 24])


async def audit_of(hub: ProcessHub) -> list[dict]:
    export = await hub.admin("ExportAudit", admin_pb2.ExportAuditRequest())
    lines = export.jsonl.decode().splitlines()
    return [json.loads(json.loads(line)["entry"]) for line in lines[1:-1]]


async def restart(hub: ProcessHub) -> None:
    await hub.stop()
    await asyncio.to_thread(hub.launch)
    hub.connect()


# -- 1. rotation while everyone queries ------------------------------------------------------------
async def test_rotation_while_two_peers_and_a_partner_query(region):
    bergen = region.bergen
    files = region.tmp / "before"
    files.mkdir()
    # Before: everything answers, and the answers, an agreement and the audit log are saved.
    for name, answer in (("stavanger", await region.ask_as_hub(region.stavanger)), ("partner", await region.ask_as_partner())):
        assert bergen_status(region, answer) == "answered", name
        (files / f"answer-{name}.json").write_bytes(answers.to_json(answer))
    exported = await bergen.admin("ExportAgreement", admin_pb2.AgreementRef(agreement_id=region.agreements["stavanger"]))
    (files / "agreement.json").write_bytes(exported.document_json)
    (files / "audit.jsonl").write_bytes((await bergen.admin("ExportAudit", admin_pb2.ExportAuditRequest())).jsonl)
    audit.verify_export((files / "audit.jsonl").read_bytes())
    old = bergen.hub_dir.identity(PASSPHRASE.encode())
    region.leaked_genesis = old  # for the forgery test: as if the old key had leaked

    stop, outcomes = asyncio.Event(), []
    querying = asyncio.create_task(query_continuously(region, stop, outcomes))
    try:
        await bergen.stop()
        refused = await cli("key", "rotate", "--data-dir", str(bergen.hub_dir.path), check=False)  # documented command
        assert refused.returncode == 0, refused.stdout
        assert f"Rotated the identity key of hub {bergen.hub_id} (rotation 1; the hub id stays)" in refused.stdout
        await asyncio.to_thread(bergen.launch)
        bergen.connect()
        new = bergen.hub_dir.identity(PASSPHRASE.encode())
        assert new.hub_id_text == bergen.hub_id and new.public_key_raw != old.public_key_raw

        # Every asker gets Bergen's answers again, signed by the new key.
        seen = len(outcomes)

        async def all_answered_again() -> bool:
            recent = {name for name, status in outcomes[seen:] if status == "answered"}
            return recent == {"stavanger", "porsgrunn", "partner"}
        await eventually(all_answered_again, timeout=40)
    finally:
        stop.set()
        await querying  # re-raises if any answer failed to verify
    statuses = {status for _, status in outcomes}
    assert statuses <= {"answered", "unavailable", "unauthenticated"}, statuses  # never anything else
    print(f"\nBergen's status in the answers across the rotation: {[status for _, status in outcomes]}")

    answer = await region.ask_as_hub(region.stavanger)
    partial = next(p for p in answer.provenance if p.hub_id == bergen.hub_id).partial
    assert partial.provider_public_key == new.public_key_raw and list(partial.provider_key_history) == list(new.key_history)
    after = region.tmp / "after"
    after.mkdir()
    (after / "answer.json").write_bytes(answers.to_json(answer))
    # The peers followed the history (and audited it); the pinned certificate is the new one.
    for peer in (region.stavanger, region.porsgrunn):
        chain = pinned_chain(peer, bergen.hub_id)
        assert chain is not None and chain.current == new.public_key_raw and chain.genesis == old.public_key_raw
        assert identity.read_tls_binding(x509.load_pem_x509_certificate(pinned_cert(peer, bergen.hub_id).encode()))[1] \
            == new.public_key_raw

    # Offline, with the documented commands: everything from before still verifies...
    assert "verifies" in (await cli("query", "verify", str(files / "answer-partner.json"))).stdout
    assert answers.verify((files / "answer-stavanger.json").read_bytes()).verified_hubs
    assert "verifies" in (await cli("agreement", "verify", str(files / "agreement.json"))).stdout
    # ...and so does what is signed under the new key, an agreement signed after the rotation
    # included (proposed by Porsgrunn, countersigned by Bergen with its new key, over the wire).
    assert bergen.hub_id in answers.verify(answers.to_json(answer)).verified_hubs
    new_agreement = await agree_hubs(region.porsgrunn, bergen)
    exported = await bergen.admin("ExportAgreement", admin_pb2.AgreementRef(agreement_id=new_agreement))
    assert "exporter_key_history" in json.loads(exported.document_json)
    assert export.verify(exported.document_json, int(time.time() * 1000)).evidence.fully_signed()
    (after / "audit.jsonl").write_bytes((await bergen.admin("ExportAudit", admin_pb2.ExportAuditRequest())).jsonl)
    extended = (await cli("audit", "verify", str(after / "audit.jsonl"), "--extends", str(files / "audit.jsonl"),
                   "--hub-id", bergen.hub_id)).stdout
    assert "those entries are unchanged" in extended
    header = json.loads((after / "audit.jsonl").read_text().splitlines()[0])
    assert header["key_history"] == [s.hex() for s in new.key_history]
    entries = await audit_of(region.stavanger)
    assert any(e["action"] == "peer.key_rotated" and e["actor"] == bergen.hub_id for e in entries)
    history = json.loads((await cli("key", "history", "--data-dir", str(bergen.hub_dir.path), "--json")).stdout)
    assert [k["key"] for k in history["keys"]] == [old.public_key_raw.hex(), new.public_key_raw.hex()]
    await node_client_verifies_through_the_rotated_hub(region)
    # The sensor enrolled before the rotation connects anew with the same credential file.
    await bergen_station_delivers(region)
    # (`key rotate` against the RUNNING hub rotates it live: tests/test_live_rotation.py.)


async def node_client_verifies_through_the_rotated_hub(region: Region) -> None:
    """The Node.js partner client (examples/node-partner) asks the ROTATED hub as entry: it pins
    the certificate through the key history in Bergen's descriptor and verifies Bergen's summary
    and partial, signed by the new key, by that history."""
    node, query = node_partner_client()
    out = await example_client_asks([node, query], region.tmp / "uis.key", region.bergen)
    assert out["answered_by"] == region.bergen.hub_id
    assert {p["hub_id"]: p["signature_verified"] for p in out["provenance"]} == {h.hub_id: True for h in region.hubs.values()}
    # The same client's chain check refuses a history with a signature removed.
    history = [s.hex() for s in region.bergen.hub_dir.identity(PASSPHRASE.encode()).key_history]
    broken = history[0][:-128] + "00" * 64
    script = ("import('./smartregion.mjs').then((m) => { const h = process.argv[1]; const ok = m.keysOfHub(h, "
              "[Buffer.from(process.argv[2], 'hex')]); try { m.keysOfHub(h, [Buffer.from(process.argv[3], 'hex')]); "
              "console.log('accepted'); } catch (e) { console.log(ok.length + ' ' + e.message); } })")
    checked = await asyncio.to_thread(subprocess.run, [node, "-e", script, region.bergen.hub_id, history[0], broken],
                                      capture_output=True, text=True, timeout=30, cwd=NODE_CLIENT)
    assert checked.stdout.strip() == f"2 rotation 1 of hub {region.bergen.hub_id} is not signed by the new key", checked.stderr


# -- 2. a forged or replayed history at Bergen's address --------------------------------------------
async def test_a_forked_or_replayed_key_history_is_refused_and_the_last_good_state_kept(region):
    bergen = region.bergen
    keys_file = bergen.hub_dir.file(hubdir.KEYS_FILE)
    genuine_keys, genuine_cert = keys_file.read_bytes(), bergen.hub_dir.tls_cert_pem()
    real = bergen.hub_dir.identity(PASSPHRASE.encode())
    leaked = region.leaked_genesis
    # A thief with the leaked genesis key rotates "Bergen" to a key of their own: a valid chain
    # by itself (both signatures), but not the one the peers followed.
    forged = leaked.rotated()
    try:  # (a replayed older history is refused the same way: tests/test_key_rotation.py)
        for fake, fragment in ((forged, "fork"),):
            await bergen.stop()
            bergen.hub_dir.write_identity(fake, PASSPHRASE.encode())
            await asyncio.to_thread(bergen.launch)
            bergen.connect()
            for peer in (region.stavanger, region.porsgrunn):
                async def refused(peer=peer, fragment=fragment) -> bool:
                    listed = await peer.admin("ListPeers", admin_pb2.ListPeersRequest())
                    entry = next(p for p in listed.peers if p.hub_id == bergen.hub_id)
                    return fragment in entry.last_error
                await eventually(refused, timeout=20)
                chain = pinned_chain(peer, bergen.hub_id)  # the last good state, unchanged
                assert chain is not None and chain.current == real.public_key_raw
                assert pinned_cert(peer, bergen.hub_id) == real.tls_cert_pem.decode()
            # Pinning it again by hand (`peer add`) does not undo the followed history either.
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await region.stavanger.admin("AddPeer", admin_pb2.AddPeerRequest(address=bergen.address, hub_id=bergen.hub_id))
            assert again.value.code() == grpc.StatusCode.PERMISSION_DENIED and fragment in again.value.details()
            assert pinned_chain(region.stavanger, bergen.hub_id).current == real.public_key_raw
            # Queries go on; the impostor is named unavailable, never its figures verified.
            answer = await region.ask_as_hub(region.stavanger)
            assert bergen_status(region, answer) != "answered"
            answers.verify(answers.to_json(answer))
        entries = await audit_of(region.stavanger)
        assert any(e["action"] == "peer.refresh" and e["outcome"] == "refused" and "fork" in e["detail"] for e in entries)
    finally:
        await bergen.stop()
        keys_file.write_bytes(genuine_keys)
        bergen.hub_dir.file(hubdir.CERT_FILE).write_bytes(genuine_cert)
        await asyncio.to_thread(bergen.launch)
        bergen.connect()

    async def back() -> bool:
        return bergen_status(region, await region.ask_as_hub(region.stavanger)) == "answered"
    await eventually(back, timeout=30)
    assert keystore.read(keys_file, PASSPHRASE.encode())["identity_key"] == real.to_secrets()["identity_key"]


# -- 3. certificate renewal while serving -------------------------------------------------------------
async def test_certificate_renewal_while_peers_query(region):
    bergen = region.bergen
    before = await peers.fetch_certificate(bergen.address)
    stop, outcomes = asyncio.Event(), []
    querying = asyncio.create_task(query_continuously(region, stop, outcomes))
    try:
        await asyncio.sleep(0.5)
        renewed = await cli("cert", "renew", "--data-dir", str(bergen.hub_dir.path))  # the running hub: no restart
        assert "the running hub serves it from now on" in renewed.stdout
        served = await peers.fetch_certificate(bergen.address)
        assert served != before and served == bergen.hub_dir.tls_cert_pem()
        key = identity.verify_tls_binding(x509.load_pem_x509_certificate(served),
                                          bergen.hub_dir.identity(PASSPHRASE.encode()).key_history)
        for peer in (region.stavanger, region.porsgrunn):  # re-pinned by binding at their next refresh
            async def repinned(peer=peer) -> bool:
                return pinned_cert(peer, bergen.hub_id) == served.decode()
            await eventually(repinned, timeout=20)
        seen = len(outcomes)

        async def more() -> bool:
            return len(outcomes) >= seen + 6
        await eventually(more, timeout=20)
        # The sensor, enrolled before the rotation and this renewal, still connects anew.
        await bergen_station_delivers(region)
    finally:
        stop.set()
        await querying
    assert outcomes and all(status == "answered" for _, status in outcomes), outcomes
    # The descriptor announces the new certificate, and it is bound to the current identity key.
    listed = await region.stavanger.admin("ListPeers", admin_pb2.ListPeersRequest())
    assert next(p for p in listed.peers if p.hub_id == bergen.hub_id).state == "reachable"
    await bergen.channel.close()  # the test's own admin channel was pinned to the old certificate,
    bergen.channel = None        # as `smartregion` commands read tls-cert.pem afresh each time
    bergen.connect()
    status = await bergen.admin("GetCertificateStatus", admin_pb2.GetCertificateStatusRequest())
    assert bytes.fromhex(status.certificate_sha256) == descriptors.cert_sha256(served) and status.key_rotations == 1
    assert key == bergen.hub_dir.identity(PASSPHRASE.encode()).public_key_raw
    # The expiry gauge names the served certificate's expiry, by value.
    import urllib.request

    context = pinned_client_ssl_context(served)  # the certificate is issuer-signed: a partial chain
    context.check_hostname = False
    url = bergen.process.endpoint["http_url"] + "/metrics"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {bergen.hub_dir.admin_token()}"})
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, context=context, timeout=10).read().decode())
    cert = x509.load_pem_x509_certificate(served)
    line = next(line for line in body.splitlines() if line.startswith("smartregion_tls_certificate_expiry_timestamp_seconds"))
    assert float(line.split()[-1]) == cert.not_valid_after_utc.timestamp()
    issuer = x509.load_pem_x509_certificate(bergen.hub_dir.tls_issuer_pem() or b"")
    line = next(line for line in body.splitlines() if line.startswith("smartregion_tls_issuer_expiry_timestamp_seconds"))
    assert float(line.split()[-1]) == issuer.not_valid_after_utc.timestamp()
    assert status.issuer_not_after_ms == int(issuer.not_valid_after_utc.timestamp() * 1000) and not status.issuer_created
    # Nothing the sensor sent after the fixture's week was lost: Bergen holds every reading.
    counts = (await bergen.admin("GetStatus", admin_pb2.GetStatusRequest())).counts
    assert [c.readings for c in counts if c.metric == "pm25"] == [HOURS + sum(SENT_LATER)] and len(SENT_LATER) == 4
    status_line = (await cli("cert", "status", "--data-dir", str(bergen.hub_dir.path))).stdout
    assert "valid for 1095 more days" in status_line or "valid for 1094 more days" in status_line
    assert "Signed by the hub's TLS issuer (tls-issuer.pem, what sensors trust), valid until" in status_line
