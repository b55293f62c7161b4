"""Secrets at rest: file modes, the encrypted keystore, wrapped sensor keys, the TLS binding."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from node import admin, hubdir, identity, ids, keystore, register, sensors
from node.app.sensor_client import SensorCredential
from node.hub import Hub

PASSPHRASE = b"keys-at-rest-passphrase-42"
PRIVATE_FILES = (hubdir.KEYS_FILE, hubdir.ADMIN_TOKEN_FILE, hubdir.CERT_FILE, hubdir.CONFIG_FILE, hubdir.DB_FILE)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def encodings(secret: bytes) -> dict[str, bytes]:
    """The ways a secret could leak into a text file."""
    return {
        "raw": secret,
        "base64": base64.b64encode(secret),
        "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
    }


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One hub made under a permissive umask (init must not rely on the umask)."""
    path = tmp_path_factory.mktemp("keys") / "hub"
    old = os.umask(0o000)
    try:
        config, ident = hubdir.init_hub(path, "1103", PASSPHRASE)
    finally:
        os.umask(old)
    return path, config, ident


# -- file modes -------------------------------------------------------------------------


def test_data_dir_and_secret_files_are_private(hub):
    path, _, _ = hub
    assert mode(path) == 0o700
    for name in PRIVATE_FILES:
        assert mode(path / name) == 0o600, name
    for extra in (f"{hubdir.DB_FILE}-wal", f"{hubdir.DB_FILE}-shm"):
        if (path / extra).exists():
            assert mode(path / extra) == 0o600, extra
    # No temporary files are left behind by the atomic writes.
    assert not [p.name for p in path.iterdir() if ".tmp-" in p.name]


def test_an_existing_open_directory_is_made_private(tmp_path):
    path = tmp_path / "hub"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    hubdir.init_hub(path, "1103", PASSPHRASE)
    assert mode(path) == 0o700
    for name in PRIVATE_FILES:
        assert mode(path / name) == 0o600, name


def test_endpoint_file_and_run_dir_are_private(tmp_path):
    path = tmp_path / "hub"
    hubdir.init_hub(path, "1103", PASSPHRASE)
    hub_dir = hubdir.HubDir(path)
    hub_dir.write_endpoint({"pid": os.getpid(), "hub_id": "x", "grpc_address": "127.0.0.1:1", "tls": True})
    assert mode(path / "run") == 0o700
    assert mode(path / hubdir.ENDPOINT_FILE) == 0o600
    assert hub_dir.endpoint()["pid"] == os.getpid()
    hub_dir.clear_endpoint()
    with pytest.raises(hubdir.HubDirError, match="not running"):
        hub_dir.endpoint()


# -- what the files hold ----------------------------------------------------------------


def test_keys_json_holds_no_secret_in_the_clear(hub):
    path, config, _ = hub
    ident = hubdir.HubDir(path).identity(PASSPHRASE)  # loaded back with the right passphrase
    assert ident.hub_id_text == config.hub_id
    blob = (path / hubdir.KEYS_FILE).read_bytes()
    document = json.loads(blob)
    assert document["format"] == keystore.FORMAT and document["kdf"]["name"] == "scrypt"

    identity_raw = ident.identity_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    tls_der = ident.tls_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    secrets_to_check = {
        "identity key": identity_raw,
        "key-encryption key": ident.key_encryption_key,
        "TLS key (PEM)": ident.tls_key_pem,
        "TLS key (DER)": tls_der,
        "TLS private scalar": ident.tls_key.private_numbers().private_value.to_bytes(32, "big"),
    }
    for what, secret in secrets_to_check.items():
        for how, encoded in encodings(secret).items():
            assert encoded not in blob, f"{what} appears in keys.json ({how})"
    # Not even one line of the TLS key's PEM body.
    for line in ident.tls_key_pem.splitlines():
        if len(line) >= 16 and not line.startswith(b"-----"):
            assert line not in blob
    # The other files hold no secret either.
    for name in (hubdir.CONFIG_FILE, hubdir.CERT_FILE):
        text = (path / name).read_bytes()
        for what, secret in secrets_to_check.items():
            for how, encoded in encodings(secret).items():
                assert encoded not in text, f"{what} appears in {name} ({how})"
    # hub.toml keeps only the hash of the admin token.
    token = hubdir.HubDir(path).admin_token()
    assert token.startswith(hubdir.ADMIN_TOKEN_PREFIX)
    assert token.encode() not in (path / hubdir.CONFIG_FILE).read_bytes()
    assert hubdir.token_matches(token, config.admin_token_sha256)


def test_the_certificate_file_is_the_identitys_certificate(hub):
    path, _, ident = hub
    cert = x509.load_pem_x509_certificate((path / hubdir.CERT_FILE).read_bytes())
    assert cert == ident.tls_cert
    assert identity.verify_tls_binding(cert) == ident.public_key_raw


# -- the passphrase and tampering -------------------------------------------------------


def test_a_wrong_passphrase_is_refused_clearly(hub):
    path, _, _ = hub
    with pytest.raises(keystore.KeystoreError, match="wrong passphrase"):
        keystore.read(path / hubdir.KEYS_FILE, b"not-the-passphrase-at-all")
    with pytest.raises(hubdir.HubDirError, match="wrong passphrase"):
        hubdir.HubDir(path).identity(b"not-the-passphrase-at-all")
    with pytest.raises(hubdir.HubDirError):
        hubdir.HubDir(path).identity(PASSPHRASE + b" ")


def tampered_copy(hub_path: Path, tmp_path: Path, change) -> Path:
    """A copy of the hub's keys.json with `change(document)` applied."""
    document = json.loads((hub_path / hubdir.KEYS_FILE).read_bytes())
    change(document)
    out = tmp_path / "keys.json"
    out.write_text(json.dumps(document))
    return out


def flip_ciphertext_byte(index: int):
    def change(document):
        data = bytearray(base64.b64decode(document["ciphertext"]))
        data[index] ^= 0x01
        document["ciphertext"] = base64.b64encode(bytes(data)).decode()

    return change


def set_kdf(name: str, value):
    def change(document):
        document["kdf"][name] = value

    return change


def change_salt(document):
    salt = bytearray(base64.b64decode(document["kdf"]["salt"]))
    salt[0] ^= 0x80
    document["kdf"]["salt"] = base64.b64encode(bytes(salt)).decode()


def change_nonce(document):
    nonce = bytearray(base64.b64decode(document["nonce"]))
    nonce[-1] ^= 0x01
    document["nonce"] = base64.b64encode(bytes(nonce)).decode()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(flip_ciphertext_byte(0), id="ciphertext-first-byte"),
        pytest.param(flip_ciphertext_byte(57), id="ciphertext-middle-byte"),
        pytest.param(flip_ciphertext_byte(-1), id="ciphertext-tag-byte"),
        pytest.param(set_kdf("n", keystore.SCRYPT_N // 2), id="kdf-n"),
        pytest.param(set_kdf("r", keystore.SCRYPT_R - 1), id="kdf-r"),
        pytest.param(set_kdf("p", keystore.SCRYPT_P + 1), id="kdf-p"),
        pytest.param(change_salt, id="kdf-salt"),
        pytest.param(change_nonce, id="nonce"),
    ],
)
def test_a_tampered_keystore_does_not_open(hub, tmp_path, change):
    path, _, _ = hub
    assert keystore.read(path / hubdir.KEYS_FILE, PASSPHRASE)  # the original opens
    with pytest.raises(keystore.KeystoreError):
        keystore.read(tampered_copy(path, tmp_path, change), PASSPHRASE)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(set_kdf("name", "pbkdf2"), id="kdf-name"),
        pytest.param(lambda d: d.update(version=2), id="version"),
        pytest.param(lambda d: d.update(format="something-else"), id="format"),
        pytest.param(lambda d: d.pop("nonce"), id="no-nonce"),
        pytest.param(lambda d: d.update(ciphertext="%%% not base64"), id="bad-base64"),
        pytest.param(set_kdf("n", "many"), id="kdf-n-not-a-number"),
    ],
)
def test_a_damaged_keystore_gives_a_keystore_error(hub, tmp_path, change):
    path, _, _ = hub
    with pytest.raises(keystore.KeystoreError):
        keystore.read(tampered_copy(path, tmp_path, change), PASSPHRASE)


def test_a_keystore_that_is_not_json_gives_a_keystore_error(tmp_path):
    path = tmp_path / "keys.json"
    path.write_bytes(b"\x00\xffnot json")
    with pytest.raises(keystore.KeystoreError):
        keystore.read(path, PASSPHRASE)


def test_a_tampered_keys_json_in_the_hub_is_refused_by_hubdir(tmp_path):
    path = tmp_path / "hub"
    hubdir.init_hub(path, "1103", PASSPHRASE)
    keys = path / hubdir.KEYS_FILE
    document = json.loads(keys.read_bytes())
    flip_ciphertext_byte(10)(document)
    keys.write_text(json.dumps(document))
    with pytest.raises(hubdir.HubDirError, match="cannot open"):
        hubdir.HubDir(path).identity(PASSPHRASE)


def test_a_keystore_of_another_hub_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    hubdir.init_hub(a, "1103", PASSPHRASE)
    hubdir.init_hub(b, "1103", PASSPHRASE)
    (a / hubdir.KEYS_FILE).write_bytes((b / hubdir.KEYS_FILE).read_bytes())
    with pytest.raises(hubdir.HubDirError, match="does not match the hub id"):
        hubdir.HubDir(a).identity(PASSPHRASE)


# -- init refuses -----------------------------------------------------------------------


def test_init_refuses_to_overwrite_a_hub(hub):
    path, config, _ = hub
    before = {name: (path / name).read_bytes() for name in PRIVATE_FILES if name != hubdir.DB_FILE}
    with pytest.raises(hubdir.HubDirError, match="already holds a hub"):
        hubdir.init_hub(path, "1103", PASSPHRASE)
    with pytest.raises(hubdir.HubDirError, match="already holds a hub"):
        hubdir.init_hub(path, "0301", b"another-passphrase-123")
    assert {name: (path / name).read_bytes() for name in before} == before
    assert hubdir.HubDir(path).config().hub_id == config.hub_id


def test_init_refuses_a_directory_holding_only_a_keystore(tmp_path):
    """A half-made hub (init stopped before hub.toml) still holds keys: not overwritten."""
    path = tmp_path / "hub"
    path.mkdir()
    (path / hubdir.KEYS_FILE).write_bytes(b"{}")
    with pytest.raises(hubdir.HubDirError, match="already holds a hub"):
        hubdir.init_hub(path, "1103", PASSPHRASE)
    assert (path / hubdir.KEYS_FILE).read_bytes() == b"{}"


@pytest.mark.parametrize("municipality", ["9999", "Atlantis", "", "0000"])
def test_init_refuses_an_unknown_municipality(tmp_path, municipality):
    path = tmp_path / "hub"
    with pytest.raises(register.UnknownMunicipality):
        hubdir.init_hub(path, municipality, PASSPHRASE)
    assert not path.exists(), "nothing is created for a refused init"


def test_init_accepts_a_municipality_by_name_and_stores_its_number(tmp_path):
    config, _ = hubdir.init_hub(tmp_path / "hub", "stavanger", PASSPHRASE)
    assert config.municipality == "1103"
    assert hubdir.HubDir(tmp_path / "hub").config().municipality_name == "Stavanger"


def test_init_refuses_a_short_passphrase(tmp_path):
    with pytest.raises(hubdir.HubDirError, match="at least"):
        hubdir.init_hub(tmp_path / "hub", "1103", b"short")
    assert not (tmp_path / "hub" / hubdir.KEYS_FILE).exists()


# -- sensor keys are wrapped ------------------------------------------------------------


@pytest.fixture
def enrolled(tmp_path):
    """A hub with one sensor enrolled through the admin code path; the hub is closed after."""
    path = tmp_path / "hub"
    hubdir.init_hub(path, "1103", PASSPHRASE)
    hub_obj = Hub.open(path, PASSPHRASE)
    try:
        enrolment = sensors.Enrolment("air_quality", ["pm25", "temperature"], 58.97, 5.73, label="Valand")
        record, credential_json = asyncio.run(admin.add_sensor(hub_obj, enrolment))
        other, _ = asyncio.run(admin.add_sensor(hub_obj, enrolment))
    finally:
        hub_obj.close()
    credential_path = tmp_path / "sensor.json"
    credential_path.write_bytes(credential_json)
    return path, SensorCredential.load(credential_path), record, other


def stored_wrapped_key(db: Path, sensor_id: str) -> bytes:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT wrapped_key FROM sensors WHERE sensor_id = ?", (sensor_id,)).fetchone()[0]
    finally:
        conn.close()


def test_a_sensor_key_is_stored_wrapped(enrolled):
    path, credential, record, _ = enrolled
    key = credential.key
    assert len(key) == 32
    database_files = [p for p in path.iterdir() if p.name.startswith(hubdir.DB_FILE)]
    assert database_files
    for db_file in database_files:
        content = db_file.read_bytes()
        for how, encoded in encodings(key).items():
            assert encoded not in content, f"the sensor key appears in {db_file.name} ({how})"
    wrapped = stored_wrapped_key(path / hubdir.DB_FILE, credential.sensor_id)
    assert wrapped == record.wrapped_key
    assert key not in wrapped and len(wrapped) == 12 + 32 + 16


def test_the_wrapped_key_unwraps_only_for_its_own_sensor_and_hub(enrolled):
    path, credential, _, other = enrolled
    ident = hubdir.HubDir(path).identity(PASSPHRASE)
    wrapped = stored_wrapped_key(path / hubdir.DB_FILE, credential.sensor_id)
    sensor_id = ids.from_text(credential.sensor_id)
    assert sensors.unwrap_key(ident.key_encryption_key, ident.hub_id, sensor_id, wrapped) == credential.key

    # Moved onto another sensor's row: does not unwrap.
    with pytest.raises(ValueError, match="does not unwrap"):
        sensors.unwrap_key(ident.key_encryption_key, ident.hub_id, ids.from_text(other.sensor_id), wrapped)
    # Copied to another hub that somehow had the same KEK, or read under another hub id.
    another_hub_id = ids.hub_id_from_public_key(b"\x07" * 32)
    with pytest.raises(ValueError, match="does not unwrap"):
        sensors.unwrap_key(ident.key_encryption_key, another_hub_id, sensor_id, wrapped)
    # Under another hub's KEK.
    other_hub = hubdir.init_hub(path.parent / "other", "1103", PASSPHRASE)[1]
    with pytest.raises(ValueError, match="does not unwrap"):
        sensors.unwrap_key(other_hub.key_encryption_key, other_hub.hub_id, sensor_id, wrapped)
    # A flipped bit of the stored value.
    broken = bytearray(wrapped)
    broken[20] ^= 0x04
    with pytest.raises(ValueError):
        sensors.unwrap_key(ident.key_encryption_key, ident.hub_id, sensor_id, bytes(broken))


# -- the TLS certificate's identity binding ---------------------------------------------


def certificate(
    tls_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    binding_public: bytes,
    binding_signature: bytes,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.UnrecognizedExtension(
                identity.TLS_BINDING_OID, bytes([0x04, 96]) + binding_public + binding_signature
            ),
            critical=False,
        )
        .sign(tls_key, hashes.SHA256())
    )


def spki(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_the_tls_binding_verifies_for_the_hubs_own_certificate(hub):
    path, config, _ = hub
    ident = hubdir.HubDir(path).identity(PASSPHRASE)
    assert identity.verify_tls_binding(ident.tls_cert) == ident.public_key_raw
    cn = ident.tls_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == config.hub_id


def test_a_binding_signed_by_another_identity_fails(hub):
    path, config, _ = hub
    ident = hubdir.HubDir(path).identity(PASSPHRASE)
    intruder = Ed25519PrivateKey.generate()
    tls_key = ec.generate_private_key(ec.SECP256R1())
    # Claims our identity key and hub id, but the binding was signed by the intruder.
    forged_signature = intruder.sign(identity.TLS_BINDING_DOMAIN + spki(tls_key))
    forged = certificate(tls_key, config.hub_id, ident.public_key_raw, forged_signature)
    with pytest.raises(identity.IdentityError, match="signature is invalid"):
        identity.verify_tls_binding(forged)


def test_a_genuine_binding_of_another_identity_does_not_pass_as_ours(hub):
    path, config, _ = hub
    ident = hubdir.HubDir(path).identity(PASSPHRASE)
    intruder = Ed25519PrivateKey.generate()
    tls_key = ec.generate_private_key(ec.SECP256R1())
    intruder_raw = identity.raw_public(intruder.public_key())
    signature = intruder.sign(identity.TLS_BINDING_DOMAIN + spki(tls_key))
    # Correct binding by the intruder, but named as our hub: the name check refuses it.
    with pytest.raises(identity.IdentityError, match="common name"):
        identity.verify_tls_binding(certificate(tls_key, config.hub_id, intruder_raw, signature))
    # Issued properly for the intruder: verifies, but to the intruder's key, not ours ...
    theirs = identity.issue_tls_certificate(intruder, tls_key)
    assert identity.verify_tls_binding(theirs) == intruder_raw != ident.public_key_raw
    # ... so it cannot be loaded as our identity's certificate.
    values = dict(ident.to_secrets(), tls_cert=theirs.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(identity.IdentityError):
        identity.HubIdentity.from_secrets(values)


def test_our_binding_moved_onto_another_tls_key_fails(hub):
    path, config, _ = hub
    ident = hubdir.HubDir(path).identity(PASSPHRASE)
    value = ident.tls_cert.extensions.get_extension_for_oid(identity.TLS_BINDING_OID).value.value
    public_raw, signature = value[2:34], value[34:]
    other_tls_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(identity.IdentityError, match="signature is invalid"):
        identity.verify_tls_binding(certificate(other_tls_key, config.hub_id, public_raw, signature))


def test_a_certificate_without_a_binding_fails():
    tls_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    now = dt.datetime.now(dt.UTC)
    plain = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(tls_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(tls_key, hashes.SHA256())
    )
    with pytest.raises(identity.IdentityError, match="no smartregion identity binding"):
        identity.verify_tls_binding(plain)
