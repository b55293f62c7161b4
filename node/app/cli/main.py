"""`smartregion`: run a municipality's hub and manage it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.json_format import MessageToDict
from rich.table import Table

from node import __version__, hubdir, logs
from node.api.v1 import admin_pb2
from node.app.cli import (
    agreement,
    audit,
    backup,
    catalog,
    consent,
    credentials,
    keys,
    lorawan,
    names,
    partner,
    peer,
    query,
    region,
    retention,
    sensor,
)
from node.app.cli.common import DataDir, JsonFlag, console, fail, passphrase, print_json, user_errors
from node.client import AdminClient

app = typer.Typer(
    help="smartregion: municipalities share IoT data without giving up control of it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(sensor.app, name="sensor")
app.add_typer(peer.app, name="peer")
app.add_typer(partner.app, name="partner")
app.add_typer(agreement.app, name="agreement")
app.add_typer(query.app, name="query")
app.add_typer(consent.app, name="consent")
app.add_typer(region.app, name="region")
app.add_typer(audit.app, name="audit")
app.add_typer(credentials.admin_app, name="admin")
app.add_typer(credentials.passphrase_app, name="passphrase")
app.add_typer(retention.app, name="retention")
app.add_typer(keys.key_app, name="key")
app.add_typer(keys.cert_app, name="cert")
app.command("backup")(backup.backup)
app.command("restore")(backup.restore)
app.add_typer(catalog.app, name="catalog")
app.add_typer(lorawan.app, name="lorawan")


def _version(value: bool) -> None:
    if value:
        console.print(f"smartregion {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = None,
) -> None:
    pass


@app.command()
def init(
    data_dir: DataDir,
    municipality: Annotated[str, typer.Option(help="Kommunenummer (1103) or name (Stavanger).")],
    host: Annotated[list[str], typer.Option(help="Extra DNS name or IP for the TLS certificate (repeatable).")] = [],  # noqa: B006 -- typer copies defaults
    listen_host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    advertise_host: Annotated[str | None, typer.Option(help="Address sensors and peers dial (default: the listen address).")] = None,
    grpc_port: Annotated[int, typer.Option(min=0, max=65535)] = hubdir.DEFAULT_GRPC_PORT,
    http_port: Annotated[int, typer.Option(min=0, max=65535)] = hubdir.DEFAULT_HTTP_PORT,
    exist_ok: Annotated[bool, typer.Option(
        "--exist-ok", help="Succeed without changes if the directory already holds a hub (for containers).")] = False,
) -> None:
    """Create a hub for a municipality: keys, TLS certificate, admin credential, storage."""
    with user_errors():
        found = names.municipality(municipality)
        if hubdir.HubDir(data_dir).exists:
            if exist_ok:
                console.print(f"{data_dir} already holds hub {hubdir.HubDir(data_dir).config().hub_id}; leaving it as it is")
                return
            raise fail(f"{data_dir} already holds a hub; refusing to overwrite it")
        secret = passphrase(confirm=True)
        network = hubdir.NetworkConfig(
            listen_host=listen_host,
            advertise_host=advertise_host or (listen_host if listen_host not in ("0.0.0.0", "::") else "127.0.0.1"),
            grpc_port=grpc_port,
            http_port=http_port,
        )
        config, _ = hubdir.init_hub(data_dir, found.number, secret, hostnames=tuple(host), network=network)
    console.print(f"Created hub {config.hub_id} for {found.name} ({found.number}) in {data_dir}")
    console.print(f"Start it with: smartregion serve --data-dir {data_dir}")


@app.command()
def serve(
    data_dir: DataDir,
    grpc_port: Annotated[int | None, typer.Option(min=0, max=65535, help="gRPC port (default from hub.toml; 0 picks a free one).")] = None,
    http_port: Annotated[int | None, typer.Option(min=0, max=65535, help="HTTP port (default from hub.toml; 0 picks a free one).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default from hub.toml).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Serve plaintext, without TLS. For local experiments only.")] = False,
    dashboard_read_only: Annotated[bool, typer.Option(
        "--dashboard-read-only",
        help="Show the dashboard without logging in (it is read-only; use on trusted networks).")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the hub (gRPC and HTTP) until SIGTERM or Ctrl-C."""
    from node.app.server import serve_forever
    from node.hub import Hub

    logs.configure(log_level.upper())
    with user_errors():
        hub = Hub.open(data_dir, passphrase())
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how an operator stops a foreground hub
            asyncio.run(serve_forever(hub, host=host, grpc_port=grpc_port, http_port=http_port, insecure=insecure,
                                      dashboard_read_only=dashboard_read_only))


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M") if ms else "-"


@app.command()
def status(data_dir: DataDir, json_output: JsonFlag = False) -> None:
    """Show the running hub: identity, sensors, and readings per dataset and metric."""
    with user_errors(), AdminClient(data_dir) as client:
        st = client.call("GetStatus", admin_pb2.GetStatusRequest())
    if json_output:
        doc = MessageToDict(st, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        doc.pop("tls_certificate_pem", None)
        print_json(doc)
        return
    console.print(f"Hub {st.hub_id} — {st.municipality_name} ({st.municipality_number}), smartregion {st.version}")
    console.print(f"gRPC {st.endpoint.grpc_address}   HTTP {st.endpoint.http_url}   TLS {'on' if st.endpoint.tls else 'OFF'}")
    console.print(f"Sensors: {st.sensors_active} active ({st.sensors_active - st.sensors_network_decrypted} end-to-end, "
                  f"{st.sensors_network_decrypted} readable by their network server), {st.sensors_revoked} revoked")
    table = Table("dataset", "metric", "readings", "first", "last")
    for c in st.counts:
        table.add_row(c.dataset, c.metric, f"{c.readings:,}", _when(c.first_time_ms), _when(c.last_time_ms))
    console.print(table)
    if st.rejections_by_reason:
        console.print("Rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(st.rejections_by_reason.items())))


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo keeps its hubs' data directories.")] = Path("demo-region"),
    exit_after: Annotated[bool, typer.Option("--exit", help="Stop after the walk-through instead of running until Ctrl-C.")] = False,
) -> None:
    """Run a region of five municipalities' hubs with real data, agreements and a federated query."""
    from node.app.demo import run_demo

    with user_errors():
        run_demo(directory, keep_running=not exit_after)


if __name__ == "__main__":
    app()
