"""deploy/nginx-dashboard.conf, the documented reverse proxy for the dashboard, run as written
(only its CHANGE values replaced) by a real nginx in front of a real hub: a browser-like client
that trusts only the municipality's own certificate (standard name checks, no pinning) logs
in and reads the dashboard's API through it, and nginx refuses a hub whose certificate does not
name the hub id it was told. Skipped where nginx is not installed (apt-get install nginx-light)."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import REPO_ROOT, make_hub_dir, start_live_hub
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node import hubdir
from node.api.v1 import admin_pb2

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
EXAMPLE = REPO_ROOT / "deploy" / "nginx-dashboard.conf"
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def front_certificate(directory: Path) -> tuple[Path, Path]:
    """The certificate browsers would see (here self-made for 127.0.0.1 and localhost)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "front.pem", directory / "front.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(directory: Path, site: str, port: int) -> subprocess.Popen:
    (directory / "site.conf").write_text(site)
    (directory / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/site.conf;
}}
""")
    checked = subprocess.run([NGINX, "-t", "-p", str(directory), "-c", str(directory / "nginx.conf")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode() if process.stderr else ""
            time.sleep(0.05)


def stop_nginx(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def site_config(port: int, front: tuple[Path, Path], hub_http: str, hub_id: str, hub_cert: Path) -> str:
    text = EXAMPLE.read_text(encoding="utf-8")
    replacements = {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "server_name dashboard.stavanger.kommune.no;": "server_name localhost;",
        "/etc/ssl/certs/dashboard.stavanger.kommune.no.pem": str(front[0]),
        "/etc/ssl/private/dashboard.stavanger.kommune.no.key": str(front[1]),
        "https://127.0.0.1:8080": hub_http,
        "/var/lib/smartregion/tls-issuer.pem": str(hub_cert),
        "9d00cea3093e10db8de322069703c594": hub_id,
    }
    for documented, real in replacements.items():
        assert text.count(documented) == 1, f"deploy/nginx-dashboard.conf no longer holds {documented!r}"
        text = text.replace(documented, real)
    return text


async def test_the_dashboard_behind_the_example_nginx_config(tmp_path):
    live = await start_live_hub(make_hub_dir(tmp_path / "hub"))
    front = front_certificate(tmp_path)
    hub = live.hub
    hub_cert = tmp_path / "hub" / hubdir.ISSUER_FILE  # what nginx trusts: the issuer, across renewals
    port = free_port()
    browser = ssl.create_default_context(cafile=str(front[0]))  # trusts the municipality's certificate only; checks names
    base = f"https://localhost:{port}"
    try:
        (tmp_path / "ok").mkdir()
        nginx = start_nginx(tmp_path / "ok", site_config(port, front, hub.endpoint.http_url, hub.config.hub_id, hub_cert), port)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/healthz", ssl=browser) as response:
                    assert response.status == 200 and (await response.json())
                token = hubdir.HubDir(live.data_dir).admin_token()
                async with http.post(base + "/api/login", json={"token": token}, ssl=browser) as login:
                    assert login.status == 200
                    cookie = f"sr_session={login.cookies['sr_session'].value}"
                async with http.get(base + "/api/overview", ssl=browser, headers={"Cookie": cookie}) as response:
                    assert response.status == 200
                    assert hub.config.hub_id in await response.text()
            # The hub renews its certificate: nginx, trusting the issuer, goes on without a change.
            before = hub.identity.tls_cert_pem
            await live.admin.RenewCertificate(admin_pb2.RenewCertificateRequest(), metadata=live.admin_metadata)
            assert hub.identity.tls_cert_pem != before
            async with aiohttp.ClientSession() as http, http.get(base + "/healthz", ssl=browser) as response:
                assert response.status == 200
        finally:
            stop_nginx(nginx)

        # told another hub id, nginx refuses the hub's certificate: the proxy pins the hub
        (tmp_path / "wrong").mkdir()
        wrong = site_config(port, front, hub.endpoint.http_url, "0" * 32, hub_cert)
        nginx = start_nginx(tmp_path / "wrong", wrong, port)
        try:
            async with aiohttp.ClientSession() as http, http.get(base + "/healthz", ssl=browser) as response:
                assert response.status == 502
        finally:
            stop_nginx(nginx)
    finally:
        await live.stop()
