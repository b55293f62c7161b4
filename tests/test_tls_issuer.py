"""The hub's TLS issuer (issue 12, item 2): what `init` makes, what renewals and rotations keep,
the keystores a hub refuses to start with, and the upgrade of a hub made before the issuer.

The upgrade runs a real hub process (node/app/launcher.py through tests/region_helpers.py): a
sensor enrolled before the issuer pins the self-signed certificate; the first live renewal
creates the issuer (audited, the admin told what to do), `smartregion sensor credential` writes
that sensor's file again with the same key, and from then on the file survives a renewal and an
identity rotation, over gRPC and HTTP, with every reading stored."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from federation import peers
from node import hubdir, identity, keystore, senml, tlsfiles
from node.api.v1 import admin_pb2
from node.app.cli.main import app
from node.app.launcher import HubProcess, LaunchError
from node.app.sensor_client import Sensor, SensorCredential, replay
from node.clock import ManualClock
from node.storage.sqlite import SqliteStore
from tests.conftest import PASSPHRASE, make_hub_dir
from tests.region_helpers import ProcessHub

NOW_MS = 1_800_000_000_000
# What keys.json held before the issuer existed (node/identity.py to_secrets at e8370c1).
PRE_ISSUER_SECRETS = {"identity_key", "tls_key", "tls_cert", "key_encryption_key", "key_history"}


def cli(*args: str) -> tuple[int, str]:
    outcome = CliRunner().invoke(app, list(args), env={"COLUMNS": "300"}, catch_exceptions=False)
    return outcome.exit_code, outcome.output


def secrets_of(path: Path) -> dict[str, bytes]:
    return keystore.read(path / hubdir.KEYS_FILE, PASSPHRASE.encode())


def write_secrets(path: Path, values: dict[str, bytes]) -> None:
    keystore.write(path / hubdir.KEYS_FILE, values, PASSPHRASE.encode())


def make_pre_issuer_hub(path: Path) -> identity.HubIdentity:
    """Turn the hub in `path` into one as the code before the issuer made it: a self-signed
    certificate, keys.json without issuer entries, no tls-issuer.pem."""
    hub_dir = hubdir.HubDir(path)
    current = hub_dir.identity(PASSPHRASE.encode())
    cert = identity.issue_tls_certificate(current.identity_key, current.tls_key, hub_id_text=current.hub_id_text)
    legacy = replace(current, tls_cert=cert, tls_issuer=None)
    assert set(legacy.to_secrets()) == PRE_ISSUER_SECRETS
    write_secrets(path, legacy.to_secrets())
    (path / hubdir.CERT_FILE).write_bytes(legacy.tls_cert_pem)
    (path / hubdir.ISSUER_FILE).unlink()
    return legacy


def audit_actions(path: Path) -> list[dict]:
    store = SqliteStore(path / hubdir.DB_FILE)
    try:
        return [json.loads(r.entry) for r in store.audit_rows()]
    finally:
        store.close()


# -- what init makes --------------------------------------------------------------------------------
def test_init_makes_an_issuer_that_signs_the_certificate(tmp_path):
    clock = ManualClock(now_ms=NOW_MS)
    path = tmp_path / "hub"
    config, ident = hubdir.init_hub(path, "1103", PASSPHRASE.encode(), hostnames=("hub.example.no",), clock=clock)
    issuer = ident.tls_issuer
    assert issuer is not None
    cert = issuer.cert
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign and not usage.value.digital_signature
    assert config.hub_id in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    now = dt.datetime.fromtimestamp(NOW_MS / 1000, dt.UTC)
    assert cert.not_valid_after_utc == now + identity.ISSUER_VALIDITY  # ~25 years from the injected clock
    assert cert.not_valid_after_utc - now > dt.timedelta(days=25 * 365)
    cert.verify_directly_issued_by(cert)

    # The certificate the hub serves is signed by the issuer and otherwise as before.
    leaf = ident.tls_cert
    assert leaf.issuer == cert.subject and leaf.subject != cert.subject
    leaf.verify_directly_issued_by(cert)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {config.hub_id, "localhost", "hub.example.no"} <= set(names.get_values_for_type(x509.DNSName))
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert identity.verify_tls_binding(leaf) == ident.public_key_raw
    assert ident.tls_chain_pem == ident.tls_cert_pem + issuer.cert_pem
    assert ident.tls_trust_root_pem == issuer.cert_pem

    # Kept encrypted in keys.json (its key is nowhere in plaintext), with a public copy.
    raw_keys = (path / hubdir.KEYS_FILE).read_bytes()
    for line in issuer.key_pem.splitlines()[1:-1]:
        assert line not in raw_keys and base64.b64encode(line) not in raw_keys
    assert secrets_of(path)["tls_issuer_key"] == issuer.key_pem
    assert (path / hubdir.ISSUER_FILE).read_bytes() == issuer.cert_pem == hubdir.HubDir(path).tls_issuer_pem()
    assert stat.S_IMODE((path / hubdir.ISSUER_FILE).stat().st_mode) == 0o600
    reopened = hubdir.HubDir(path).identity(PASSPHRASE.encode()).tls_issuer
    assert reopened is not None and reopened.cert_pem == issuer.cert_pem and reopened.key_pem == issuer.key_pem


def test_renewals_and_rotations_reissue_the_certificate_under_the_same_issuer():
    clock = ManualClock(now_ms=NOW_MS)
    ident = identity.generate(clock=clock)
    issuer = ident.tls_issuer
    assert issuer is not None
    for step in ("renew", "rotate", "renew", "rotate"):
        clock.advance(86400.0)
        ident = ident.with_renewed_certificate(clock) if step == "renew" else ident.rotated(clock)
        assert ident.tls_issuer is issuer
        ident.tls_cert.verify_directly_issued_by(issuer.cert)
        assert identity.verify_tls_binding(ident.tls_cert, ident.key_history) == ident.public_key_raw
        restored = identity.HubIdentity.from_secrets(ident.to_secrets())  # what keys.json gives back
        assert restored.tls_issuer is not None and restored.tls_issuer.cert_pem == issuer.cert_pem
    # A certificate never outlives the issuer that signed it.
    late = ManualClock(now_ms=issuer.expires_ms - 86_400_000)
    assert ident.with_renewed_certificate(late).certificate_expires_ms == issuer.expires_ms


# -- keystores the hub refuses --------------------------------------------------------------------
def _not_a_ca(values: dict[str, bytes], ident: identity.HubIdentity) -> dict[str, bytes]:
    """An "issuer" whose certificate says ca=False, which signed the leaf."""
    fake = identity.TlsIssuer.generate(ident.hub_id_text)
    cert = (x509.CertificateBuilder().subject_name(fake.cert.subject).issuer_name(fake.cert.subject)
            .public_key(fake.key.public_key()).serial_number(1)
            .not_valid_before(fake.cert.not_valid_before_utc).not_valid_after(fake.cert.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(fake.key, hashes.SHA256()))
    return _signed_by(values, ident, identity.TlsIssuer(fake.key, cert))


def _no_cert_sign(values: dict[str, bytes], ident: identity.HubIdentity) -> dict[str, bytes]:
    fake = identity.TlsIssuer.generate(ident.hub_id_text)
    cert = (x509.CertificateBuilder().subject_name(fake.cert.subject).issuer_name(fake.cert.subject)
            .public_key(fake.key.public_key()).serial_number(1)
            .not_valid_before(fake.cert.not_valid_before_utc).not_valid_after(fake.cert.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(fake.key, hashes.SHA256()))
    return _signed_by(values, ident, identity.TlsIssuer(fake.key, cert))


def _signed_by(values: dict[str, bytes], ident: identity.HubIdentity, issuer: identity.TlsIssuer) -> dict[str, bytes]:
    leaf = identity.issue_tls_certificate(ident.identity_key, ident.tls_key, hub_id_text=ident.hub_id_text, issuer=issuer)
    return values | {"tls_cert": leaf.public_bytes(serialization.Encoding.PEM),
                     "tls_issuer_key": issuer.key_pem, "tls_issuer_cert": issuer.cert_pem}


def _leaf_by_another_issuer(values: dict[str, bytes], ident: identity.HubIdentity) -> dict[str, bytes]:
    """The leaf signed by another issuer of the same name: keys.json keeps the hub's issuer."""
    other = _signed_by(values, ident, identity.TlsIssuer.generate(ident.hub_id_text))
    return values | {"tls_cert": other["tls_cert"]}


def _self_signed_leaf(values: dict[str, bytes], ident: identity.HubIdentity) -> dict[str, bytes]:
    leaf = identity.issue_tls_certificate(ident.identity_key, ident.tls_key, hub_id_text=ident.hub_id_text)
    return values | {"tls_cert": leaf.public_bytes(serialization.Encoding.PEM)}


def _issuer_key_swapped(values: dict[str, bytes], ident: identity.HubIdentity) -> dict[str, bytes]:
    return values | {"tls_issuer_key": identity.TlsIssuer.generate(ident.hub_id_text).key_pem}


def _issuer_dropped(values: dict[str, bytes], ident: identity.HubIdentity) -> dict[str, bytes]:
    return {k: v for k, v in values.items() if not k.startswith("tls_issuer")}


def _half_issuer(values: dict[str, bytes], ident: identity.HubIdentity) -> dict[str, bytes]:
    return {k: v for k, v in values.items() if k != "tls_issuer_key"}


def _tls_key_swapped(values: dict[str, bytes], ident: identity.HubIdentity) -> dict[str, bytes]:
    other = identity.generate()
    return values | {"tls_key": other.tls_key_pem}


BAD_KEYSTORES = {
    "the issuer is not a CA": (_not_a_ca, "is not a CA certificate"),
    "the issuer may not sign certificates": (_no_cert_sign, "may not sign certificates (no keyCertSign)"),
    "the leaf is signed by another issuer": (_leaf_by_another_issuer, "is not signed by the hub's TLS issuer"),
    "the leaf signs itself again": (_self_signed_leaf, "names another issuer than the hub's TLS issuer"),
    "the issuer key is another": (_issuer_key_swapped, "TLS issuer key in keys.json is not the key of the TLS issuer certificate"),
    "the issuer is gone, the leaf not self-signed": (
        _issuer_dropped, "is issued by another certificate, but keys.json holds no TLS issuer"),
    "half an issuer": (_half_issuer, "only half of the TLS issuer"),
    "the TLS key is another": (_tls_key_swapped, "the TLS key in keys.json is not the key of the TLS certificate"),
}


@pytest.fixture
def logging_kept():
    """`serve` run in this process sets up logging to the CLI runner's stream, which closes:
    put back what the other tests log to."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("case", list(BAD_KEYSTORES))
def test_the_hub_refuses_to_start_with_an_issuer_that_does_not_fit(tmp_path, case, logging_kept):
    path = make_hub_dir(tmp_path / "hub")
    ident = hubdir.HubDir(path).identity(PASSPHRASE.encode())
    tamper, message = BAD_KEYSTORES[case]
    write_secrets(path, tamper(secrets_of(path), ident))
    with pytest.raises(identity.IdentityError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hubdir.HubDir(path).identity(PASSPHRASE.encode())
    code, output = cli("serve", "--data-dir", str(path), "--grpc-port", "0", "--http-port", "0")
    assert code != 0 and message in " ".join(output.split()), output


def test_a_hub_process_with_a_foreign_issuer_exits_saying_why(tmp_path):
    path = make_hub_dir(tmp_path / "hub")
    ident = hubdir.HubDir(path).identity(PASSPHRASE.encode())
    write_secrets(path, _leaf_by_another_issuer(secrets_of(path), ident))
    with pytest.raises(LaunchError, match="is not signed by the hub's TLS issuer"):
        HubProcess(path, PASSPHRASE).start()


# -- hubs made before the issuer ------------------------------------------------------------------
def test_a_stopped_pre_issuer_hub_gets_its_issuer_at_renewal_or_rotation(tmp_path):
    for command in (("cert", "renew"), ("key", "rotate")):
        path = make_hub_dir(tmp_path / command[0])
        legacy = make_pre_issuer_hub(path)
        assert hubdir.HubDir(path).identity(PASSPHRASE.encode()).tls_issuer is None  # it still opens, unchanged
        code, output = cli("cert", "status", "--data-dir", str(path))
        assert code == 0 and "No TLS issuer yet" in output
        assert json.loads(cli("cert", "status", "--data-dir", str(path), "--json")[1])["issuer"] is None
        code, output = cli(*command, "--data-dir", str(path))
        flat = " ".join(output.split())
        assert code == 0, output
        assert "This hub now has a TLS issuer" in flat and f"smartregion sensor credential --data-dir {path}" in flat
        after = hubdir.HubDir(path).identity(PASSPHRASE.encode())
        assert after.tls_issuer is not None and (path / hubdir.ISSUER_FILE).read_bytes() == after.tls_issuer.cert_pem
        after.tls_cert.verify_directly_issued_by(after.tls_issuer.cert)
        assert after.tls_cert_pem != legacy.tls_cert_pem
        assert [a["action"] for a in audit_actions(path) if a["action"] == "cert.issuer"] == ["cert.issuer"]
        code, output = cli("cert", "status", "--data-dir", str(path))
        assert "Signed by the hub's TLS issuer" in output
        status = json.loads(cli("cert", "status", "--data-dir", str(path), "--json")[1])
        assert status["issuer"]["not_after_ms"] == after.tls_issuer.expires_ms and not status["issuer"]["expired"]
        code, output = cli(*command, "--data-dir", str(path))  # the next one keeps it, and says nothing of it
        assert code == 0 and "This hub now has a TLS issuer" not in output
        kept = hubdir.HubDir(path).identity(PASSPHRASE.encode()).tls_issuer
        assert kept is not None and kept.cert_pem == after.tls_issuer.cert_pem
        assert [a["action"] for a in audit_actions(path)].count("cert.issuer") == 1


def served_chain(address: str, server_name: str) -> list[bytes]:
    """The certificates a TLS server sends, in order (`openssl s_client -showcerts`)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot read the chain a server sends")
    shown = subprocess.run(["openssl", "s_client", "-connect", address, "-servername", server_name, "-alpn", "h2",
                            "-showcerts"], input=b"", capture_output=True, timeout=30).stdout
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    return [begin + block.split(end)[0] + end + b"\n" for block in shown.split(begin)[1:]]


def delivered(credential_path: Path, start_ms: int, *, grpc_retries: int = 0) -> int:
    """Send a day over gRPC and a day over HTTP, each on a new connection; return readings stored."""
    sensor = Sensor(SensorCredential.load(credential_path))
    over_grpc = [senml.Reading("pm25", start_ms + h * 3_600_000, 5.0) for h in range(24)]
    stored = replay(sensor, over_grpc, max_retries=grpc_retries).readings_stored
    over_http = [senml.Reading("pm25", start_ms + 86_400_000 + h * 3_600_000, 6.0) for h in range(24)]
    body = sensor.send_http(sensor.seal([over_http])[0])
    assert body["status"] == 200, body
    return stored + body["readings_stored"]


async def test_upgrading_a_pre_issuer_hub_then_the_credential_survives_renewal_and_rotation(tmp_path):
    hub = ProcessHub(tmp_path / "hub", "1103")
    path = hub.hub_dir.path
    legacy = make_pre_issuer_hub(path)
    await asyncio.to_thread(hub.launch)
    hub.connect()
    try:
        # Unchanged before the upgrade: a self-signed certificate alone, which credentials pin.
        assert await peers.fetch_certificate(hub.address) == legacy.tls_cert_pem
        assert served_chain(hub.address, hub.hub_id) == [legacy.tls_cert_pem]
        status = await hub.admin("GetCertificateStatus", admin_pb2.GetCertificateStatusRequest())
        assert status.issuer_not_after_ms == 0 and status.issuer_sha256 == ""
        enrolled = await hub.admin("AddSensor", admin_pb2.AddSensorRequest(
            dataset="air_quality", metrics=["pm25"], latitude=58.97, longitude=5.73, label="enrolled before"))
        old_file = tmp_path / "before.credential.json"
        old_file.write_bytes(enrolled.credential_json)
        assert SensorCredential.load(old_file).hub_cert_pem == legacy.tls_cert_pem
        sent = stored = 0
        day_ms = 86_400_000
        start = 1_546_300_800_000

        def deliver(credential_path: Path) -> None:
            nonlocal sent, stored, start
            stored += delivered(credential_path, start)
            sent, start = sent + 48, start + 2 * day_ms
        await asyncio.to_thread(deliver, old_file)
        # Re-issuing before there is an issuer would pin today's certificate again: refused, saying what to do.
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await hub.admin("ReissueCredential", admin_pb2.ReissueCredentialRequest(sensor_id=enrolled.sensor.sensor_id))
        assert early.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "run `smartregion cert renew` first" in early.value.details()

        # The first live renewal creates the issuer: audited, and the admin told what to do.
        code, output = await asyncio.to_thread(cli, "cert", "renew", "--data-dir", str(path))
        flat = " ".join(output.split())
        assert code == 0 and "the running hub serves it from now on" in flat, output
        assert "Sensors enrolled BEFORE pin the certificate just replaced" in flat
        assert f"smartregion sensor credential --data-dir {path} SENSOR_ID --out FILE" in flat
        issuer_pem = hub.hub_dir.tls_issuer_pem()
        assert issuer_pem is not None
        http_address = hub.process.endpoint["http_url"].removeprefix("https://")
        for address in (hub.address, http_address):  # both serve the new certificate, then the issuer
            assert served_chain(address, hub.hub_id) == [hub.hub_dir.tls_cert_pem(), issuer_pem]
        actions = [a for a in audit_actions(path) if a["action"] in ("cert.renew", "cert.issuer")]
        assert [a["action"] for a in actions] == ["cert.renew", "cert.issuer"]
        # As documented: the old file pins the replaced certificate, so new connections fail.
        with pytest.raises(grpc.RpcError) as refused:
            await asyncio.to_thread(delivered, old_file, start)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # Re-issued once, with the same key (no rekey), trusting the issuer.
        new_file = tmp_path / "reissued.credential.json"
        prefix = enrolled.sensor.sensor_id[:8]
        code, output = await asyncio.to_thread(cli, "sensor", "credential", "--data-dir", str(path), prefix,
                                               "--out", str(new_file))
        assert code == 0 and "with its same key" in " ".join(output.split()), output
        old_doc, new_doc = json.loads(old_file.read_text()), json.loads(new_file.read_text())
        assert new_doc["key"] == old_doc["key"] and new_doc["sensor_id"] == old_doc["sensor_id"]
        assert new_doc["hub_tls_certificate"].encode() == issuer_pem
        assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
        assert any(a["action"] == "sensor.credential" and a["subject"] == enrolled.sensor.sensor_id
                   for a in audit_actions(path))
        await asyncio.to_thread(deliver, new_file)

        # The same file across a second live renewal, then an offline identity rotation.
        code, output = await asyncio.to_thread(cli, "cert", "renew", "--data-dir", str(path))
        assert code == 0 and "This hub now has a TLS issuer" not in output
        await asyncio.to_thread(deliver, new_file)
        await hub.stop()
        code, output = await asyncio.to_thread(cli, "key", "rotate", "--data-dir", str(path))
        assert code == 0, output
        await asyncio.to_thread(hub.launch)
        hub.connect()
        assert hub.hub_dir.tls_issuer_pem() == issuer_pem
        await asyncio.to_thread(deliver, new_file)
        counts = (await hub.admin("GetStatus", admin_pb2.GetStatusRequest())).counts
        assert sent == stored == 4 * 48 and [c.readings for c in counts if c.metric == "pm25"] == [sent]

        # Refusals: an unknown sensor, a revoked one, a LoRaWAN device.
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await hub.admin("ReissueCredential", admin_pb2.ReissueCredentialRequest(sensor_id="ab" * 16))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "no sensor" in unknown.value.details()
        other = await hub.admin("AddSensor", admin_pb2.AddSensorRequest(
            dataset="air_quality", metrics=["pm25"], latitude=58.97, longitude=5.73))
        await hub.admin("RevokeSensor", admin_pb2.RevokeSensorRequest(sensor_id=other.sensor.sensor_id))
        with pytest.raises(grpc.aio.AioRpcError) as revoked:
            await hub.admin("ReissueCredential", admin_pb2.ReissueCredentialRequest(sensor_id=other.sensor.sensor_id))
        assert revoked.value.code() == grpc.StatusCode.PERMISSION_DENIED and "was revoked" in revoked.value.details()
        device = await hub.admin("AddSensor", admin_pb2.AddSensorRequest(
            dataset="air_quality", metrics=["pm25"], latitude=58.97, longitude=5.73, lorawan_dev_eui="70b3d57ed0000001"))
        with pytest.raises(grpc.aio.AioRpcError) as lorawan:
            await hub.admin("ReissueCredential", admin_pb2.ReissueCredentialRequest(sensor_id=device.sensor.sensor_id))
        assert lorawan.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "LoRaWAN device" in lorawan.value.details()
    finally:
        await hub.stop()


# -- an attacker holding the issuer key -----------------------------------------------------------
def _serve_once(chain_pem: bytes, key: ec.EllipticCurvePrivateKey) -> tuple[int, threading.Thread]:
    server = tlsfiles.server_ssl_context(chain_pem, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        with listener:
            conn, _ = listener.accept()
            with contextlib.suppress(ssl.SSLError, OSError), server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def _handshake(port: int, trusted_pem: bytes, name: str) -> bytes:
    context = tlsfiles.pinned_client_ssl_context(trusted_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=name) as tls:
        return tls.recv(2)


def test_the_issuer_vouches_only_for_the_hubs_own_names():
    """Name constraints: a browser told to trust the issuer (for the dashboard) does not accept a
    certificate it signed for another site, should keys.json and its passphrase leak."""
    ident = identity.generate(("dashboard.stavanger.kommune.no",))
    issuer = ident.tls_issuer
    assert issuer is not None
    constraints = issuer.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    assert set(constraints.permitted_subtrees or ()) >= {x509.DNSName(ident.hub_id_text), x509.DNSName("dashboard.stavanger.kommune.no")}
    for name in (ident.hub_id_text, "dashboard.stavanger.kommune.no"):  # the hub's own certificate, by each name
        port, thread = _serve_once(ident.tls_chain_pem, ident.tls_key)
        assert _handshake(port, issuer.cert_pem, name) == b"ok"
        thread.join(10)
    forged_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    forged = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.dnb.no")]))
              .issuer_name(issuer.cert.subject).public_key(forged_key.public_key()).serial_number(7)
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.dnb.no")]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .sign(issuer.key, hashes.SHA256()))
    port, thread = _serve_once(forged.public_bytes(serialization.Encoding.PEM) + issuer.cert_pem, forged_key)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"name constraint|permitted subtree"):
        _handshake(port, issuer.cert_pem, "www.dnb.no")
    thread.join(10)
