"""The admin's handbook (docs/operations.md) driven as an admin would: `smartregion` commands
against a real hub process (`smartregion serve`). The commands run in this process through
typer's CliRunner (the same app, arguments and environment; about 0.7 s less per command than
a subprocess, which keeps this module inside the suite's time budget); the concurrent ingest
runs as its own `smartregion sensor replay` process. Backup during ingest, restore into a new directory
with the restore check, token rotation seen by the running hub, passphrase change, erasure,
retention and the audit log's filters and extension check."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import sqlite3
import stat
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from test_cli import PASSPHRASE, REPO_ROOT, VALAND, ok, one_line, user_error
from typer.testing import CliRunner

from node import hubdir, keystore
from node.api.v1 import ingest_pb2_grpc
from node.app.cli.main import app
from node.app.launcher import HubProcess
from node.app.sensor_client import Sensor, SensorCredential, read_station_csv, replay
from node.senml import Reading

HANDBOOK = REPO_ROOT / "docs" / "operations.md"
START_MS = 1_546_300_800_000  # 2019-01-01
RUN: set[str] = set()  # the command paths this module ran, checked against the handbook at the end


GROUPS = {"sensor", "peer", "partner", "agreement", "query", "consent", "region", "audit", "admin", "passphrase", "retention",
          "key", "cert"}


def command_path(words: list[str]) -> str:
    """`sensor add` for `sensor add --data-dir ...`, `backup` for `backup --data-dir ...`."""
    return " ".join(words[:2]) if words[0] in GROUPS else words[0]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


RUNNER = CliRunner()


def cli(*args, passphrase: str | None = PASSPHRASE, **env_vars: str) -> Result:
    """`smartregion ARGS` with only these SMARTREGION_* variables set."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SMARTREGION_")}
    env.update({"COLUMNS": "200", "SMARTREGION_PASSPHRASE": passphrase, **env_vars})
    outcome = RUNNER.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    return Result(outcome.exit_code, outcome.stdout, outcome.stderr)


def run(*args, **kwargs) -> Result:
    """cli(), recording the command for the handbook check."""
    RUN.add(command_path([str(a) for a in args]))
    return cli(*args, **kwargs)


def as_json(result: Result):
    return json.loads(ok(result).stdout)


def readings_in(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    base = tmp_path_factory.mktemp("ops")
    data_dir = base / "hub"
    ok(run("init", "--data-dir", data_dir, "--municipality", "Stavanger", "--grpc-port", 0, "--http-port", 0))
    process = HubProcess(data_dir, PASSPHRASE)
    try:
        process.start()
        yield data_dir, base
    finally:
        process.stop(timeout=10)
        process.kill()


def test_backup_during_ingest_restores_a_hub_that_verifies_and_answers(hub):
    data_dir, base = hub
    credential = base / "valand.json"
    ok(run("sensor", "add", "--data-dir", data_dir, "--dataset", "air_quality", "--metrics", "pm25",
           "--location", "58.97,5.73", "--label", "Valand", "--out", credential))
    sensor = Sensor(SensorCredential.load(credential))
    backed_up, sent = threading.Event(), []

    def ingest() -> None:
        """Frames of one reading an hour, one after another, until two have been stored after the backup."""
        after = 0
        while after < 2:
            done = backed_up.is_set()
            frame = sensor.seal([[Reading("pm25", START_MS + len(sent) * 3_600_000, 10.0)]])[0]
            assert sensor.send_http(frame)["status"] == 200
            sent.append(frame)
            after += done

    sender = threading.Thread(target=ingest)
    sender.start()
    try:
        deadline = time.monotonic() + 60
        while readings_in(data_dir / hubdir.DB_FILE) < 5:
            assert sender.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        archive = base / "hub-backup.tar.gz"
        backed = ok(run("backup", "--data-dir", data_dir, "--out", archive))
    finally:
        backed_up.set()
        sender.join(60)
    total = readings_in(data_dir / hubdir.DB_FILE)
    assert total == len(sent)
    assert "Backed up hub" in one_line(backed.stdout)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600

    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        keys_in_archive = tar.extractfile("keys.json").read()
        snapshot_manifest = json.loads(tar.extractfile("manifest.json").read())
    assert names == ["hub.db", "hub.toml", "keys.json", "manifest.json", "tls-cert.pem"]  # no admin token
    assert json.loads(keys_in_archive)["format"] == keystore.FORMAT and b"identity_key" not in keys_in_archive  # still encrypted
    assert keys_in_archive == (data_dir / hubdir.KEYS_FILE).read_bytes()

    restored = base / "restored"
    result = ok(run("restore", archive, "--data-dir", restored))
    text = one_line(result.stdout)
    assert "Check passed" in text and "audit chain verifies" in text
    in_backup = readings_in(restored / hubdir.DB_FILE)
    assert 5 <= in_backup < total  # a consistent snapshot, taken while frames kept arriving
    answered = int(re.search(r"air_quality/pm25 \S+: (\d+) readings", text).group(1))
    assert answered == in_backup  # the restored hub answers from exactly what the backup holds
    conn = sqlite3.connect(restored / hubdir.DB_FILE)
    asked = [json.loads(e) for (e,) in conn.execute("SELECT entry FROM audit_log ORDER BY seq")]
    conn.close()
    assert [e["outcome"] for e in asked if e["action"] == "query.run"] == ["ok"]  # the check really asked the restored hub
    restored_config = hubdir.HubDir(restored).config()
    assert restored_config.hub_id == snapshot_manifest["hub_id"] == hubdir.HubDir(data_dir).config().hub_id
    assert restored_config.admin_token_sha256 != hubdir.HubDir(data_dir).config().admin_token_sha256  # a new token
    assert stat.S_IMODE(restored.stat().st_mode) == 0o700
    for name in (hubdir.KEYS_FILE, hubdir.CONFIG_FILE, hubdir.DB_FILE, hubdir.ADMIN_TOKEN_FILE, hubdir.CERT_FILE, hubdir.ISSUER_FILE):
        assert stat.S_IMODE((restored / name).stat().st_mode) == 0o600, name
    assert not (restored / hubdir.ENDPOINT_FILE).exists()
    # tls-issuer.pem is not in the archive: the restore writes it from keys.json, the same issuer
    assert hubdir.HubDir(restored).tls_issuer_pem() == hubdir.HubDir(data_dir).tls_issuer_pem() is not None
    # the backup itself is audited, in the live hub and in the snapshot
    shown = as_json(run("audit", "show", "--data-dir", data_dir, "--kind", "backup", "--json"))
    assert [e["action"] for e in shown] == ["backup.create"]

    # a restore never goes into a directory that holds a hub, nor overwrites one
    before = (restored / hubdir.CONFIG_FILE).read_bytes()
    user_error(run("restore", archive, "--data-dir", restored), "already holds a hub", "nothing changed")
    user_error(run("restore", archive, "--data-dir", data_dir), "already holds a hub")
    assert (restored / hubdir.CONFIG_FILE).read_bytes() == before
    # the wrong passphrase is refused, before anything is written
    user_error(run("restore", archive, "--data-dir", base / "elsewhere", passphrase="not-the-right-passphrase"),
               "passphrase does not open the backup's keys", "nothing restored")
    assert not (base / "elsewhere").exists() and not list(base.glob(".elsewhere.restoring-*"))


def test_a_backup_with_the_wrong_passphrase_is_refused(hub):
    data_dir, base = hub
    out = base / "never.tar.gz"
    user_error(run("backup", "--data-dir", data_dir, "--out", out, passphrase="a-wrong-passphrase-here"),
               "refusing to back up", "does not open this hub's keys")
    assert not out.exists()


def test_a_damaged_backup_is_refused_whole(hub, tmp_path):
    data_dir, _ = hub
    archive = tmp_path / "b.tar.gz"
    ok(run("backup", "--data-dir", data_dir, "--out", archive))
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "hub.toml":
                data = data.replace(b'municipality = "1103"', b'municipality = "4601"')
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    user_error(run("restore", tampered, "--data-dir", tmp_path / "new"), "hub.toml in the backup does not match its manifest hash")
    assert not (tmp_path / "new").exists()
    user_error(run("restore", VALAND, "--data-dir", tmp_path / "new2"), "not a readable smartregion backup")


def test_rotate_token_the_running_hub_refuses_the_old_one(hub):
    data_dir, _ = hub
    old = (data_dir / hubdir.ADMIN_TOKEN_FILE).read_text()
    result = ok(run("admin", "rotate-token", "--data-dir", data_dir))
    assert "accepts only the new token" in one_line(result.stdout)
    assert stat.S_IMODE((data_dir / hubdir.ADMIN_TOKEN_FILE).stat().st_mode) == 0o600
    ok(run("status", "--data-dir", data_dir))  # the CLI reads the new one
    token_file = data_dir / hubdir.ADMIN_TOKEN_FILE
    new = token_file.read_text()
    token_file.write_text(old)
    try:
        user_error(cli("status", "--data-dir", data_dir), "UNAUTHENTICATED", "not this hub's")
    finally:
        token_file.write_text(new)
    ok(run("status", "--data-dir", data_dir))


def test_rotate_token_and_audit_show_with_the_hub_stopped(tmp_path):
    data_dir = tmp_path / "stopped"
    hubdir.init_hub(data_dir, "4627", PASSPHRASE.encode())
    old = (data_dir / hubdir.ADMIN_TOKEN_FILE).read_text().strip()
    result = ok(run("admin", "rotate-token", "--data-dir", data_dir))
    assert "accepts only it when it starts" in one_line(result.stdout)
    new = (data_dir / hubdir.ADMIN_TOKEN_FILE).read_text().strip()
    config = hubdir.HubDir(data_dir).config()
    assert new != old and config.admin_token_sha256 == hubdir.hash_token(new)
    shown = as_json(run("audit", "show", "--data-dir", data_dir, "--kind", "admin", "--json"))
    assert [(e["action"], e["detail"]) for e in shown] == [("admin.token-rotate", "while the hub was stopped")]
    user_error(cli("admin", "rotate-token", "--data-dir", tmp_path / "nothing"), "not a hub data directory")


def test_passphrase_change_while_the_hub_runs(hub):
    data_dir, base = hub
    new = "a-brand-new-passphrase-2026"
    env_file = base / "new-passphrase"
    env_file.write_text(new + "\n")
    refused = cli("passphrase", "change", "--data-dir", data_dir, passphrase="not-the-current-one")
    user_error(refused, "no new passphrase", "SMARTREGION_NEW_PASSPHRASE")
    refused = cli("passphrase", "change", "--data-dir", data_dir, passphrase="not-the-current-one", SMARTREGION_NEW_PASSPHRASE=new)
    user_error(refused, "current passphrase does not open", "nothing changed")
    result = ok(run("passphrase", "change", "--data-dir", data_dir, SMARTREGION_NEW_PASSPHRASE_FILE=str(env_file)))
    assert "no longer opens it" in one_line(result.stdout)
    assert "running hub keeps its keys in memory" in one_line(result.stderr)
    ok(cli("status", "--data-dir", data_dir))  # still serving
    assert hubdir.HubDir(data_dir).identity(new.encode())
    with pytest.raises(hubdir.HubDirError, match="wrong passphrase"):
        hubdir.HubDir(data_dir).identity(PASSPHRASE.encode())
    # change it back for the other tests of this module
    ok(cli("passphrase", "change", "--data-dir", data_dir, passphrase=new, SMARTREGION_NEW_PASSPHRASE=PASSPHRASE))
    assert hubdir.HubDir(data_dir).identity(PASSPHRASE.encode())


def test_consent_erase_and_retention_from_the_command_line(hub, tmp_path):
    data_dir, _ = hub
    ok(run("sensor", "add", "--data-dir", data_dir, "--dataset", "water_consumption", "--metrics", "water_volume",
           "--location", "58.97,5.73", "--subject", "meter-17", "--out", tmp_path / "meter.json"))
    ok(run("consent", "grant", "--data-dir", data_dir, "--subject", "meter-17", "--purpose", "research"))
    erased = ok(run("consent", "erase", "--data-dir", data_dir, "--subject", "meter-17"))
    assert "Erased meter-17: 0 readings and 1 consent records deleted" in one_line(erased.stdout)
    user_error(run("consent", "erase", "--data-dir", data_dir, "--subject", "meter-17"), "NOT_FOUND", "knows no data subject")

    shown = as_json(run("retention", "show", "--data-dir", data_dir, "--json"))
    # The shipped catalog's retention (node/data/catalog.toml).
    assert {d["dataset"]: d["retention_days"] for d in shown["datasets"]}["air_quality"] == 3650
    ok(run("retention", "set", "--data-dir", data_dir, "--dataset", "air_quality", "--days", 36500))
    user_error(cli("retention", "set", "--data-dir", data_dir, "--dataset", "nonsense", "--days", 3), "unknown dataset 'nonsense'")
    report = as_json(run("retention", "run", "--data-dir", data_dir, "--json"))
    assert {d["dataset"]: int(d["readings_deleted"]) for d in report["datasets"]}["air_quality"] == 0
    ok(cli("retention", "set", "--data-dir", data_dir, "--dataset", "air_quality", "--days", 0))


def test_audit_show_filters_and_verify_checks_an_extension(hub, tmp_path):
    data_dir, _ = hub
    everything = as_json(run("audit", "show", "--data-dir", data_dir, "--json"))
    kinds = {e["action"].split(".")[0] for e in everything}
    assert {"sensor", "consent", "admin", "keystore", "retention", "backup"} <= kinds
    consent = as_json(cli("audit", "show", "--data-dir", data_dir, "--kind", "consent", "--json"))
    assert [e["action"] for e in consent] == ["consent.grant", "consent.erase", "consent.erase"]
    subject = as_json(cli("audit", "show", "--data-dir", data_dir, "--counterparty", "meter-17", "--json"))
    assert {e["subject"] for e in subject} == {"meter-17"} and len(subject) == 3
    assert as_json(cli("audit", "show", "--data-dir", data_dir, "--until", "2000-01-01", "--json")) == []
    assert len(as_json(cli("audit", "show", "--data-dir", data_dir, "--since", "2000-01-01", "--json"))) == len(everything)
    user_error(cli("audit", "show", "--data-dir", data_dir, "--since", "yesterday"), "--since must be a date")

    first, second = tmp_path / "audit-1.jsonl", tmp_path / "audit-2.jsonl"
    ok(run("audit", "export", "--data-dir", data_dir, "--out", first))
    ok(cli("consent", "grant", "--data-dir", data_dir, "--subject", "someone", "--purpose", "research"))
    ok(cli("audit", "export", "--data-dir", data_dir, "--out", second))
    hub_id = hubdir.HubDir(data_dir).config().hub_id
    extended = ok(run("audit", "verify", second, "--extends", first, "--hub-id", hub_id))
    assert "were added since" in one_line(extended.stdout)
    user_error(cli("audit", "verify", first, "--extends", second), "fewer entries")
    # a rewritten log: the earlier export's last entry differs from the newer one's
    lines = first.read_text().splitlines()
    forged = tmp_path / "forged.jsonl"
    entry = json.loads(lines[1])
    entry["hash"] = "00" * 32
    forged.write_text("\n".join([lines[0], json.dumps(entry), *lines[2:]]) + "\n")
    user_error(cli("audit", "verify", second, "--extends", forged), "earlier export does not verify")


# -- sensor rekey ------------------------------------------------------------------------------

def _refusal(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str | None]:
    return exc.code(), dict(exc.trailing_metadata() or ()).get("smartregion-reason")


def test_rekey_mid_replay_loses_and_duplicates_nothing_and_retires_the_old_key(hub):
    """A sensor replays a day under its old key; half way the admin rekeys it; the rest of the
    day goes under the old key (still accepted), the next day under the new credential, and
    then a frame under the old key is refused as retired_key. One sensor id, one history."""
    data_dir, base = hub
    old_path, new_path = base / "rekey-old.json", base / "rekey-new.json"
    doc = as_json(run("sensor", "add", "--data-dir", data_dir, "--dataset", "air_quality", "--metrics", "pm25,temperature",
                      "--location", "58.97,5.73", "--label", "Rekeyed", "--out", old_path, "--json"))
    sensor_id = doc["sensor"]["sensor_id"]
    old = Sensor(SensorCredential.load(old_path))
    day1 = list(read_station_csv(VALAND, ["pm25", "temperature"], dt.date(2019, 1, 1), dt.date(2019, 1, 2)))
    day2 = list(read_station_csv(VALAND, ["pm25", "temperature"], dt.date(2019, 1, 2), dt.date(2019, 1, 3)))
    assert len(day1) > 20 and len(day2) > 20
    rekeyed: list[Result] = []

    def rekey_half_way(sent: int) -> None:
        if not rekeyed and sum_sent.append(sent) is None and sum(sum_sent) >= len(day1) // 2:
            rekeyed.append(run("sensor", "rekey", "--data-dir", data_dir, sensor_id[:10], "--out", new_path,
                               "--request-id", "rekey-1", "--json"))

    sum_sent: list[int] = []
    first = replay(old, day1, readings_per_frame=4, frames_per_call=1, progress=rekey_half_way)
    assert len(rekeyed) == 1 and 0 < sum(sum_sent[:-1]) < len(day1)  # the rekey came between two streams of the replay
    shown = as_json(rekeyed[0])
    assert shown["sensor"]["sensor_id"] == sensor_id and shown["credential"] == str(new_path)
    assert stat.S_IMODE(new_path.stat().st_mode) == 0o600
    new = SensorCredential.load(new_path)
    assert new.sensor_id == sensor_id and new.key != old.credential.key
    # a retry with the same request id (the answer was lost) hands out the same key again
    again = base / "rekey-again.json"
    ok(run("sensor", "rekey", "--data-dir", data_dir, sensor_id, "--out", again, "--request-id", "rekey-1"))
    assert SensorCredential.load(again).key == new.key

    second = as_json(run("sensor", "replay", "--credential", new_path, "--csv", VALAND, "--since", "2019-01-02",
                         "--until", "2019-01-03", "--frame-size", 4, "--json"))
    assert (first.readings_stored, first.readings_duplicate) == (len(day1), 0)
    assert (second["sensor_id"], second["readings_stored"], second["readings_duplicate"]) == (sensor_id, len(day2), 0)
    listed = next(s for s in as_json(run("sensor", "list", "--data-dir", data_dir, "--json")) if s["sensor_id"] == sensor_id)
    assert int(listed["readings"]) == len(day1) + len(day2)  # one history under one id
    assert int(listed["old_key_until_ms"]) <= int(listed["last_seen_ms"])  # the first new-key frame ended the grace

    late = old.seal([[Reading("pm25", START_MS + 7 * 86_400_000, 5.0)]])[0]  # a counter above every accepted one
    with old.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        old.send_stream(ingest_pb2_grpc.IngestStub(channel), [late])
    assert _refusal(refused.value) == (grpc.StatusCode.PERMISSION_DENIED, "retired_key")
    assert "previous key of sensor" in refused.value.details()
    assert old.send_http(late)["error"] == "retired_key"
    assert [e["subject"] for e in as_json(run("audit", "show", "--data-dir", data_dir, "--kind", "sensor", "--json"))
            if e["action"] == "sensor.rekey"] == [sensor_id]  # once: the retry changed nothing


def test_rekey_refusals_change_nothing(hub):
    data_dir, base = hub
    credential = base / "refused.json"
    sensor_id = as_json(run("sensor", "add", "--data-dir", data_dir, "--dataset", "air_quality", "--metrics", "pm25",
                            "--location", "58.97,5.73", "--out", credential, "--json"))["sensor"]["sensor_id"]
    before = as_json(run("sensor", "list", "--data-dir", data_dir, "--all", "--json"))
    user_error(cli("sensor", "rekey", "--data-dir", data_dir, "ab" * 16, "--out", base / "x.json"), "NOT_FOUND", "no sensor")
    user_error(cli("sensor", "rekey", "--data-dir", data_dir, "zz", "--out", base / "x.json"), "INVALID_ARGUMENT", "32 hexadecimal digits")
    user_error(cli("sensor", "rekey", "--data-dir", data_dir, sensor_id, "--out", credential), "exists", "--force")
    ok(cli("sensor", "rekey", "--data-dir", data_dir, sensor_id, "--out", base / "first.json", "--request-id", "used-once"))
    other = as_json(cli("sensor", "add", "--data-dir", data_dir, "--dataset", "air_quality", "--metrics", "pm25",
                        "--location", "58.97,5.73", "--out", base / "other.json", "--json"))["sensor"]["sensor_id"]
    user_error(cli("sensor", "rekey", "--data-dir", data_dir, other, "--out", base / "y.json", "--request-id", "used-once"),
               "ALREADY_EXISTS", "another sensor")
    ok(cli("sensor", "revoke", "--data-dir", data_dir, other))
    user_error(cli("sensor", "rekey", "--data-dir", data_dir, other, "--out", base / "z.json"),
               "PERMISSION_DENIED", "was revoked", "cannot be rekeyed")
    for refused in ("x.json", "y.json", "z.json"):
        assert not (base / refused).exists()  # no credential for a key that does not exist
    after = as_json(cli("sensor", "list", "--data-dir", data_dir, "--all", "--json"))
    unchanged = {s["sensor_id"]: s for s in after if s["sensor_id"] != sensor_id}
    assert unchanged[other].get("rekeyed_at_ms", "0") == "0"
    assert len(after) == len(before) + 1


# -- partner remove ----------------------------------------------------------------------------

PARTNER_TERMS = """\
[purpose]
code = "research"
description = "A study that ends"
[data]
datasets = ["air_quality"]
metrics = ["pm25"]
aggregates = ["mean"]
group_by = ["time_bucket"]
smallest_bucket = "day"
longest_window_days = 31
min_group_size = 1
queries_per_day = 10
[validity]
until = 2030-12-31
"""


def test_partner_remove_revokes_its_agreements_and_refuses_it(hub, tmp_path):
    data_dir, _ = hub
    key = tmp_path / "nors.key"
    made = ok(cli("partner", "keygen", "--out", key, "--name", "NORCE"))
    partner_id = made.stdout.split("Partner id ")[1].split()[0]
    ok(cli("partner", "add", "--data-dir", data_dir, "--name", "NORCE", "--org-number", "919408049",
           "--public-key", tmp_path / "nors.key.pub.json"))
    terms = tmp_path / "terms.toml"
    terms.write_text(PARTNER_TERMS)
    agreement_id = as_json(cli("agreement", "propose", "--data-dir", data_dir, "--terms", terms, "--to", partner_id[:12],
                               "--json"))["terms"]["agreement_id"]
    endpoint = json.loads((data_dir / hubdir.ENDPOINT_FILE).read_text())
    at_hub = ["--hub", endpoint["grpc_address"], "--hub-id", hubdir.HubDir(data_dir).config().hub_id]
    ok(cli("partner", "accept", agreement_id, "--key", key, *at_hub))

    user_error(cli("partner", "remove", "--data-dir", data_dir, "ff" * 16), "NOT_FOUND", "is not a partner registered at this hub")
    user_error(cli("partner", "remove", "--data-dir", data_dir, "zz-no"), "no partner id starts with 'zz-no'")
    removed = one_line(ok(run("partner", "remove", "--data-dir", data_dir, partner_id[:10], "--reason", "contract ended")).stdout)
    assert f"Removed partner {partner_id}" in removed and f"Revoked 1 agreement(s): {agreement_id}" in removed
    [view] = [a for a in as_json(cli("agreement", "list", "--data-dir", data_dir, "--json"))
              if a["terms"]["agreement_id"] == agreement_id]
    assert view["state"] == "AGREEMENT_STATE_REVOKED"
    user_error(cli("partner", "agreements", "--key", key, *at_hub), "UNAUTHENTICATED", "was removed from this hub")
    assert partner_id not in ok(run("partner", "list", "--data-dir", data_dir)).stdout
    assert "removed" in one_line(ok(cli("partner", "list", "--data-dir", data_dir, "--all")).stdout)
    shown = as_json(cli("audit", "show", "--data-dir", data_dir, "--kind", "partner", "--json"))
    assert [e["action"] for e in shown if e["subject"] == partner_id][-1] == "partner.remove"


def test_partner_agreements_shows_a_replaced_version_as_superseded(hub, tmp_path):
    data_dir, _ = hub
    key = tmp_path / "hvl.key"
    partner_id = ok(cli("partner", "keygen", "--out", key, "--name", "HVL")).stdout.split("Partner id ")[1].split()[0]
    ok(cli("partner", "add", "--data-dir", data_dir, "--name", "HVL", "--org-number", "917641404",
           "--public-key", tmp_path / "hvl.key.pub.json"))
    endpoint = json.loads((data_dir / hubdir.ENDPOINT_FILE).read_text())
    at_hub = ["--hub", endpoint["grpc_address"], "--hub-id", hubdir.HubDir(data_dir).config().hub_id]
    first, second = tmp_path / "v1.toml", tmp_path / "v2.toml"
    first.write_text(PARTNER_TERMS)
    def propose(terms: Path) -> str:
        proposed = as_json(cli("agreement", "propose", "--data-dir", data_dir, "--terms", terms, "--to", partner_id, "--json"))
        return proposed["terms"]["agreement_id"]

    v1 = propose(first)
    ok(cli("partner", "accept", v1, "--key", key, *at_hub))
    second.write_text(f'version = 2\nsupersedes = "{v1}"\n' + PARTNER_TERMS.replace("queries_per_day = 10", "queries_per_day = 20"))
    v2 = propose(second)
    shared = next(i for i in range(len("urn:uuid:"), len(v1)) if v1[i] != v2[i])  # the ids agree up to here
    user_error(cli("partner", "accept", v2[:shared], "--key", key, *at_hub), "is ambiguous", v1, v2)
    ok(cli("partner", "accept", v2.removeprefix("urn:uuid:")[:shared + 1 - len("urn:uuid:")], "--key", key, *at_hub))
    states = {a["agreement_id"]: a["state"] for a in as_json(cli("partner", "agreements", "--key", key, *at_hub, "--json"))}
    assert states == {v1: "superseded", v2: "active"}
    text = one_line(ok(cli("partner", "agreements", "--key", key, *at_hub)).stdout)
    assert f"version 1, state superseded — replaced by version 2, {v2}" in text and "version 2, state active" in text


# -- peers: the wrong port, the other side's part, remove -----------------------------------------

def test_peer_add_names_the_wrong_port_and_what_the_other_side_must_do(hub, tmp_path):
    data_dir, _ = hub
    bergen_dir = tmp_path / "bergen"
    ok(cli("init", "--data-dir", bergen_dir, "--municipality", "Bergen", "--grpc-port", 0, "--http-port", 0))
    bergen = HubProcess(bergen_dir, PASSPHRASE)
    bergen.start()
    try:
        bergen_id = hubdir.HubDir(bergen_dir).config().hub_id
        own = json.loads((data_dir / hubdir.ENDPOINT_FILE).read_text())
        own_id = hubdir.HubDir(data_dir).config().hub_id
        http_address = bergen.endpoint["http_url"].removeprefix("https://")
        user_error(cli("peer", "add", "--data-dir", data_dir, "--address", http_address, "--hub-id", bergen_id),
                   "UNAVAILABLE", f"{http_address} answers HTTP/1.1, not gRPC", "gRPC port")
        assert as_json(cli("peer", "list", "--data-dir", data_dir, "--all", "--json")) == []  # nothing pinned

        added = one_line(ok(run("peer", "add", "--data-dir", data_dir, "--address", bergen.endpoint["grpc_address"],
                                "--hub-id", bergen_id)).stdout)
        assert "Bergen has not pinned this hub yet" in added
        assert f"smartregion peer add --data-dir DATA_DIR --address {own['grpc_address']} --hub-id {own_id}" in added
        [listed] = as_json(run("peer", "list", "--data-dir", data_dir, "--json"))
        assert listed["state"] == "waiting-for-pin"
        assert "waiting for them to pin us" in one_line(ok(cli("peer", "list", "--data-dir", data_dir)).stdout)
        back = one_line(ok(cli("peer", "add", "--data-dir", bergen_dir, "--address", own["grpc_address"],
                               "--hub-id", own_id)).stdout)
        assert "Stavanger has pinned this hub too" in back
        deadline = time.monotonic() + 30
        while as_json(cli("peer", "list", "--data-dir", data_dir, "--json"))[0]["state"] != "reachable":
            assert time.monotonic() < deadline, "the pending exchange did not go through once both had pinned"
            time.sleep(0.2)

        removed = one_line(ok(run("peer", "remove", "--data-dir", data_dir, bergen_id[:8])).stdout)
        assert f"Removed peer {bergen_id}" in removed
        assert as_json(cli("peer", "list", "--data-dir", data_dir, "--json")) == []
    finally:
        bergen.stop(timeout=10)
        bergen.kill()


def test_key_rotation_and_certificate_commands_of_the_handbook(hub, tmp_path):
    """docs/operations.md "Identity key and TLS certificate": rotate a stopped hub's key (the hub
    id stays), list the history, see the certificate's expiry, renew it offline and on the
    running hub, rotate the running hub's key. (Rotation with peers querying:
    tests/test_live_rotation.py, tests/test_key_rotation_region.py.)"""
    stopped = tmp_path / "stopped"
    ok(run("init", "--data-dir", stopped, "--municipality", "Bergen", "--grpc-port", 0, "--http-port", 0))
    hub_id = hubdir.HubDir(stopped).config().hub_id
    rotated = ok(run("key", "rotate", "--data-dir", stopped)).stdout
    assert f"Rotated the identity key of hub {hub_id} (rotation 1; the hub id stays)" in rotated
    history = as_json(run("key", "history", "--data-dir", stopped, "--json"))
    assert history["hub_id"] == hub_id and [k["sequence"] for k in history["keys"]] == [0, 1]
    assert "valid for 1095 more days" in ok(run("cert", "status", "--data-dir", stopped)).stdout
    assert "the hub serves it when it starts" in ok(run("cert", "renew", "--data-dir", stopped)).stdout
    data_dir, base = hub
    enrolled = base / "before-renewal.json"
    sensor_id = as_json(run("sensor", "add", "--data-dir", data_dir, "--dataset", "air_quality", "--metrics", "pm25",
                            "--location", "58.97,5.73", "--out", enrolled, "--json"))["sensor"]["sensor_id"]
    assert "the running hub serves it from now on" in ok(run("cert", "renew", "--data-dir", data_dir)).stdout
    # "Sensors need nothing": the credential from before the renewal trusts the issuer, which signed the new one.
    reading = [Reading("pm25", int(dt.datetime(2019, 3, 1, tzinfo=dt.UTC).timestamp() * 1000), 4.0)]
    assert replay(Sensor(SensorCredential.load(enrolled)), reading).readings_stored == 1
    again = base / "again.json"
    assert "with its same key" in ok(run("sensor", "credential", "--data-dir", data_dir, sensor_id[:10], "--out", again)).stdout
    assert json.loads(again.read_text())["key"] == json.loads(enrolled.read_text())["key"]
    assert json.loads(again.read_text())["hub_tls_certificate"].encode() == hubdir.HubDir(data_dir).tls_issuer_pem()
    live = ok(run("key", "rotate", "--data-dir", data_dir)).stdout  # the running hub rotates while it serves
    assert "(rotation 1; the hub id stays)" in live and "the running hub signs with the new key" in live
    assert [k["sequence"] for k in as_json(run("key", "history", "--data-dir", data_dir, "--json"))["keys"]] == [0, 1]
    # and the sensor's file still works after the live rotation too
    later = [Reading("pm25", int(dt.datetime(2019, 3, 1, 1, tzinfo=dt.UTC).timestamp() * 1000), 5.0)]
    assert replay(Sensor(SensorCredential.load(enrolled)), later).readings_stored == 1
    # "Compromise": a stolen data directory. A rotation with a new issuer; the old credential no
    # longer reaches the hub, the rekeyed one does (tests/privacy/attacks: and not the thief's copy).
    issuer_before = hubdir.HubDir(data_dir).tls_issuer_pem()
    replaced = one_line(ok(run("key", "rotate", "--new-issuer", "--data-dir", data_dir)).stdout)
    assert "(rotation 2; the hub id stays)" in replaced and "The TLS issuer was replaced" in replaced
    assert hubdir.HubDir(data_dir).tls_issuer_pem() != issuer_before
    with pytest.raises(Exception):  # noqa: B017 (grpc's TLS failure surfaces as one of several errors)
        replay(Sensor(SensorCredential.load(enrolled)), later, max_retries=0)
    renewed = base / "valand.json.new"
    ok(run("sensor", "rekey", "--data-dir", data_dir, sensor_id[:10], "--out", renewed))
    assert json.loads(renewed.read_text())["hub_tls_certificate"].encode() == hubdir.HubDir(data_dir).tls_issuer_pem()
    last = [Reading("pm25", int(dt.datetime(2019, 3, 1, 2, tzinfo=dt.UTC).timestamp() * 1000), 6.0)]
    assert replay(Sensor(SensorCredential.load(renewed)), last).readings_stored == 1
    stopped_issuer = hubdir.HubDir(stopped).tls_issuer_pem()
    assert "The TLS issuer was replaced" in one_line(ok(run("key", "rotate", "--new-issuer", "--data-dir", stopped)).stdout)
    assert hubdir.HubDir(stopped).tls_issuer_pem() != stopped_issuer


def test_every_command_in_the_handbook_was_run():
    """Each `smartregion ...` command docs/operations.md shows was run by a test of this module."""
    if not RUN:
        pytest.skip("run the whole module: this test checks what its other tests ran")
    documented = set()
    for block in re.findall(r"```sh\n(.*?)```", HANDBOOK.read_text(encoding="utf-8"), flags=re.S):
        for line in block.splitlines():
            words = line.split(" #")[0].split()
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value smartregion ...
                words = words[1:]
            if len(words) >= 2 and words[0] == "smartregion":
                documented.add(command_path(words[1:]))
    assert len(documented) >= 10, f"the handbook shows too few commands to be read right: {documented}"
    missing = sorted(documented - RUN - {"serve"})  # `serve` runs in every hub process of these tests
    assert not missing, f"documented in docs/operations.md but not run by a test: {missing}"
