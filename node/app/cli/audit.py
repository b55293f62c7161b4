"""`smartregion audit ...`: export the hub's audit log, and verify an export offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from node import audit
from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, console, emit, fail, user_errors
from node.app.cli.views import when
from node.client import AdminClient

app = typer.Typer(help="The hash-chained audit log: export it, verify it offline.", no_args_is_help=True)


@app.command("export")
def export(
    data_dir: DataDir, out: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """Every audit entry with its hashes, and a head signed by the hub."""
    with user_errors(), AdminClient(data_dir) as client:
        data = client.call("ExportAudit", admin_pb2.ExportAuditRequest()).jsonl
    emit(data, out)


@app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="An export from `smartregion audit export`.", exists=True, dir_okay=False)],
    hub_id: Annotated[str, typer.Option(help="The hub id you expect (from the municipality, out of band).")] = "",
) -> None:
    """Verify an export offline: every hash links, nothing removed or altered, head signed by the hub."""
    try:
        head = audit.verify_export(file.read_bytes())
    except audit.AuditError as exc:
        raise fail(f"{file} does NOT verify: {exc}") from None
    if hub_id and head["hub_id"] != hub_id.strip():
        raise fail(f"{file} verifies, but it was signed by hub {head['hub_id']}, not {hub_id}")
    console.print(f"{file} verifies: {head['seq']} entries, chained and signed by hub {head['hub_id']} at {when(head['signed_at_ms'])}")
    if not hub_id:
        console.print("Check that hub id with the municipality (or pass --hub-id) to know whose log this is.")
