"""`smartregion audit ...`: show and export the hub's audit log, and verify an export offline."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from node import audit, hubdir
from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, JsonFlag, console, emit, fail, print_json, user_errors
from node.app.cli.views import when
from node.client import AdminClient

app = typer.Typer(help="The hash-chained audit log: show, export, verify offline.", no_args_is_help=True)


@app.command("export")
def export(
    data_dir: DataDir,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """Every audit entry with its hashes, and a head signed by the hub."""
    with user_errors(), AdminClient(data_dir) as client:
        data = client.call("ExportAudit", admin_pb2.ExportAuditRequest()).jsonl
    emit(data, out)


def _time_ms(text: str | None, option: str, end_of_day: bool = False) -> int | None:
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{option} must be a date (2026-12-01) or a time (2026-12-01T13:00), got {text!r}") from None
    if len(text) == 10 and end_of_day:
        moment += dt.timedelta(days=1)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def _rows(data_dir: Path) -> list[tuple[int, dict[str, Any]]]:
    """From the running hub's export, or straight from the database when it is stopped."""
    hub_dir = hubdir.HubDir(data_dir)
    try:
        hub_dir.endpoint()
    except hubdir.HubDirError:
        from node.storage.sqlite import SqliteStore

        hub_dir.config()  # a hub at all?
        store = SqliteStore(hub_dir.file(hubdir.DB_FILE))
        try:
            return audit.entries_of(store.audit_rows())
        finally:
            store.close()
    with AdminClient(data_dir) as client:
        data = client.call("ExportAudit", admin_pb2.ExportAuditRequest()).jsonl
    lines = [json.loads(line) for line in data.decode().splitlines()[1:-1]]
    return [(line["seq"], json.loads(line["entry"])) for line in lines]


@app.command("show")
def show(
    data_dir: DataDir,
    kind: Annotated[str, typer.Option(help="Only actions of this kind, e.g. consent, sensor, retention, agreement.propose.")] = "",
    counterparty: Annotated[str, typer.Option(help="Only entries whose actor or subject starts with this id "
                                                   "(a hub, partner, sensor or data subject).")] = "",
    since: Annotated[str | None, typer.Option(help="From this UTC date or time on (2026-12-01, 2026-12-01T13:00).")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this UTC date (inclusive) or time (exclusive).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, the newest.")] = 200,
    json_output: JsonFlag = False,
) -> None:
    """Audit entries, filtered by kind, counterparty and time (the hub running or not)."""
    start_ms, end_ms = _time_ms(since, "--since"), _time_ms(until, "--until", end_of_day=True)
    with user_errors():
        rows = _rows(data_dir)
    kind, counterparty = kind.strip(), counterparty.strip()
    chosen = [
        (seq, e) for seq, e in rows
        if (not kind or e["action"] == kind or e["action"].startswith(kind.rstrip(".") + "."))
        and (not counterparty or e["actor"].startswith(counterparty) or e["subject"].startswith(counterparty))
        and (start_ms is None or e["at_ms"] >= start_ms) and (end_ms is None or e["at_ms"] < end_ms)
    ][-limit:]
    if json_output:
        print_json([{"seq": seq, **e} for seq, e in chosen])
        return
    table = Table("seq", "when", "actor", "action", "subject", "outcome", "detail")
    for seq, e in chosen:
        table.add_row(str(seq), when(e["at_ms"]), e["actor"], e["action"], e["subject"], e["outcome"], e["detail"])
    console.print(table)
    console.print(f"{len(chosen)} of {len(rows)} entries")


@app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="An export from `smartregion audit export`.", exists=True, dir_okay=False)],
    hub_id: Annotated[str, typer.Option(help="The hub id you expect (from the municipality, out of band).")] = "",
    extends: Annotated[Path | None, typer.Option(help="An earlier export that FILE must extend (the log was not rewritten since).",
                                                 exists=True, dir_okay=False)] = None,
) -> None:
    """Verify an export offline: every hash links, nothing removed or altered, head signed by the hub."""
    try:
        if extends is not None:
            old_head, head = audit.verify_extension(extends.read_bytes(), file.read_bytes())
        else:
            head = audit.verify_export(file.read_bytes())
    except audit.AuditError as exc:
        raise fail(f"{file} does NOT verify: {exc}") from None
    if hub_id and head["hub_id"] != hub_id.strip():
        raise fail(f"{file} verifies, but it was signed by hub {head['hub_id']}, not {hub_id}")
    console.print(f"{file} verifies: {head['seq']} entries, chained and signed by hub {head['hub_id']} at {when(head['signed_at_ms'])}")
    if extends is not None:
        console.print(f"It extends {extends} ({old_head['seq']} entries, signed at {when(old_head['signed_at_ms'])}): "
                      f"those entries are unchanged and {head['seq'] - old_head['seq']} were added since.")
    if not hub_id:
        console.print("Check that hub id with the municipality (or pass --hub-id) to know whose log this is.")
