"""`smartregion lorawan ...`: the join servers' key-encryption keys a hub holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, console, fail, user_errors
from node.client import AdminClient

app = typer.Typer(help="LoRaWAN: join-server key-encryption keys (docs/integrations.md).", no_args_is_help=True)
kek_app = typer.Typer(help="Key-encryption keys of join servers.", no_args_is_help=True)
app.add_typer(kek_app, name="kek")


@kek_app.command("add")
def add_kek(
    data_dir: DataDir,
    label: Annotated[str, typer.Option(help="The kek_label the join server writes into its key envelopes.")],
    kek_file: Annotated[Path, typer.Option(help="A file holding the KEK as hex (32, 48 or 64 hex digits).", dir_okay=False)],
) -> None:
    """Hold a join server's KEK (wrapped under the hub's key), to unwrap AppSKeys in uplinks."""
    try:
        kek = bytes.fromhex(kek_file.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise fail(f"cannot read {kek_file}: {exc.strerror}") from None
    except ValueError:
        raise fail(f"{kek_file} does not hold a KEK as hex digits") from None
    with user_errors(), AdminClient(data_dir) as client:
        client.call("AddLorawanKek", admin_pb2.AddLorawanKekRequest(label=label, kek=kek))
    console.print(f"Holding KEK {label!r}: AppSKeys in key envelopes under it are unwrapped by this hub only")
