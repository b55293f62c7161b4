"""Running a hub for years, against real in-process hubs (grpc.aio + TLS, SQLite files):
admin token rotation, passphrase change, erasure of a data subject, retention and the
agreements' promise, and the audit entry each of these leaves."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat

import grpc
import pytest
from conftest import PASSPHRASE, make_hub_dir, start_live_hub
from query_helpers import DAY_MS, Node, agree, deliver, eventually, ms, spec, start_nodes, stop_nodes, terms_toml

from node import credentials, hubdir, keystore
from node.api.v1 import admin_pb2
from node.app.server import start
from node.clock import ManualClock
from node.hub import Hub
from node.senml import Reading
from node.storage.base import ReadingFilter
from node.tlsfiles import pinned_client_ssl_context


async def audit_entries(live, action: str) -> list[dict]:
    rows = await live.hub.storage.read(lambda s: s.audit_rows())
    return [e for e in (json.loads(r.entry) for r in rows) if e["action"] == action]


# -- admin token ------------------------------------------------------------------------------

async def test_rotated_token_refuses_the_old_one_at_once(live_hub):
    old = live_hub.admin_metadata
    await live_hub.admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=old)
    response = await live_hub.admin.RotateAdminToken(admin_pb2.RotateAdminTokenRequest(), metadata=old)
    token_file = live_hub.data_dir / hubdir.ADMIN_TOKEN_FILE
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    new = live_hub.admin_metadata  # reads admin.token again
    assert new != old and response.token_sha256 == hubdir.hash_token(token_file.read_text().strip())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await live_hub.admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=old)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await live_hub.admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=new)
    # hub.toml holds the new hash, so a restart keeps refusing the old token
    assert hubdir.HubDir(live_hub.data_dir).config().admin_token_sha256 == response.token_sha256
    assert not (live_hub.data_dir / credentials.PENDING_TOKEN_FILE).exists()
    assert [e["actor"] for e in await audit_entries(live_hub, "admin.token-rotate")] == ["admin"]


async def test_rotation_ends_dashboard_sessions_opened_with_the_old_token(live_hub):

    import aiohttp

    hub = live_hub.hub
    context = pinned_client_ssl_context(hub.identity.tls_cert_pem)
    old_token = hubdir.HubDir(live_hub.data_dir).admin_token()
    async with aiohttp.ClientSession() as http:
        async def call(method: str, path: str, cookie: str = "", **body):
            async with http.request(method, hub.endpoint.http_url + path, ssl=context, server_hostname=hub.config.hub_id,
                                    headers={"Cookie": cookie} if cookie else {}, json=body or None) as response:
                return response.status, response.cookies

        status, cookies = await call("POST", "/api/login", token=old_token)
        session = f"sr_session={cookies['sr_session'].value}"
        assert status == 200 and (await call("GET", "/api/overview", session))[0] == 200
        await live_hub.admin.RotateAdminToken(admin_pb2.RotateAdminTokenRequest(), metadata=live_hub.admin_metadata)
        assert (await call("GET", "/api/overview", session))[0] == 401  # the old session ended
        assert (await call("POST", "/api/login", token=old_token))[0] == 401
        status, cookies = await call("POST", "/api/login", token=hubdir.HubDir(live_hub.data_dir).admin_token())
        assert status == 200 and (await call("GET", "/api/overview", f"sr_session={cookies['sr_session'].value}"))[0] == 200


# -- audit: an export that does not extend an earlier one ---------------------------------------

async def test_a_rewritten_log_is_caught_by_comparing_exports(live_hub):
    """Someone with the database rewrites an old entry and recomputes the chain: each export
    verifies on its own (the hub signs what it holds), but the newer no longer extends the earlier."""
    import hashlib

    from node import audit

    async def export() -> bytes:
        return (await live_hub.admin.ExportAudit(admin_pb2.ExportAuditRequest(), metadata=live_hub.admin_metadata)).jsonl

    for subject in ("s1", "s2"):
        await live_hub.admin.GrantConsent(admin_pb2.ConsentRequest(subject_id=subject, purpose_code="research"),
                                          metadata=live_hub.admin_metadata)
    earlier = await export()
    await live_hub.admin.GrantConsent(admin_pb2.ConsentRequest(subject_id="s3", purpose_code="research"), metadata=live_hub.admin_metadata)
    honest = await export()
    audit.verify_extension(earlier, honest)

    def rewrite(store) -> None:
        rows = store.audit_rows()
        previous = bytes(32)
        for row in rows:
            entry = row.entry.replace(b'"s1"', b'"xx"')
            digest = hashlib.sha256(previous + entry).digest()
            store.conn.execute("UPDATE audit_log SET entry = ?, prev_hash = ?, hash = ? WHERE seq = ?", (entry, previous, digest, row.seq))
            previous = digest

    await live_hub.hub.storage.write(rewrite)
    rewritten = await export()
    audit.verify_export(rewritten)  # on its own it verifies
    with pytest.raises(audit.AuditError, match="differs between the exports: the log was rewritten"):
        audit.verify_extension(earlier, rewritten)


# -- passphrase -------------------------------------------------------------------------------

def test_passphrase_change_reencrypts_and_the_old_one_no_longer_opens(tmp_path):
    hub_dir = hubdir.HubDir(make_hub_dir(tmp_path / "hub"))
    before = keystore.read(hub_dir.file(hubdir.KEYS_FILE), PASSPHRASE.encode())
    new = b"a-new-passphrase-for-years"
    with pytest.raises(hubdir.HubDirError, match="current passphrase does not open"):
        credentials.change_passphrase(hub_dir, b"not-the-passphrase-at-all", new)
    with pytest.raises(hubdir.HubDirError, match="at least 12"):
        credentials.change_passphrase(hub_dir, PASSPHRASE.encode(), b"short")
    assert keystore.read(hub_dir.file(hubdir.KEYS_FILE), PASSPHRASE.encode()) == before  # nothing changed
    credentials.change_passphrase(hub_dir, PASSPHRASE.encode(), new)
    assert keystore.read(hub_dir.file(hubdir.KEYS_FILE), new) == before
    with pytest.raises(keystore.KeystoreError, match="wrong passphrase"):
        keystore.read(hub_dir.file(hubdir.KEYS_FILE), PASSPHRASE.encode())
    assert stat.S_IMODE(os.stat(hub_dir.file(hubdir.KEYS_FILE)).st_mode) == 0o600
    assert hub_dir.identity(new).hub_id_text == hub_dir.config().hub_id


# -- erasure ----------------------------------------------------------------------------------

async def test_erasing_a_subject_changes_the_next_answer_exactly(tmp_path):
    live = await start_live_hub(make_hub_dir(tmp_path / "hub"))
    try:
        node = Node(live, live.channel)
        day = [Reading("water_volume", ms(2019, 1, 1) + h * 3_600_000, 0.1 * (h + 1)) for h in range(24)]
        meters = {}
        for subject in ("household-a", "household-b"):
            meters[subject] = await live.add_sensor(tmp_path, name=subject, dataset="water_consumption",
                                                    metrics=["water_volume"], subject_id=subject)
            await deliver(node, meters[subject], day[: 24 if subject == "household-a" else 10])
            await node.admin("GrantConsent", admin_pb2.ConsentRequest(subject_id=subject, purpose_code="research"))
        ask = spec(dataset="water_consumption", metric="water_volume", aggregate="count", bucket="window",
                   start_ms=ms(2019, 1, 1), end_ms=ms(2019, 1, 2), purpose_code="research", hub_ids=[node.id])

        async def readings_answered() -> int:
            answer = await node.run_query(ask)
            assert [p.status for p in answer.provenance] == ["answered"], answer.provenance
            return sum(r.readings for r in answer.rows)

        assert await readings_answered() == 34
        report = await node.admin("EraseSubject", admin_pb2.EraseSubjectRequest(subject_id="household-a"))
        assert (report.readings_deleted, report.consents_deleted) == (24, 1)
        assert list(report.sensors_revoked) == [meters["household-a"].credential.sensor_id]
        assert await readings_answered() == 10  # effective for the very next query, exactly the other subject's
        consents = await node.admin("ListConsents", admin_pb2.ListConsentsRequest())
        assert [c.subject_id for c in consents.consents] == ["household-b"]
        sensors = await node.admin("ListSensors", admin_pb2.ListSensorsRequest(include_revoked=True))
        erased = next(s for s in sensors.sensors if s.sensor_id == meters["household-a"].credential.sensor_id)
        assert (erased.subject_id, erased.label, erased.readings) == ("", "", 0) and erased.revoked_at_ms
        entries = await audit_entries(live, "consent.erase")
        assert [(e["subject"], e["outcome"]) for e in entries] == [("household-a", "ok")]
        assert "24 readings" in entries[0]["detail"]
        # the subject is gone: a second erase, like one of a subject never seen, is refused
        for unknown in ("household-a", "nobody-here"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await node.admin("EraseSubject", admin_pb2.EraseSubjectRequest(subject_id=unknown))
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "nothing erased" in refused.value.details()
        assert await readings_answered() == 10
        await node.admin("WithdrawConsent", admin_pb2.ConsentRequest(subject_id="household-b", purpose_code="research"))
        await node.admin("RevokeSensor", admin_pb2.RevokeSensorRequest(sensor_id=meters["household-b"].credential.sensor_id))
        admin_actions = [(e["actor"], e["action"], e["subject"]) for e in
                         (json.loads(r.entry) for r in await live.hub.storage.read(lambda s: s.audit_rows())) if e["actor"] == "admin"]
        b_sensor = meters["household-b"].credential.sensor_id
        assert [a for a in admin_actions if a[2] in ("household-b", b_sensor)] == [
            ("admin", "sensor.add", b_sensor), ("admin", "consent.grant", "household-b"),
            ("admin", "consent.withdraw", "household-b"), ("admin", "sensor.revoke", b_sensor)]
    finally:
        await live.stop()


# -- retention --------------------------------------------------------------------------------

async def test_retention_deletes_old_readings_and_respects_what_agreements_promise(tmp_path):
    oslo, bergen = await start_nodes(tmp_path, (("oslo", "0301"), ("bergen", "4601")))
    try:
        now = oslo.live.hub.clock.now_ms() // DAY_MS * DAY_MS
        sensor = await oslo.live.add_sensor(tmp_path, name="station", metrics=["pm25"])
        ages = (1, 20, 40, 100)  # days before today
        await deliver(oslo, sensor, [Reading("pm25", now - age * DAY_MS, float(age)) for age in ages])
        await agree(oslo, bergen, terms_toml(longest_window_days=31))  # oslo promises bergen 31 days of air_quality

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await oslo.admin("SetRetention", admin_pb2.SetRetentionRequest(dataset="air_quality", retention_days=10))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "promises 31 days" in refused.value.details() and "nothing changed" in refused.value.details()
        assert hubdir.HubDir(oslo.live.data_dir).config().retention.days == {}
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await oslo.admin("SetRetention", admin_pb2.SetRetentionRequest(dataset="no_such_data", retention_days=10))
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        report = await oslo.admin("SetRetention", admin_pb2.SetRetentionRequest(dataset="air_quality", retention_days=35))
        assert hubdir.HubDir(oslo.live.data_dir).config().retention.days == {"air_quality": 35}
        planned = {d.dataset: d for d in report.datasets}["air_quality"]
        assert (planned.retention_days, planned.promised_days) == (35, 31)
        dry = await oslo.admin("RunRetention", admin_pb2.RunRetentionRequest(dry_run=True))
        assert sum(d.readings_deleted for d in dry.datasets) == 0
        ask = spec(aggregate="count", bucket="window", start_ms=now - 200 * DAY_MS, end_ms=now + DAY_MS, hub_ids=[oslo.id])

        async def answered() -> int:
            return sum(r.readings for r in (await oslo.run_query(ask)).rows)

        assert await answered() == 4
        run = await oslo.admin("RunRetention", admin_pb2.RunRetentionRequest())
        assert {d.dataset: d.readings_deleted for d in run.datasets}["air_quality"] == 2  # 40 and 100 days old
        left = await oslo.live.hub.storage.read(lambda s: s.readings(ReadingFilter()))
        assert sorted(r.value for r in left) == [1.0, 20.0]
        assert await answered() == 2  # effective for the next query
        status = await oslo.admin("GetStatus", admin_pb2.GetStatusRequest())
        assert [c.readings for c in status.counts] == [2]
        sensors = await oslo.admin("ListSensors", admin_pb2.ListSensorsRequest())
        assert [s.readings for s in sensors.sensors] == [2]  # the per-sensor count follows the deletion
        consumer_side = await bergen.admin("RunRetention", admin_pb2.RunRetentionRequest(dry_run=True))
        assert {d.dataset: d.promised_days for d in consumer_side.datasets}["air_quality"] == 0  # bergen promises nothing
        runs = await audit_entries(oslo.live, "retention.run")
        # Every dataset of the shipped catalog has a retention, so every run audits each; air_quality's lost 2.
        assert [("deleted 2 readings" in e["detail"]) for e in runs if e["subject"] == "air_quality"][-1:] == [True]
        assert [e["outcome"] for e in await audit_entries(oslo.live, "retention.set")] == ["promised_by_agreement", "ok"]
    finally:
        await stop_nodes([oslo, bergen])


async def test_a_run_keeps_what_an_agreement_signed_after_the_setting_promises(tmp_path):
    """Retention set first, then an agreement with a longer window: the run keeps the longer."""
    oslo, bergen = await start_nodes(tmp_path, (("oslo", "0301"), ("bergen", "4601")))
    try:
        now = oslo.live.hub.clock.now_ms() // DAY_MS * DAY_MS
        sensor = await oslo.live.add_sensor(tmp_path, name="station", metrics=["pm25"])
        await deliver(oslo, sensor, [Reading("pm25", now - age * DAY_MS, float(age)) for age in (5, 25, 60)])
        await oslo.admin("SetRetention", admin_pb2.SetRetentionRequest(dataset="air_quality", retention_days=10))
        await agree(oslo, bergen, terms_toml(longest_window_days=30))
        run = await oslo.admin("RunRetention", admin_pb2.RunRetentionRequest())
        air = {d.dataset: d for d in run.datasets}["air_quality"]
        assert (air.retention_days, air.promised_days, air.readings_deleted) == (10, 30, 1)  # only the 60-day-old one
        air_runs = [e for e in await audit_entries(oslo.live, "retention.run") if e["subject"] == "air_quality"]
        assert "kept 30 days as an agreement promises" in air_runs[-1]["detail"]
    finally:
        await stop_nodes([oslo, bergen])


async def test_the_hub_deletes_expired_readings_by_itself_every_interval(tmp_path):
    """The background task, driven by a ManualClock: nothing is deleted until the interval has
    passed, then the expired readings are, and the run is audited."""
    hub_dir = hubdir.HubDir(make_hub_dir(tmp_path / "hub"))
    config = hub_dir.config()
    config.retention.days["air_quality"] = 30
    config.retention.interval_seconds = 3600
    hub_dir.write_config(config)
    clock = ManualClock(now_ms=ms(2024, 6, 1))
    hub = Hub.open(hub_dir.path, PASSPHRASE.encode(), clock=clock)
    running = await start(hub, host="127.0.0.1", grpc_port=0, http_port=0)
    try:
        from conftest import LiveHub

        from node.client import open_channel

        live = LiveHub(hub_dir.path, running, open_channel(hub.endpoint.grpc_address, hub_id=hub.config.hub_id,
                                                            cert_pem=hub.identity.tls_cert_pem, aio=True))
        node = Node(live, live.channel)
        sensor = await live.add_sensor(tmp_path, name="station", metrics=["pm25"])
        await deliver(node, sensor, [Reading("pm25", clock.now_ms() - age * DAY_MS, float(age)) for age in (3, 29, 31, 90)])

        async def stored() -> int:
            return len(await hub.storage.read(lambda s: s.readings(ReadingFilter())))

        assert await stored() == 4  # the run at start found nothing: the readings came after it
        clock.advance(3599)
        assert await stored() == 4  # not before the interval has passed

        async def an_interval_later() -> bool:
            # The task may still be in its first run when the clock moves; nudging the clock a
            # minute at a time (at most hours, far below the 29-day margin) reaches its sleep.
            if await stored() == 2:
                return True
            clock.advance(60)
            return False

        await eventually(an_interval_later, what="the hourly retention run")
        assert "air_quality" in [e["subject"] for e in await audit_entries(live, "retention.run")]
        await live.channel.close()
    finally:
        await running.stop(grace=1)


async def _equals(read, expected) -> bool:
    return await read() == expected


def test_retention_settings_round_trip_through_hub_toml(tmp_path):
    hub_dir = hubdir.HubDir(make_hub_dir(tmp_path / "hub"))
    config = hub_dir.config()
    config.retention.days["traffic"] = 400
    config.retention.interval_seconds = 3600
    hub_dir.write_config(config)
    again = hub_dir.config()
    assert (again.retention.days, again.retention.interval_seconds) == ({"traffic": 400}, 3600)
    assert dt.timedelta(days=again.retention.days["traffic"]).days == 400


# -- daily use: id prefixes, municipality names, partial CSV -----------------------------------

def test_an_id_prefix_resolves_when_unique_and_is_refused_when_ambiguous(capsys):
    import typer

    from node.app.cli.names import resolve_id

    ids = ["urn:uuid:7f3a0000-0000-4000-8000-000000000001", "urn:uuid:7f3b0000-0000-4000-8000-000000000002"]
    assert resolve_id("agreement", "7f3a", ids) == ids[0]
    assert resolve_id("agreement", "urn:uuid:7f3b", ids) == ids[1]
    assert resolve_id("agreement", ids[1], ids) == ids[1]
    with pytest.raises(typer.Exit):
        resolve_id("agreement", "7f3", ids)
    message = " ".join(capsys.readouterr().err.split())
    assert "'7f3' is ambiguous" in message and ids[0] in message and ids[1] in message
    with pytest.raises(typer.Exit):
        resolve_id("agreement", "99", ids)
    assert "no agreement id starts with '99'" in " ".join(capsys.readouterr().err.split())
    sensors = ["ab" * 16, "ac" * 16]
    assert resolve_id("sensor", "ab", sensors, hex_only=True) == sensors[0]
    assert resolve_id("sensor", "not-an-id", sensors, hex_only=True) == "not-an-id"  # the hub refuses it in its words
    assert resolve_id("sensor", "0" * 32, sensors, hex_only=True) == "0" * 32


@pytest.mark.parametrize("typed, meant", [("Askoy", "Askøy"), ("askoey", "Askøy"), ("Tromso", "Tromsø"), ("Baerum", "Bærum"),
                                          ("Stavangr", "Stavanger")])
def test_a_municipality_typed_without_norwegian_letters_is_suggested(typed, meant, capsys):
    import typer

    from node.app.cli.names import municipality

    with pytest.raises(typer.Exit):
        municipality(typed)
    assert f"did you mean {meant} (" in " ".join(capsys.readouterr().err.split())
    assert municipality(meant).name == meant


def test_csv_marks_a_partial_answer_on_every_row():
    import csv
    import io

    from node.api.v1 import query_pb2, query_service_pb2
    from node.app.cli.query import write_csv

    answer = query_service_pb2.QueryAnswer(partial=True, missing_hubs=["hub-b"],
                                           rows=[query_pb2.Row(group="region", bucket_label="2019", value=1.0, readings=3)])
    rows = list(csv.DictReader(io.StringIO(write_csv(answer))))
    assert rows and all(r["partial"] == "true" and r["missing_hubs"] == "hub-b" for r in rows)
    whole = query_service_pb2.QueryAnswer(rows=answer.rows)
    assert [r["partial"] for r in csv.DictReader(io.StringIO(write_csv(whole)))] == ["false"]


# -- backup archives as an attacker would shape them --------------------------------------------

def _archive_with(path, members: dict[str, bytes]) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_restore_refuses_hostile_archives_and_writes_nothing(tmp_path):
    import tarfile

    from node import backup

    hub_dir = hubdir.HubDir(make_hub_dir(tmp_path / "hub"))
    good = tmp_path / "good.tar.gz"
    backup.create(hub_dir, good, PASSPHRASE.encode(), 1_700_000_000_000)
    with tarfile.open(good) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    cases = {
        "traversal": ({**members, "../evil.sh": b"#!/bin/sh\n"}, "unexpected entry '../evil.sh'"),
        "missing file": ({k: v for k, v in members.items() if k != "keys.json"}, "lacks keys.json"),
        "foreign manifest": ({**members, "manifest.json": members["manifest.json"].replace(b'"keys.json"', b'"other.json"')},
                             "must hold exactly"),
        "bigger than listed": ({**members, "hub.db": members["hub.db"] + b"\0"}, "wrong size"),
    }
    for case, (content, message) in cases.items():
        archive = tmp_path / f"{case}.tar.gz"
        _archive_with(archive, content)
        target = tmp_path / f"restored-{case.replace(' ', '-')}"
        with pytest.raises(backup.BackupError, match=message):
            backup.restore(archive, target, PASSPHRASE.encode())
        assert not target.exists() and not (tmp_path / "evil.sh").exists(), case
        assert not list(tmp_path.glob(".restored-*")), case
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(backup.BackupError, match="not an empty directory"):
        backup.restore(good, occupied, PASSPHRASE.encode())
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    backup.restore(good, empty, PASSPHRASE.encode())  # an empty directory is fine
    assert hubdir.HubDir(empty).config().hub_id == hub_dir.config().hub_id
