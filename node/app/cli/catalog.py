"""`smartregion catalog ...`: check and show the datasets a hub accepts (its catalog.toml)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from node import catalog
from node.app.cli.common import JsonFlag, console, emit, fail, print_json

app = typer.Typer(help="Check and show the hub's datasets (DATA_DIR/catalog.toml).", no_args_is_help=True)

DataDirOrNone = Annotated[
    Path | None,
    typer.Option("--data-dir", "-d", envvar="SMARTREGION_DATA_DIR", file_okay=False, help="The hub's data directory."),
]
FileOption = Annotated[Path | None, typer.Option("--file", "-f", dir_okay=False, help="A catalog file to check instead.")]


def _load(data_dir: Path | None, file: Path | None) -> catalog.Catalog:
    try:
        if file is not None:
            return catalog.load(file)
        if data_dir is None:
            raise fail("give --data-dir (the hub's catalog) or --file (a catalog file)")
        return catalog.for_data_dir(data_dir)
    except catalog.CatalogError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: {exc.filename or ''}") from None


@app.command("check")
def check(data_dir: DataDirOrNone = None, file: FileOption = None) -> None:
    """Validate a catalog: units, ranges, classifications, no duplicate dataset or metric."""
    found = _load(data_dir, file)
    metrics = sum(len(d.metrics) for d in found.datasets.values())
    console.print(f"{found.source}: valid, {len(found.datasets)} datasets, {metrics} metrics")


@app.command("show")
def show(data_dir: DataDirOrNone = None, file: FileOption = None, json_output: JsonFlag = False) -> None:
    """List the datasets and metrics a hub accepts."""
    found = _load(data_dir, file)
    if json_output:
        print_json(found.to_dict())
        return
    table = Table("dataset", "type", "classification", "retention", "metric", "unit", "range")
    for d in found.datasets.values():
        for i, m in enumerate(d.metrics.values()):
            first = i == 0
            table.add_row(d.name if first else "", d.fiware_type if first else "", d.classification.value if first else "",
                          f"{d.retention_days} d" if first else "", m.name, m.unit, f"{m.minimum} .. {m.maximum}")
    console.print(table)


@app.command("default")
def default(
    out: Annotated[Path | None, typer.Option(help="Write it here (e.g. DATA_DIR/catalog.toml) instead of printing.")] = None,
) -> None:
    """Print the shipped default catalog, to start a hub's own catalog.toml from."""
    emit(catalog.default_text().encode(), out)
