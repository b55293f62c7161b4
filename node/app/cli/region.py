"""`smartregion region setup`: the demo's region set-up against hubs that are already running
(the compose job uses it): enrol, replay, peer, sign — with every hub's admin credential."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from federation import partners
from node.app import region
from node.app.cli.common import console, fail, passphrase, user_errors
from node.hubdir import HubDir

app = typer.Typer(help="Set up a demo region of running hubs.", no_args_is_help=True)


@app.command("setup")
def setup(
    hub: Annotated[list[Path], typer.Option("--hub", help="A running hub's data directory (repeat for each hub).")],
    work_dir: Annotated[Path, typer.Option(help="Where credentials and the partner's key are written.")],
    partner_name: Annotated[str, typer.Option(help="The research partner's name.")] = "Universitetet i Stavanger",
    partner_org_number: Annotated[str, typer.Option(help="Its organisation number.")] = "971564679",
) -> None:
    """Enrol each hub's station, replay 2019, peer all hubs, sign hub and partner agreements."""
    with user_errors():
        hubs = []
        for data_dir in hub:
            config = HubDir(data_dir).config()
            endpoint = HubDir(data_dir).endpoint()
            try:
                station = region.station_for(config.municipality)
            except ValueError as exc:
                raise fail(str(exc)) from None
            hubs.append(region.RegionHub(station, data_dir, config.hub_id, endpoint["grpc_address"]))
        work_dir.mkdir(parents=True, exist_ok=True)
        key_file = work_dir / "partner.key"
        key = partners.load_private(key_file, passphrase()) if key_file.exists() else partners.keygen(key_file, partner_name, passphrase())
        region.setup_region(hubs, work_dir, region.Partner(key, key_file, partner_name, partner_org_number), ConsoleSteps())
    console.print(f"Region set up: {len(hubs)} hubs, partner {key.partner_id} (key in {key_file})")


class ConsoleSteps(region.Steps):
    def step(self, text: str) -> None:
        console.print(f"- {text}")
