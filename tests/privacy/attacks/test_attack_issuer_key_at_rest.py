"""Review: is the TLS issuer's private key protected like the other keys? (node/identity.py
TlsIssuer, node/hubdir.py, node/backup.py, the `smartregion init` / `backup` CLI.)

Tried, as someone who reads the data directory, a backup archive and the CLI's output without
the passphrase: every file of a new hub's directory and every member of its backup (through
the documented commands), searched for the issuer's private key (its PEM, its DER, its private
scalar) and for any PEM private key at all; the modes of keys.json, tls-issuer.pem and the
archive; and keys.json opened with a wrong passphrase. Held if none holds the key in the clear.
"""

from __future__ import annotations

import os
import stat
import tarfile

from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from node import hubdir, keystore
from node.app.cli.main import app
from tests.conftest import PASSPHRASE


def _needles(ident) -> dict[str, bytes]:
    key = ident.tls_issuer.key
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return {"issuer key PEM": ident.tls_issuer.key_pem, "issuer key DER": der, "issuer private scalar": scalar,
            "issuer scalar as hex": scalar.hex().encode(), "any PEM private key": b"PRIVATE KEY-----"}


def test_the_issuer_key_is_never_in_the_clear_on_disk_in_backups_or_in_output(tmp_path):
    runner = CliRunner()
    env = {"SMARTREGION_PASSPHRASE": PASSPHRASE, "COLUMNS": "200"}
    data = tmp_path / "hub"
    made = runner.invoke(app, ["init", "--data-dir", str(data), "--municipality", "4601", "--grpc-port", "0", "--http-port", "0"], env=env)
    assert made.exit_code == 0, made.output
    ident = hubdir.HubDir(data).identity(PASSPHRASE.encode())
    assert ident.tls_issuer is not None
    needles = _needles(ident)
    archive = tmp_path / "hub.backup.tar.gz"
    backed = runner.invoke(app, ["backup", "--data-dir", str(data), "--out", str(archive)], env=env)
    assert backed.exit_code == 0, backed.output

    places: dict[str, bytes] = {"init output": made.output.encode(), "backup output": backed.output.encode()}
    for path in data.rglob("*"):
        if path.is_file():
            places[str(path.relative_to(data))] = path.read_bytes()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                places[f"backup:{member.name}"] = extracted.read()
    tried, found = [], []
    for where, content in places.items():
        for what, needle in needles.items():
            tried.append(f"{where}: {what}")
            if needle in content:
                found.append(f"{what} in {where}")
    for name in ("keys.json", "tls-issuer.pem"):
        mode = stat.S_IMODE(os.stat(data / name).st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    assert stat.S_IMODE(os.stat(archive).st_mode) == 0o600
    try:
        keystore.read(data / "keys.json", b"not the passphrase")
        found.append("keys.json opens with a wrong passphrase")
    except keystore.KeystoreError:
        pass
    assert not found, f"BROKE: {found}"
    print(f"held: {len(places)} files and outputs, {len(needles)} forms of the issuer key each ({len(tried)} searches): "
          f"none in the clear; keys.json, tls-issuer.pem and the archive are 0600; a wrong passphrase does not open keys.json")
