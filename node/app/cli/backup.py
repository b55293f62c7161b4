"""`smartregion backup` and `smartregion restore` (node/backup.py; docs/operations.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from node import audit
from node import backup as backup_mod
from node.app.cli.common import DataDir, console, fail, passphrase, user_errors
from node.app.cli.views import when
from node.clock import SYSTEM_CLOCK
from node.hubdir import ADMIN_TOKEN_FILE, HubDir


def backup(
    data_dir: DataDir,
    out: Annotated[Path, typer.Option(help="The archive to write (0600), e.g. hub-2026-12-01.tar.gz.", dir_okay=False)],
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Back up the hub, running or not: a snapshot of its database, its keys (still encrypted), certificate and config."""
    if out.exists() and not force:
        raise fail(f"{out} exists; refusing to overwrite it (use --force)")
    with user_errors():
        manifest = backup_mod.create(HubDir(data_dir), out, passphrase(), SYSTEM_CLOCK.now_ms())
    size = sum(int(f["size"]) for f in manifest.files.values())
    console.print(f"Backed up hub {manifest.hub_id} (schema {manifest.schema_version}, {size:,} bytes before compression) to {out}")
    console.print("It holds the keys encrypted under the passphrase: keep the passphrase, apart from the archive.")


def restore(
    archive: Annotated[Path, typer.Argument(help="An archive from `smartregion backup`.", exists=True, dir_okay=False)],
    data_dir: DataDir,
    check: Annotated[bool, typer.Option("--check/--no-check",
                                        help="Start the restored hub on loopback, verify its audit chain, ask it a query.")] = True,
) -> None:
    """Restore a backup into a new data directory (never one that holds a hub), then prove it works."""
    with user_errors():
        secret = passphrase()
        manifest = backup_mod.restore(archive, data_dir, secret)
        console.print(f"Restored hub {manifest.hub_id} as backed up at {when(manifest.created_at_ms)} into {data_dir}")
        console.print(f"A new admin token is in {HubDir(data_dir).file(ADMIN_TOKEN_FILE)} (backups never hold one).")
        if check:
            from node.app.restore_check import check_restored

            try:
                result = check_restored(data_dir, secret)
            except audit.AuditError as exc:
                raise fail(f"the restored hub's audit chain does NOT verify: {exc}") from None
            console.print(f"Check passed: the hub started, its audit chain verifies ({result.audit_entries} entries), and it answered "
                          f"{result.query}: {result.answered_readings} readings.")
    console.print("Do not run the restored hub while the original runs: two hubs with one identity fork the agreement state.")
