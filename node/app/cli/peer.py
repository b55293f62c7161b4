"""`smartregion peer ...`: the hubs this hub trusts, each pinned by hub id."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from federation.peers import STATE_TEXT, WAITING_FOR_PIN
from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, JsonFlag, console, print_json, user_errors
from node.app.cli.names import resolve_id
from node.app.cli.views import as_dict, when
from node.client import AdminClient

app = typer.Typer(help="Peer hubs: add (pinned by hub id), list, remove.", no_args_is_help=True)


@app.command("add")
def add(
    data_dir: DataDir,
    address: Annotated[str, typer.Option(help="HOST:PORT of the peer's gRPC server.")],
    hub_id: Annotated[str, typer.Option(help="The peer's hub id, obtained from its admin out of band (the pin).")],
    json_output: JsonFlag = False,
) -> None:
    """Fetch a hub's signed descriptor, check it against the pinned hub id, and trust it."""
    with user_errors(), AdminClient(data_dir) as client:
        peer = client.call("AddPeer", admin_pb2.AddPeerRequest(address=address, hub_id=hub_id))
        own = client.call("GetStatus", admin_pb2.GetStatusRequest())
    if json_output:
        print_json(as_dict(peer))
        return
    console.print(f"Peered with hub {peer.hub_id} — {peer.municipality_name} ({peer.municipality_number}) at {peer.grpc_address}")
    if peer.state == WAITING_FOR_PIN:
        console.print(f"{peer.municipality_name} has not pinned this hub yet, so it refuses our calls. Its admin must run:")
        console.print(f"  smartregion peer add --data-dir DATA_DIR --address {own.endpoint.grpc_address} --hub-id {own.hub_id}")
        console.print("`smartregion peer list` shows 'waiting for them to pin us' until then.")
    elif peer.state == "reachable":
        console.print(f"{peer.municipality_name} has pinned this hub too: the two hubs federate.")
    else:
        console.print(f"{peer.municipality_name} could not be called just now ({peer.state}); the hub keeps trying. "
                      f"Its admin must also pin this hub: --address {own.endpoint.grpc_address} --hub-id {own.hub_id}")


@app.command("list")
def list_peers(
    data_dir: DataDir,
    all_: Annotated[bool, typer.Option("--all", help="Include removed peers.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Each peer's state and last contact."""
    with user_errors(), AdminClient(data_dir) as client:
        response = client.call("ListPeers", admin_pb2.ListPeersRequest(include_removed=all_))
    if json_output:
        print_json([as_dict(p) for p in response.peers])
        return
    table = Table("hub id", "municipality", "address", "state", "last contact", "latency", "pending", "last error")
    for p in response.peers:
        table.add_row(p.hub_id, f"{p.municipality_name} ({p.municipality_number})", p.grpc_address, STATE_TEXT.get(p.state, p.state),
                      when(p.last_contact_ms), f"{p.latency_ms:.1f} ms" if p.latency_ms else "-",
                      str(p.pending_deliveries), p.last_error or "")
    console.print(table)


@app.command("remove")
def remove(data_dir: DataDir, hub_id: Annotated[str, typer.Argument(help="The peer's hub id, or a unique prefix.")]) -> None:
    """Stop trusting a peer: its calls are refused from now on."""
    with user_errors(), AdminClient(data_dir) as client:
        hub_id = resolve_id("peer", hub_id, (p.hub_id for p in client.call("ListPeers", admin_pb2.ListPeersRequest()).peers))
        peer = client.call("RemovePeer", admin_pb2.RemovePeerRequest(hub_id=hub_id))
    console.print(f"Removed peer {peer.hub_id}")
