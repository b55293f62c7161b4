"""The `smartregion` command line, driven as a person (or a script) would: subprocesses."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from node import hubdir
from node.app.launcher import HubProcess, LaunchError

PASSPHRASE = "cli-test-passphrase-0123456"
REPO_ROOT = Path(__file__).resolve().parents[1]
VALAND = REPO_ROOT / "node" / "data" / "air-quality-norway" / "Valand.csv"
METRICS = ["pm25", "temperature", "wind_speed", "rain"]
CSV_COLUMN = {"pm25": "pm25", "temperature": "temperature", "wind_speed": "windSpeed", "rain": "rain"}


def cli(*args, passphrase: str | None = PASSPHRASE, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTREGION_")}
    env["COLUMNS"] = "200"  # keep rich from wrapping messages mid-sentence
    if passphrase is not None:
        env["SMARTREGION_PASSPHRASE"] = passphrase
    return subprocess.run(
        [sys.executable, "-m", "node.app.cli.main", *map(str, args)],
        env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def user_error(result: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> str:
    """A failure meant for a person: non-zero, no traceback, the message says what is wrong."""
    assert result.returncode != 0, f"expected a failure\nstdout: {result.stdout}\nstderr: {result.stderr}"
    if code is not None:
        assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    message = one_line(result.stderr)
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    return message


def as_json(result: subprocess.CompletedProcess):
    return json.loads(ok(result).stdout)


def expected_readings(path: Path, since: dt.date, until: dt.date) -> dict[str, int]:
    """Count the non-empty cells per metric for dates in [since, until), independently."""
    counts = {m: 0 for m in METRICS}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not since <= dt.date.fromisoformat(row["date"]) < until:
                continue
            for metric, column in CSV_COLUMN.items():
                if row[column].strip():
                    counts[metric] += 1
    return counts


# -- init -------------------------------------------------------------------------------


@pytest.mark.parametrize("municipality", ["Stavanger", "1103", "stavanger"])
def test_init_creates_a_hub_for_a_municipality(tmp_path, municipality):
    data_dir = tmp_path / "hub"
    result = ok(cli("init", "--data-dir", data_dir, "--municipality", municipality))
    assert "Stavanger (1103)" in one_line(result.stdout)
    config = tomllib.loads((data_dir / hubdir.CONFIG_FILE).read_text())
    assert config["hub"]["municipality"] == "1103"
    assert config["hub"]["id"] in one_line(result.stdout)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in (hubdir.KEYS_FILE, hubdir.ADMIN_TOKEN_FILE, hubdir.CONFIG_FILE, hubdir.DB_FILE):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    # The passphrase given in the environment opens the keystore.
    assert hubdir.HubDir(data_dir).identity(PASSPHRASE.encode()).hub_id_text == config["hub"]["id"]


def test_init_refuses_an_existing_hub(tmp_path):
    data_dir = tmp_path / "hub"
    ok(cli("init", "--data-dir", data_dir, "--municipality", "1103"))
    keys = (data_dir / hubdir.KEYS_FILE).read_bytes()
    config = (data_dir / hubdir.CONFIG_FILE).read_bytes()
    user_error(cli("init", "--data-dir", data_dir, "--municipality", "Stavanger"), "already holds a hub", "refusing to overwrite")
    assert (data_dir / hubdir.KEYS_FILE).read_bytes() == keys
    assert (data_dir / hubdir.CONFIG_FILE).read_bytes() == config


@pytest.mark.parametrize(
    "municipality, message",
    [("9999", "no municipality has kommunenummer '9999'"), ("Atlantis", "no municipality is named 'Atlantis'")],
)
def test_init_refuses_an_unknown_municipality(tmp_path, municipality, message):
    data_dir = tmp_path / "hub"
    user_error(cli("init", "--data-dir", data_dir, "--municipality", municipality), message, code=1)
    assert not data_dir.exists()


def test_init_without_a_passphrase_says_how_to_give_one(tmp_path):
    data_dir = tmp_path / "hub"
    user_error(cli("init", "--data-dir", data_dir, "--municipality", "1103", passphrase=None), "no passphrase", "SMARTREGION_PASSPHRASE")
    assert not (data_dir / hubdir.CONFIG_FILE).exists()
    user_error(cli("init", "--data-dir", data_dir, "--municipality", "1103", passphrase="short"), "at least 12")
    assert not (data_dir / hubdir.CONFIG_FILE).exists()


def test_serve_with_a_wrong_passphrase_fails_clearly(tmp_path):
    data_dir = tmp_path / "hub"
    hubdir.init_hub(data_dir, "1103", PASSPHRASE.encode())
    user_error(cli("serve", "--data-dir", data_dir, "--grpc-port", 0, "--http-port", 0, passphrase="a-wrong-passphrase"),
               "wrong passphrase")
    assert not (data_dir / hubdir.ENDPOINT_FILE).exists()


# -- against a running hub --------------------------------------------------------------


@pytest.fixture(scope="module")
def running_hub(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("cli") / "hub"
    hubdir.init_hub(data_dir, "1103", PASSPHRASE.encode())
    process = HubProcess(data_dir, PASSPHRASE, grpc_port=0, http_port=0)
    try:
        process.start()
        yield data_dir
    finally:
        process.stop(timeout=10)
        process.kill()


def add_sensor(data_dir: Path, out: Path, label: str = "Valand", metrics: list[str] = METRICS) -> str:
    doc = as_json(cli(
        "sensor", "add", "--data-dir", data_dir, "--dataset", "air_quality", "--metrics", ",".join(metrics),
        "--location", "58.97,5.73", "--label", label, "--out", out, "--json",
    ))
    assert doc["credential"] == str(out)
    return doc["sensor"]["sensor_id"]


def sensors_by_id(data_dir: Path, *flags: str) -> dict[str, dict]:
    return {s["sensor_id"]: s for s in as_json(cli("sensor", "list", "--data-dir", data_dir, "--json", *flags))}


def status(data_dir: Path) -> dict:
    return as_json(cli("status", "--data-dir", data_dir, "--json"))


def counts(doc: dict) -> dict[str, int]:
    return {c["metric"]: int(c["readings"]) for c in doc["counts"] if c["dataset"] == "air_quality"}


def test_sensor_add_writes_a_private_credential(running_hub, tmp_path):
    out = tmp_path / "valand.json"
    result = ok(cli(
        "sensor", "add", "--data-dir", running_hub, "--dataset", "air_quality", "--metrics", "pm25,temperature",
        "--location", "58.97,5.73", "--label", "Valand", "--out", out,
    ))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    credential = json.loads(out.read_text())
    assert credential["format"] == "smartregion-sensor-credential"
    assert credential["hub_id"] == hubdir.HubDir(running_hub).config().hub_id
    assert credential["metrics"] == ["pm25", "temperature"] and credential["municipality"] == "1103"
    assert credential["sensor_id"] in one_line(result.stdout)
    # The credential is not overwritten by a second enrolment.
    before = out.read_bytes()
    user_error(cli(
        "sensor", "add", "--data-dir", running_hub, "--dataset", "air_quality", "--metrics", "pm25",
        "--location", "58.97,5.73", "--out", out,
    ), "exists", "--force")
    assert out.read_bytes() == before


def test_sensor_add_with_a_request_id_is_safe_to_repeat(running_hub, tmp_path):
    """The command of docs/operations.md ("Sensors"), run twice: one sensor, the same credential."""
    out = tmp_path / "valand.json"
    command = ("sensor", "add", "--data-dir", running_hub, "--dataset", "air_quality", "--metrics", "pm25",
               "--location", "58.97,5.73", "--label", "Valand", "--out", out, "--force", "--request-id", "valand-2026-12")
    ok(cli(*command))
    first = json.loads(out.read_text())
    ok(cli(*command))
    again = json.loads(out.read_text())
    assert (again["sensor_id"], again["key"]) == (first["sensor_id"], first["key"])
    assert [s for s in sensors_by_id(running_hub).values() if s["label"] == "Valand" and s["metrics"] == ["pm25"]
            and s["sensor_id"] == first["sensor_id"]]


def test_sensor_list_shows_enrolled_sensors(running_hub, tmp_path):
    sensor_id = add_sensor(running_hub, tmp_path / "s.json", label="Listed")
    listed = sensors_by_id(running_hub)
    assert listed[sensor_id]["label"] == "Listed"
    assert listed[sensor_id]["dataset"] == "air_quality"
    assert listed[sensor_id]["metrics"] == METRICS
    assert not [field for field in listed[sensor_id] if "key" in field]  # no key material, wrapped or not
    table = ok(cli("sensor", "list", "--data-dir", running_hub)).stdout
    assert sensor_id in table


def test_status_reports_the_hub(running_hub, tmp_path):
    add_sensor(running_hub, tmp_path / "s.json")
    doc = status(running_hub)
    assert doc["hub_id"] == hubdir.HubDir(running_hub).config().hub_id
    assert doc["municipality_number"] == "1103"
    assert doc["municipality_name"] == "Stavanger"
    assert doc["sensors_active"] >= 1
    assert isinstance(doc["counts"], list)
    assert doc["endpoint"]["tls"] is True
    assert "tls_certificate_pem" not in doc
    table = one_line(ok(cli("status", "--data-dir", running_hub)).stdout)
    assert doc["hub_id"] in table and "Stavanger (1103)" in table


def test_replay_stores_the_csv_readings_once(running_hub, tmp_path):
    expected = expected_readings(VALAND, dt.date(2019, 1, 1), dt.date(2019, 1, 3))
    total = sum(expected.values())
    assert total > 0
    credential = tmp_path / "valand.json"
    sensor_id = add_sensor(running_hub, credential)
    before = counts(status(running_hub))
    replay = ["sensor", "replay", "--credential", credential, "--csv", VALAND, "--since", "2019-01-01", "--until", "2019-01-03", "--json"]

    first = as_json(cli(*replay))
    assert first["sensor_id"] == sensor_id
    assert first["readings_sent"] == total
    assert first["readings_stored"] == total
    assert first["readings_duplicate"] == 0
    after = counts(status(running_hub))
    assert {m: after.get(m, 0) - before.get(m, 0) for m in METRICS} == expected
    assert int(sensors_by_id(running_hub)[sensor_id]["readings"]) == total

    second = as_json(cli(*replay))
    assert second["readings_sent"] == total
    assert second["readings_stored"] == 0
    assert second["readings_duplicate"] == total
    assert counts(status(running_hub)) == after
    counter_file = credential.with_name(credential.name + ".counter")
    assert stat.S_IMODE(counter_file.stat().st_mode) == 0o600


def test_a_revoked_sensor_cannot_replay(running_hub, tmp_path):
    credential = tmp_path / "revoked.json"
    sensor_id = add_sensor(running_hub, credential, label="Doomed")
    result = ok(cli("sensor", "revoke", "--data-dir", running_hub, sensor_id))
    assert f"Revoked sensor {sensor_id}" in one_line(result.stdout)
    assert sensor_id not in sensors_by_id(running_hub)
    revoked = sensors_by_id(running_hub, "--all")[sensor_id]
    assert int(revoked["revoked_at_ms"]) > 0
    message = user_error(cli(
        "sensor", "replay", "--credential", credential, "--csv", VALAND, "--since", "2019-01-01", "--until", "2019-01-02",
    ), "PERMISSION_DENIED", "revoked", code=1)
    assert sensor_id in message


def test_revoke_of_an_unknown_or_malformed_id_fails_clearly(running_hub):
    user_error(cli("sensor", "revoke", "--data-dir", running_hub, "0" * 32), "NOT_FOUND")
    user_error(cli("sensor", "revoke", "--data-dir", running_hub, "not-an-id"), "INVALID_ARGUMENT", "32 hexadecimal digits")


def test_an_out_of_range_location_is_refused_by_the_hub(running_hub, tmp_path):
    out = tmp_path / "s.json"
    user_error(cli(
        "sensor", "add", "--data-dir", running_hub, "--dataset", "air_quality", "--metrics", "pm25",
        "--location", "100,5", "--out", out,
    ), "INVALID_ARGUMENT", "latitude,longitude", code=1)
    assert not out.exists()


def test_an_unknown_metric_is_refused(running_hub, tmp_path):
    out = tmp_path / "s.json"
    user_error(cli(
        "sensor", "add", "--data-dir", running_hub, "--dataset", "air_quality", "--metrics", "pm25,ozone",
        "--location", "58.97,5.73", "--out", out,
    ), "INVALID_ARGUMENT", "ozone")
    assert not out.exists()


def test_replay_user_errors(running_hub, tmp_path):
    user_error(cli("sensor", "replay", "--credential", tmp_path / "missing.json", "--csv", VALAND), "no credential file")
    not_a_credential = tmp_path / "bad.json"
    not_a_credential.write_text("{}")
    user_error(cli("sensor", "replay", "--credential", not_a_credential, "--csv", VALAND), "not a smartregion sensor credential")
    credential = tmp_path / "ok.json"
    add_sensor(running_hub, credential)
    user_error(cli("sensor", "replay", "--credential", credential, "--csv", VALAND, "--since", "1850-01-01", "--until", "1850-01-02"),
               "holds no readings")
    user_error(cli("sensor", "replay", "--credential", credential, "--csv", tmp_path / "none.csv"), "none.csv")
    user_error(cli("sensor", "replay", "--credential", credential, "--csv", VALAND, "--since", "yesterday"), "--since", code=2)


# -- user errors without a running hub --------------------------------------------------


@pytest.mark.parametrize("location", ["nonsense", "58.97", "1,2,3", "north,east", ""])
def test_a_bad_location_is_a_usage_error(tmp_path, location):
    out = tmp_path / "s.json"
    user_error(cli(
        "sensor", "add", "--data-dir", tmp_path / "hub", "--dataset", "air_quality", "--metrics", "pm25",
        "--location", location, "--out", out,
    ), "expected LAT,LON", code=2)
    assert not out.exists()


@pytest.fixture
def stopped_hub(tmp_path) -> Path:
    data_dir = tmp_path / "hub"
    hubdir.init_hub(data_dir, "1103", PASSPHRASE.encode())
    return data_dir


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["sensor", "list"],
        ["sensor", "revoke", "0" * 32],
        ["sensor", "add", "--dataset", "air_quality", "--metrics", "pm25", "--location", "58.97,5.73", "--out", "{tmp}/s.json"],
    ],
    ids=["status", "list", "revoke", "add"],
)
def test_commands_against_a_stopped_hub_say_it_is_not_running(stopped_hub, tmp_path, command):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    user_error(cli(*args, "--data-dir", stopped_hub), "is not running", "smartregion serve", code=1)
    assert not (tmp_path / "s.json").exists()


def test_a_stale_endpoint_file_is_recognised(stopped_hub):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(gone.stdout)
    hubdir.HubDir(stopped_hub).write_endpoint(
        {"pid": pid, "hub_id": hubdir.HubDir(stopped_hub).config().hub_id, "grpc_address": "127.0.0.1:1", "tls": True}
    )
    user_error(cli("status", "--data-dir", stopped_hub), "is not running", f"process {pid} is gone", code=1)


def test_a_directory_that_is_not_a_hub(tmp_path):
    user_error(cli("status", "--data-dir", tmp_path / "nothing-here"), "holds no hub", "smartregion init")
    user_error(cli("serve", "--data-dir", tmp_path / "nothing-here"), "not a hub data directory", "smartregion init")


def test_a_hub_started_then_stopped_is_not_running(tmp_path):
    data_dir = tmp_path / "hub"
    ok(cli("init", "--data-dir", data_dir, "--municipality", "1103"))
    process = HubProcess(data_dir, PASSPHRASE, grpc_port=0, http_port=0)
    try:
        process.start()
        assert as_json(cli("status", "--data-dir", data_dir, "--json"))["municipality_number"] == "1103"
    finally:
        assert process.stop(timeout=10) == 0
        process.kill()
    user_error(cli("status", "--data-dir", data_dir), "is not running")


def test_a_credential_path_in_a_missing_directory_enrols_nothing(running_hub, tmp_path):
    """The key leaves the hub once, in the credential: if it cannot be written, no sensor
    may be left enrolled without anyone holding its key."""
    before = sensors_by_id(running_hub, "--all")
    out = tmp_path / "no-such-dir" / "s.json"
    user_error(cli(
        "sensor", "add", "--data-dir", running_hub, "--dataset", "air_quality", "--metrics", "pm25",
        "--location", "58.97,5.73", "--out", out,
    ), str(out.parent), code=1)
    assert not out.exists()
    assert sensors_by_id(running_hub, "--all").keys() == before.keys()


# -- what other people write, and a new admin's mistakes ------------------------------------

def test_text_that_looks_like_markup_is_printed_as_written(running_hub, tmp_path):
    """A label is someone else's text: '[/]' must neither crash the CLI nor restyle output."""
    label = "[/] Tananger [red]havn"
    add_sensor(running_hub, tmp_path / "odd.json", label=label)
    listing = ok(cli("sensor", "list", "--data-dir", str(running_hub)))
    assert label in one_line(listing.stdout)


def test_a_second_serve_of_the_same_hub_is_refused(running_hub):
    second = HubProcess(running_hub, PASSPHRASE)
    with pytest.raises(LaunchError, match=r"already being\s+served"):
        second.start(timeout=30)
    ok(cli("status", "--data-dir", str(running_hub)))  # the first one's endpoint is intact


def test_a_taken_grpc_port_is_a_clear_error(tmp_path):
    data_dir = tmp_path / "hub"
    ok(cli("init", "--data-dir", str(data_dir), "--municipality", "1103"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = cli("serve", "--data-dir", str(data_dir), "--grpc-port", str(taken.getsockname()[1]), "--http-port", "0")
    user_error(result, "--grpc-port")


def test_query_as_hub_and_partner_at_once_is_refused(tmp_path):
    result = cli("query", "run", "--data-dir", str(tmp_path), "--key", str(tmp_path / "k"), "--dataset", "air_quality",
                 "--metric", "pm25", "--aggregate", "mean", "--from", "2019-01-01", "--to", "2019-02-01", "--purpose", "research")
    user_error(result, "not both", code=2)
