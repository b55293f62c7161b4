"""docs/integrations.md matches the code: its example files are valid configuration, and its
commands, run as a person would (subprocesses, a hub process, a real Mosquitto), work."""

from __future__ import annotations

import re
import time

from node import catalog
from node.app import network_replay
from node.networks import config as networks_config
from tests.network_helpers import Mosquitto
from tests.test_cli import PASSPHRASE, REPO_ROOT, as_json, cli, ok, user_error

DOC = (REPO_ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
STATION = REPO_ROOT / "node" / "data" / "air-quality-norway" / "Knarrdalstranda.csv"


def block_after(marker: str) -> str:
    match = re.search(rf"<!-- {marker}:[^>]*-->\s*```toml\n(.*?)```", DOC, re.S)
    assert match, marker
    return match.group(1)


def test_the_documented_catalog_is_valid():
    found = catalog.parse(block_after("catalog-example"))
    assert found.dataset("school_co2").metrics["school_co2_ppm"].unit == "ppm"


def test_the_documented_networks_toml_is_valid(tmp_path):
    text = block_after("networks-example")
    for name in re.findall(r'(?:password|secret)_file = "([^"]+)"', text):
        (tmp_path / name).write_text("s" * 32)
    parsed = networks_config.parse(text, tmp_path, "a" * 32)
    assert [b.format for b in parsed.brokers] == ["chirpstack", "tts", "span", "frames"]
    assert [b.qos for b in parsed.brokers] == [1, 0, 1, 1]
    assert set(parsed.http) == {"chirpstack", "tts"} and {"air-lpp", "water-meter", "json"} <= set(parsed.codecs)


def test_the_documented_lorawan_flow_runs_end_to_end(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    data_dir = tmp_path / "hub"
    ok(cli("init", "--data-dir", data_dir, "--municipality", "Porsgrunn", "--grpc-port", 0, "--http-port", 0))
    ok(cli("catalog", "check", "--data-dir", data_dir))
    metrics = ["temperature", "wind_speed"]
    (data_dir / "networks.toml").write_text(network_replay.lpp_codec_toml("air-lpp", metrics) + f"""
[[mqtt]]
name = "lyse-lorawan"
format = "chirpstack"
host = "127.0.0.1"
port = {broker.port}
tls = false
topics = ["application/porsgrunn-air/device/+/event/up"]
backoff_initial_seconds = 0.05
""")
    from node.app.launcher import HubProcess

    hub = HubProcess(data_dir, PASSPHRASE).start()
    try:
        (tmp_path / "kek.hex").write_text("000102030405060708090a0b0c0d0e0f\n")
        (tmp_path / "session-appskey.hex").write_text("2b7e151628aed2a6abf7158809cf4f3c\n")
        ok(cli("lorawan", "kek", "add", "--data-dir", data_dir, "--label", "join-server-telemark", "--kek-file", tmp_path / "kek.hex"))
        user_error(cli("lorawan", "kek", "add", "--data-dir", data_dir, "--label", "join-server-telemark",
                       "--kek-file", tmp_path / "kek.hex"), "held already")
        added = as_json(cli("sensor", "add", "--data-dir", data_dir, "--dataset", "air_quality", "--metrics", ",".join(metrics),
                            "--location", "59.146,9.650", "--out", tmp_path / "knarrdalstranda.json",
                            "--lorawan-dev-eui", "70b3d57ed005a1b2", "--codec", "air-lpp", "--json"))
        assert added["sensor"]["confidentiality"] == "end-to-end"
        replayed = as_json(cli("sensor", "replay", "--credential", tmp_path / "knarrdalstranda.json", "--csv", STATION,
                               "--since", "2019-12-01", "--until", "2019-12-08",
                               "--via", "chirpstack", "--broker", f"127.0.0.1:{broker.port}",
                               "--lorawan-dev-eui", "70b3d57ed005a1b2", "--lorawan-app-s-key-file", tmp_path / "session-appskey.hex",
                               "--kek-label", "join-server-telemark", "--kek-file", tmp_path / "kek.hex",
                               "--application-id", "porsgrunn-air", "--json"))
        assert replayed["messages"] == 7 * 24
        sensor_id = added["sensor"]["sensor_id"]
        deadline = time.monotonic() + 60
        while True:
            listed = {s["sensor_id"]: s for s in as_json(cli("sensor", "list", "--data-dir", data_dir, "--json"))}
            if int(listed[sensor_id].get("readings", 0)) >= replayed["readings_sent"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert int(listed[sensor_id]["readings"]) == replayed["readings_sent"]
        assert listed[sensor_id]["lorawan_dev_eui"] == "70b3d57ed005a1b2"
        table = ok(cli("sensor", "list", "--data-dir", data_dir)).stdout
        assert "end-to-end (LoRaWAN 70b3d57ed005a1b2)" in table
        shown = ok(cli("status", "--data-dir", data_dir)).stdout
        assert "1 end-to-end, 0 readable by their network server" in shown
    finally:
        hub.stop()
        broker.stop()


def test_catalog_check_names_the_problem(tmp_path):
    bad = tmp_path / "catalog.toml"
    bad.write_text(block_after("catalog-example").replace('"ppm"', '"parts-per-million"'))
    user_error(cli("catalog", "check", "--file", bad), "not a SenML unit")


def test_a_hub_with_a_broken_networks_toml_does_not_start(tmp_path):
    data_dir = tmp_path / "hub"
    ok(cli("init", "--data-dir", data_dir, "--municipality", "4001", "--grpc-port", 0, "--http-port", 0))
    (data_dir / "networks.toml").write_text('[[mqtt]]\nname = "x"\nformat = "lorawan"\n')
    user_error(cli("serve", "--data-dir", data_dir, timeout=30), "network configuration is invalid", "format must be one of")


