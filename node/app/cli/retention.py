"""`smartregion retention ...`: how long readings are kept, per dataset."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, JsonFlag, console, print_json, user_errors
from node.app.cli.views import as_dict, when
from node.client import AdminClient

app = typer.Typer(help="Retention: readings older than their dataset's retention are deleted (daily, audited).", no_args_is_help=True)


def _print(report: admin_pb2.RetentionReport, json_output: bool, deleted: bool) -> None:
    if json_output:
        print_json(as_dict(report))
        return
    columns = ["dataset", "retention", "promised by agreements"] + (["deleted now", "cutoff"] if deleted else [])
    table = Table(*columns)
    for d in report.datasets:
        row = [d.dataset, f"{d.retention_days} days" if d.retention_days else "for ever",
               f"{d.promised_days} days" if d.promised_days else "-"]
        if deleted:
            row += [str(d.readings_deleted), when(d.cutoff_ms)]
        table.add_row(*row)
    console.print(table)


@app.command("show")
def show(data_dir: DataDir, json_output: JsonFlag = False) -> None:
    """Each dataset's retention, the history agreements promise for it, and the cutoff a run would use now."""
    with user_errors(), AdminClient(data_dir) as client:
        report = client.call("RunRetention", admin_pb2.RunRetentionRequest(dry_run=True))
    _print(report, json_output, deleted=False)


@app.command("set")
def set_(
    data_dir: DataDir,
    dataset: Annotated[str, typer.Option(help="The dataset, e.g. air_quality.")],
    days: Annotated[int, typer.Option(min=0, help="Keep readings this many days (0: for ever).")],
    json_output: JsonFlag = False,
) -> None:
    """Set a dataset's retention (refused if shorter than an agreement promises)."""
    with user_errors(), AdminClient(data_dir) as client:
        report = client.call("SetRetention", admin_pb2.SetRetentionRequest(dataset=dataset, retention_days=days))
    if not json_output:
        kept = f"{days} days" if days else "for ever"
        console.print(f"Retention of {dataset}: {kept} (applied at the daily run; `smartregion retention run` applies it now)")
    _print(report, json_output, deleted=False)


@app.command("run")
def run(data_dir: DataDir, json_output: JsonFlag = False) -> None:
    """Delete expired readings now (the hub does this daily by itself)."""
    with user_errors(), AdminClient(data_dir) as client:
        report = client.call("RunRetention", admin_pb2.RunRetentionRequest())
    _print(report, json_output, deleted=True)
