"""The peer, partner, agreement, consent and audit commands: each body runs (text and --json),
and each refusal is a clear one-line error with a non-zero exit, never a traceback.

Subprocesses of the real CLI against two real hub processes (one module-wide pair; each test
uses its own agreements, partners and subjects so that the tests stay independent).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import pytest

from node import hubdir
from node.app.launcher import HubProcess
from tests.test_cli import PASSPHRASE, as_json, cli, ok, one_line, user_error

TERMS = """\
[purpose]
code = "{purpose}"
description = "CLI coverage"

[data]
datasets = ["{dataset}"]
metrics = ["{metric}"]
aggregates = ["count", "mean"]
group_by = ["time_bucket"]
smallest_bucket = "day"
longest_window_days = 31
min_group_size = 1
queries_per_day = 10

[validity]
until = 2030-12-31
"""


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Stavanger and Bergen, served as processes, each pinned by the other (with the CLI)."""
    base = tmp_path_factory.mktemp("cli-federation")
    hubs = []
    for name, number in (("stavanger", "1103"), ("bergen", "4601")):
        hubdir.init_hub(base / name, number, PASSPHRASE.encode())
        hubs.append(HubProcess(base / name, PASSPHRASE, grpc_port=0, http_port=0))
    try:
        for hub in hubs:
            hub.start()
        for a, b in ((hubs[0], hubs[1]), (hubs[1], hubs[0])):
            ok(cli("peer", "add", "--data-dir", a.data_dir, "--address", b.endpoint["grpc_address"], "--hub-id", hub_id(b)))
        yield hubs
    finally:
        HubProcess.stop_all(hubs, timeout=10)


def hub_id(hub: HubProcess) -> str:
    return hubdir.HubDir(hub.data_dir).config().hub_id


def holds(hub: HubProcess, agreement_id: str) -> bool:
    conn = sqlite3.connect(f"file:{hub.data_dir / 'hub.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT 1 FROM agreements WHERE agreement_id = ?", (agreement_id,)).fetchone() is not None
    finally:
        conn.close()


def terms_file(tmp_path, purpose: str = "research", dataset: str = "air_quality", metric: str = "pm25"):
    path = tmp_path / f"{uuid.uuid4()}.toml"
    path.write_text(TERMS.format(purpose=purpose, dataset=dataset, metric=metric))
    return path


def test_peer_commands(pair):
    stavanger, bergen = pair
    peers = as_json(cli("peer", "list", "--data-dir", stavanger.data_dir, "--json"))
    assert [(p["hub_id"], p["municipality_number"]) for p in peers] == [(hub_id(bergen), "4601")]
    # Re-adding a pinned peer re-fetches it (docs/federation.md 2.4), in text form.
    address = bergen.endpoint["grpc_address"]
    again = ok(cli("peer", "add", "--data-dir", stavanger.data_dir, "--address", address, "--hub-id", hub_id(bergen)))
    assert f"Peered with hub {hub_id(bergen)} — Bergen (4601)" in one_line(again.stdout)

    user_error(cli("peer", "add", "--data-dir", stavanger.data_dir, "--address", "no-port", "--hub-id", hub_id(bergen)),
               "INVALID_ARGUMENT", "'no-port' is not HOST:PORT", code=1)
    user_error(cli("peer", "add", "--data-dir", stavanger.data_dir, "--address", bergen.endpoint["grpc_address"], "--hub-id", "0" * 32),
               "PERMISSION_DENIED", f"is hub {hub_id(bergen)}, not hub {'0' * 32}", code=1)
    user_error(cli("peer", "remove", "--data-dir", stavanger.data_dir, "f" * 32), "NOT_FOUND", f"hub {'f' * 32} is not a peer", code=1)


def test_peer_remove_and_re_add(pair, tmp_path):
    stavanger, bergen = pair
    removed = ok(cli("peer", "remove", "--data-dir", bergen.data_dir, hub_id(stavanger)))
    assert hub_id(stavanger) in removed.stdout
    assert as_json(cli("peer", "list", "--data-dir", bergen.data_dir, "--json")) == []
    [listed] = as_json(cli("peer", "list", "--data-dir", bergen.data_dir, "--all", "--json"))
    assert listed["hub_id"] == hub_id(stavanger) and listed["state"] == "removed"
    doc = as_json(cli("peer", "add", "--data-dir", bergen.data_dir, "--address", stavanger.endpoint["grpc_address"],
                      "--hub-id", hub_id(stavanger), "--json"))
    assert doc["hub_id"] == hub_id(stavanger) and doc["state"] == "reachable"


def test_partner_commands(pair, tmp_path):
    stavanger, _ = pair
    key = tmp_path / "uis.key"
    made = ok(cli("partner", "keygen", "--out", key, "--name", "Universitetet i Stavanger"))
    partner_id = made.stdout.split("Partner id ")[1].split()[0]
    user_error(cli("partner", "keygen", "--out", key, "--name", "again"), "exists; refusing to overwrite a key", code=1)
    public = tmp_path / "uis.key.pub.json"
    added = ok(cli("partner", "add", "--data-dir", stavanger.data_dir, "--name", "Universitetet i Stavanger",
                   "--org-number", "971564679", "--public-key", public))
    assert f"Registered partner {partner_id}" in one_line(added.stdout)
    listed = as_json(cli("partner", "list", "--data-dir", stavanger.data_dir, "--json"))
    assert {p["partner_id"]: p["org_number"] for p in listed}[partner_id] == "971564679"

    user_error(cli("partner", "add", "--data-dir", stavanger.data_dir, "--name", "UiS", "--org-number", "971564679",
                   "--public-key", public), "ALREADY_EXISTS", "is already registered", code=1)
    user_error(cli("partner", "add", "--data-dir", stavanger.data_dir, "--name", "UiS", "--org-number", "97156467",
                   "--public-key", public), "INVALID_ARGUMENT", "'97156467' is not 9 digits", code=1)
    damaged = tmp_path / "damaged.pub.json"
    damaged.write_text(public.read_text().replace('"version": 1', '"version": 7'))
    user_error(cli("partner", "add", "--data-dir", stavanger.data_dir, "--name", "UiS", "--org-number", "971564679",
                   "--public-key", damaged), "INVALID_ARGUMENT", "not a smartregion partner public key file", code=1)

    # The partner's side: its agreements at the hub, and refusals it sees.
    hub = ["--hub", stavanger.endpoint["grpc_address"], "--hub-id", hub_id(stavanger)]
    proposed = as_json(cli("agreement", "propose", "--data-dir", stavanger.data_dir, "--terms", terms_file(tmp_path),
                           "--to", partner_id, "--json"))
    agreement_id = proposed["terms"]["agreement_id"]
    shown = as_json(cli("partner", "agreements", "--key", key, *hub, "--json"))
    assert [a["terms"]["agreement_id"] for a in shown] == [agreement_id]
    assert "awaiting your signature" in one_line(ok(cli("partner", "agreements", "--key", key, *hub)).stdout)
    accepted = ok(cli("partner", "accept", agreement_id, "--key", key, *hub))
    assert f"Countersigned {agreement_id}: now active" in accepted.stdout
    user_error(cli("partner", "accept", agreement_id, "--key", key, *hub), f"{agreement_id} is already signed by this partner", code=1)
    unknown = "urn:uuid:" + str(uuid.uuid4())
    user_error(cli("partner", "accept", unknown, "--key", key, *hub), f"holds no agreement {unknown} with this partner", code=1)
    user_error(cli("partner", "agreements", "--key", key, *hub, passphrase="not the passphrase at all"), "wrong passphrase", code=1)
    user_error(cli("partner", "agreements", "--key", tmp_path / "missing.key", *hub), "no partner key at", code=1)
    revoked = ok(cli("partner", "revoke", agreement_id, "--key", key, *hub, "--reason", "CLI coverage"))
    assert f"Revoked {agreement_id}: now revoked" in revoked.stdout


def test_agreement_commands(pair, tmp_path):
    stavanger, bergen = pair
    terms = terms_file(tmp_path, purpose="urban_planning", dataset="traffic", metric="vehicles")
    proposed = ok(cli("agreement", "propose", "--data-dir", stavanger.data_dir, "--terms", terms, "--to", hub_id(bergen)))
    agreement_id = proposed.stdout.split("Proposed agreement ")[1].split(";")[0]
    assert "it becomes active when Bergen countersigns" in one_line(proposed.stdout)
    listed = as_json(cli("agreement", "list", "--data-dir", stavanger.data_dir, "--json"))
    assert agreement_id in {a["terms"]["agreement_id"] for a in listed}

    # Not awaiting Stavanger's signature; refusals name the problem.
    user_error(cli("agreement", "accept", "--data-dir", stavanger.data_dir, agreement_id), "INVALID_ARGUMENT", code=1)
    unknown = "urn:uuid:" + str(uuid.uuid4())
    for command in (["show"], ["export"]):
        user_error(cli("agreement", *command, "--data-dir", stavanger.data_dir, unknown), "NOT_FOUND", code=1)
    user_error(cli("agreement", "propose", "--data-dir", stavanger.data_dir, "--terms", terms, "--to", "e" * 32), "NOT_FOUND", code=1)
    misspelt = tmp_path / "misspelt.toml"
    misspelt.write_text(terms.read_text().replace("queries_per_day", "queries_per_dya"))
    user_error(cli("agreement", "propose", "--data-dir", stavanger.data_dir, "--terms", misspelt, "--to", hub_id(bergen)),
               "INVALID_ARGUMENT", "queries_per_dya", code=1)
    user_error(cli("agreement", "propose", "--data-dir", stavanger.data_dir, "--terms", tmp_path / "none.toml", "--to", hub_id(bergen)),
               "does not exist", code=2)

    # Bergen countersigns once the proposal has reached it (watched in its database, read-only).
    deadline = time.monotonic() + 20
    while not holds(bergen, agreement_id):
        assert time.monotonic() < deadline, "the proposal did not reach Bergen"
        time.sleep(0.05)
    shown = as_json(cli("agreement", "show", "--data-dir", bergen.data_dir, agreement_id, "--json"))
    assert shown["awaiting_my_signature"] is True
    accepted = as_json(cli("agreement", "accept", "--data-dir", bergen.data_dir, agreement_id, "--json"))
    assert accepted["state"] == "AGREEMENT_STATE_ACTIVE"

    user_error(cli("agreement", "revoke", "--data-dir", bergen.data_dir, agreement_id, "--reason", ""), "INVALID_ARGUMENT", code=1)
    revoked = ok(cli("agreement", "revoke", "--data-dir", bergen.data_dir, agreement_id, "--reason", "CLI coverage"))
    assert f"Revoked {agreement_id}" in revoked.stdout and "revoked by" in revoked.stdout
    user_error(cli("agreement", "revoke", "--data-dir", bergen.data_dir, agreement_id, "--reason", "again"), "ALREADY_EXISTS", code=1)

    out = tmp_path / "agreement.json"
    ok(cli("agreement", "export", "--data-dir", bergen.data_dir, agreement_id, "--out", out))
    verified = as_json(cli("agreement", "verify", out, "--json"))
    assert verified == {"valid": True, "agreement_id": agreement_id, "signed_by": sorted([hub_id(stavanger), hub_id(bergen)]),
                        "revoked_by": [hub_id(bergen)], "state_now": "revoked"}
    assert f"{out} verifies; state now: revoked" in one_line(ok(cli("agreement", "verify", out)).stdout)
    exported = json.loads(out.read_text())
    exported["state_at_export"] = "active"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(exported))
    user_error(cli("agreement", "verify", forged), "does NOT verify", code=1)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    user_error(cli("agreement", "verify", garbage), "does NOT verify", code=1)


def test_consent_commands(pair):
    stavanger, _ = pair
    data = ["--data-dir", stavanger.data_dir]
    granted = ok(cli("consent", "grant", *data, "--subject", "household-3", "--purpose", "research"))
    assert "household-3 granted consent to research" in granted.stdout
    user_error(cli("consent", "grant", *data, "--subject", "household-3", "--purpose", "research"), "ALREADY_EXISTS", code=1)
    user_error(cli("consent", "grant", *data, "--subject", "household-3", "--purpose", "astrology"), "INVALID_ARGUMENT", code=1)
    user_error(cli("consent", "withdraw", *data, "--subject", "household-4", "--purpose", "research"), "NOT_FOUND", code=1)
    withdrawn = ok(cli("consent", "withdraw", *data, "--subject", "household-3", "--purpose", "research"))
    assert "household-3 withdrew consent to research" in withdrawn.stdout
    [row] = as_json(cli("consent", "list", *data, "--subject", "household-3", "--json"))
    assert (row["subject_id"], row["purpose_code"]) == ("household-3", "research") and int(row["withdrawn_at_ms"]) > 0
    assert "household-3" in ok(cli("consent", "list", *data)).stdout


def test_audit_commands(pair, tmp_path):
    stavanger, bergen = pair
    out = tmp_path / "audit.jsonl"
    ok(cli("audit", "export", "--data-dir", stavanger.data_dir, "--out", out))
    verified = ok(cli("audit", "verify", out, "--hub-id", hub_id(stavanger)))
    assert f"{out} verifies:" in one_line(verified.stdout) and f"signed by hub {hub_id(stavanger)}" in one_line(verified.stdout)
    unpinned = ok(cli("audit", "verify", out))
    assert "Check that hub id with the municipality" in one_line(unpinned.stdout)
    user_error(cli("audit", "verify", out, "--hub-id", hub_id(bergen)), f"signed by hub {hub_id(stavanger)}, not {hub_id(bergen)}", code=1)
    lines = out.read_text().splitlines()
    assert len(lines) > 2
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # an entry removed
    user_error(cli("audit", "verify", tampered), "does NOT verify", code=1)
    user_error(cli("audit", "verify", tmp_path / "absent.jsonl"), "does not exist", code=2)
