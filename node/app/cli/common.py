"""What every command shares: consoles, options, passphrase, and turning errors into exits."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.text import Text

from node import keystore
from node.app.sensor_client import CredentialError
from node.hubdir import HubDirError
from node.identity import IdentityError
from node.register import UnknownMunicipality
from node.storage.base import StorageError

# Markup is off: labels, terms and messages come from other people and are printed as written
# (a "[/]" in a sensor's label must neither crash the CLI nor restyle what an admin reads).
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        "-d",
        envvar="SMARTREGION_DATA_DIR",
        help="The hub's data directory (env SMARTREGION_DATA_DIR).",
        file_okay=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print expected failures as one clear line and exit non-zero; no tracebacks."""
    try:
        yield
    except grpc.RpcError as exc:
        raise fail(f"the hub answered {exc.code().name}: {exc.details()}") from None
    except (HubDirError, keystore.KeystoreError, IdentityError, UnknownMunicipality, CredentialError, FileExistsError,
            StorageError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None


def passphrase(confirm: bool = False, prompt: str = "Hub passphrase") -> bytes:
    """From the environment, or asked for when a person is at the terminal."""
    try:
        return keystore.passphrase_from_environment()
    except keystore.KeystoreError:
        if not sys.stdin.isatty():
            raise
    value = typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    return value.encode()


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def emit(data: bytes, out: Path | None) -> None:
    """Write a document to standard output, or to a private (0600) file."""
    from node.fileio import write_private_file

    if out is None:
        typer.echo(data.decode(), nl=False)
    else:
        write_private_file(out, data)
        console.print(f"Wrote {out}")
