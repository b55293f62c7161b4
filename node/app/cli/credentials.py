"""`smartregion admin rotate-token` and `smartregion passphrase change`."""

from __future__ import annotations

import os
import sys

import typer

from node import audit, credentials, hubdir, keystore
from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, console, err_console, fail, passphrase, user_errors
from node.client import AdminClient
from node.clock import SYSTEM_CLOCK

admin_app = typer.Typer(help="The admin credential (DATA_DIR/admin.token).", no_args_is_help=True)
passphrase_app = typer.Typer(help="The passphrase that encrypts the hub's keys (keys.json).", no_args_is_help=True)

NEW_PASSPHRASE_ENV = "SMARTREGION_NEW_PASSPHRASE"
NEW_PASSPHRASE_FILE_ENV = "SMARTREGION_NEW_PASSPHRASE_FILE"


def _running(hub_dir: hubdir.HubDir) -> bool:
    try:
        hub_dir.endpoint()
    except hubdir.HubDirError:
        return False
    return True


def _audit_offline(hub_dir: hubdir.HubDir, action: str, detail: str) -> None:
    entry = audit.AuditEntry("admin", action, hub_dir.config().hub_id, "ok", detail, at_ms=SYSTEM_CLOCK.now_ms())
    audit.record_in_database(hub_dir.file(hubdir.DB_FILE), entry)


@admin_app.command("rotate-token")
def rotate_token(data_dir: DataDir) -> None:
    """Replace admin.token with a new one; the old token is refused from now on."""
    hub_dir = hubdir.HubDir(data_dir)
    with user_errors():
        config = hub_dir.config()
        if _running(hub_dir):
            with AdminClient(data_dir) as client:  # authenticated with the old token, once more
                response = client.call("RotateAdminToken", admin_pb2.RotateAdminTokenRequest())
            console.print(f"The running hub now accepts only the new token in {response.token_file}; the old one is refused.")
        else:
            credentials.rotate_admin_token(hub_dir, config)
            _audit_offline(hub_dir, "admin.token-rotate", "while the hub was stopped")
            console.print(f"Wrote a new admin token to {hub_dir.file(hubdir.ADMIN_TOKEN_FILE)}; the hub accepts only it when it starts.")
    console.print("Dashboard sessions opened with the old token have ended; log in again with the new one.")


def _new_passphrase() -> bytes:
    value = os.environ.get(NEW_PASSPHRASE_ENV)
    if value:
        return value.encode()
    path = os.environ.get(NEW_PASSPHRASE_FILE_ENV)
    if path:
        try:
            return open(path, encoding="utf-8").read().splitlines()[0].encode()
        except (OSError, IndexError) as exc:
            raise fail(f"cannot read the new passphrase from {NEW_PASSPHRASE_FILE_ENV}={path}: {exc}") from None
    if not sys.stdin.isatty():
        raise fail(f"no new passphrase: set {NEW_PASSPHRASE_ENV}, or {NEW_PASSPHRASE_FILE_ENV} to a file holding it")
    return str(typer.prompt("New passphrase", hide_input=True, confirmation_prompt=True)).encode()


@passphrase_app.command("change")
def change(data_dir: DataDir) -> None:
    """Re-encrypt keys.json under a new passphrase (the current one from SMARTREGION_PASSPHRASE[_FILE],
    the new one from SMARTREGION_NEW_PASSPHRASE[_FILE] or asked)."""
    hub_dir = hubdir.HubDir(data_dir)
    with user_errors():
        hub_dir.config()
        old = passphrase(prompt="Current passphrase")
        new = _new_passphrase()
        credentials.change_passphrase(hub_dir, old, new)
        _audit_offline(hub_dir, "keystore.passphrase-change", f"scrypt n=2^{keystore.SCRYPT_N.bit_length() - 1}")
    console.print(f"{hub_dir.file(hubdir.KEYS_FILE)} is now encrypted under the new passphrase; the old one no longer opens it.")
    if _running(hub_dir):
        err_console.print("note: the running hub keeps its keys in memory and goes on serving; it needs the NEW passphrase "
                          "at its next start, so update SMARTREGION_PASSPHRASE_FILE (or the systemd credential) now.")
    else:
        console.print("Start the hub with the new passphrase (update SMARTREGION_PASSPHRASE_FILE or the systemd credential).")
