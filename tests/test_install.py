"""An install that is not a checkout: the wheel, installed into a fresh virtual environment,
creates and serves a hub; and the systemd units in deploy/ are valid and hardened.

The fresh environment gets smartregion from the wheel only (`pip install --no-deps`); its
dependencies come from this checkout's environment through a .pth path entry, which adds
their directory to sys.path without running the editable install's hook, so nothing of the
checkout is importable. Set SMARTREGION_FULL_INSTALL_TEST=1 to let pip install the
dependencies too (from its cache or PyPI; slower)."""

from __future__ import annotations

import configparser
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

import pytest

from node.tlsfiles import pinned_client_ssl_context

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
PASSPHRASE = "install-test-passphrase-42"
SOURCE_IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
                                       ".hypothesis", "demo-region", "node_modules", "test-artifacts", "tests")


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with smartregion installed from a wheel built from this source tree."""
    base = tmp_path_factory.mktemp("install")
    source = base / "src"
    shutil.copytree(REPO_ROOT, source, ignore=SOURCE_IGNORE)  # build outside the checkout: no build/ left in it
    dist = base / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", dist, source])
    wheels = list(dist.glob("smartregion-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    full = os.environ.get("SMARTREGION_FULL_INSTALL_TEST") == "1"
    if not full:
        (site / "checkout-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, *([] if full else ["--no-deps"]), wheels[0]])
    return env_dir


def test_the_wheel_holds_the_package_and_its_data(installed, tmp_path):
    python = installed / "bin" / "python"
    probe = run([python, "-c", "import node, node.app.dashboard, json, importlib.resources as r;"
                 "print(json.dumps({'node': node.__file__, 'static': r.files('node.app.dashboard').joinpath('static/index.html').is_file(),"
                 "'data': r.files('node').joinpath('data').is_dir()}))"], cwd=tmp_path)
    found = json.loads(probe.stdout)
    assert Path(found["node"]).is_relative_to(installed), f"node imported from {found['node']}, not the wheel"
    assert found["static"] and found["data"]


def test_init_and_serve_from_the_wheel(installed, tmp_path):
    smartregion = installed / "bin" / "smartregion"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTREGION_")}
    env["SMARTREGION_PASSPHRASE_FILE"] = str(tmp_path / "passphrase")
    (tmp_path / "passphrase").write_text(PASSPHRASE + "\n")
    data_dir = tmp_path / "hub"
    created = run([smartregion, "init", "--data-dir", data_dir, "--municipality", "Askøy", "--grpc-port", 0, "--http-port", 0],
                  env=env, cwd=tmp_path)
    assert "Askøy (4627)" in created.stdout
    serve = subprocess.Popen([smartregion, "serve", "--data-dir", data_dir], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        endpoint_file = data_dir / "run" / "endpoint.json"
        deadline = time.monotonic() + 60
        while not endpoint_file.exists():
            assert serve.poll() is None, serve.stderr.read() if serve.stderr else ""
            assert time.monotonic() < deadline, "the hub did not start"
            time.sleep(0.05)
        endpoint = json.loads(endpoint_file.read_text())
        context = pinned_client_ssl_context((data_dir / "tls-cert.pem").read_bytes())
        host, port = endpoint["http_url"].removeprefix("https://").rsplit(":", 1)
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
        connection.connect = _connect_as(connection, endpoint["hub_id"])
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        health = json.loads(response.read())
        assert response.status == 200 and health == {"status": "serving", "hub_id": endpoint["hub_id"], "version": "0.1.0"}, health
        status = run([smartregion, "status", "--data-dir", data_dir, "--json"], env=env, cwd=tmp_path)
        assert json.loads(status.stdout)["hub_id"] == endpoint["hub_id"]
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0


def _connect_as(connection: http.client.HTTPSConnection, server_name: str):
    """Connect with the hub id as the TLS server name (the certificate's name), whatever the address."""

    def connect() -> None:
        sock = socket.create_connection((connection.host, connection.port), connection.timeout)
        connection.sock = connection._context.wrap_socket(sock, server_hostname=server_name)  # type: ignore[attr-defined]

    return connect


# -- systemd ---------------------------------------------------------------------------------

def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string((DEPLOY / name).read_text())
    return parser


def test_the_service_unit_is_hardened():
    service = unit("smartregion.service")["Service"]
    assert service["User"] == "smartregion" or service.get("DynamicUser") == "yes"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert "/var/lib/smartregion" in service["ReadWritePaths"].split()
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["LoadCredential"].startswith("passphrase:")
    assert service["Environment"]  # SMARTREGION_PASSPHRASE_FILE=%d/passphrase (the credential)
    assert "SMARTREGION_PASSPHRASE=" not in (DEPLOY / "smartregion.service").read_text()  # never the passphrase itself
    assert service["CapabilityBoundingSet"] == ""
    assert service["UMask"] == "0077"
    assert "serve --data-dir /var/lib/smartregion/hub" in service["ExecStart"]
    text = (DEPLOY / "smartregion.service").read_text()
    assert "Environment=SMARTREGION_PASSPHRASE_FILE=%d/passphrase" in text


def _units_pointing_at(tmp_path: Path, executable: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        text = (DEPLOY / name).read_text().replace("/opt/smartregion/bin/smartregion", str(executable))
        (tmp_path / name).write_text(text)
        paths.append(tmp_path / name)
    return paths


def test_systemd_analyze_verifies_the_units(installed, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze is not installed (Debian package systemd); only the parsed checks ran")
        pytest.skip("systemd-analyze is not installed")
    units = _units_pointing_at(tmp_path, installed / "bin" / "smartregion",
                               "smartregion.service", "smartregion-backup.service", "smartregion-backup.timer")
    result = subprocess.run([analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    exposure = subprocess.run([analyze, "security", "--offline=yes", units[0]], capture_output=True, text=True, timeout=60)
    level = float(exposure.stdout.rsplit("Overall exposure level for smartregion.service:", 1)[1].split()[0])
    assert level <= 2.0, exposure.stdout  # systemd rates <= 2 as well protected
    # and verify does catch a broken unit
    broken = tmp_path / "broken.service"
    broken.write_text(units[0].read_text().replace("Type=exec", "Type=sometimes"))
    assert subprocess.run([analyze, "verify", "--man=no", broken], capture_output=True, text=True, timeout=60).stderr.strip()
