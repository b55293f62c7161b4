"""`smartregion demo`: a hub for Stavanger, the Valand station enrolled as a sensor with its
own key, and a month of its real readings sealed and ingested. Later issues grow this into
a region of five federated hubs."""

from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from node import hubdir
from node.api.v1 import admin_pb2
from node.client import AdminClient
from node.fileio import write_private_file
from node.launcher import HubProcess
from node.sensor_client import Sensor, SensorCredential, read_station_csv, replay

DEMO_MARKER = ".smartregion-demo"
# Demo hubs only: a real hub's passphrase comes from its operator (docs/operations.md).
DEMO_PASSPHRASE = "demo-passphrase-not-for-production"
console = Console()


def station_csv(name: str) -> Path:
    return Path(str(resources.files("node.data").joinpath("air-quality-norway", name)))


def _fresh_directory(directory: Path) -> None:
    if directory.exists():
        if not (directory / DEMO_MARKER).exists():
            raise FileExistsError(f"{directory} exists and was not made by the demo; choose another --dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / DEMO_MARKER).write_text("made by `smartregion demo`; deleted and re-made by the next run\n")


def run_demo(directory: Path, keep_running: bool) -> None:
    import datetime as dt

    _fresh_directory(directory)
    data_dir = directory / "stavanger"
    config, _ = hubdir.init_hub(data_dir, "1103", DEMO_PASSPHRASE.encode())
    console.print(f"[bold]1.[/] Created hub {config.hub_id} for Stavanger (1103) in {data_dir}")
    hub = HubProcess(data_dir, DEMO_PASSPHRASE).start()
    try:
        console.print(f"[bold]2.[/] Hub serving gRPC on {hub.endpoint['grpc_address']}, HTTP on {hub.endpoint['http_url']} (TLS)")
        credential_path = directory / "valand.credential.json"
        with AdminClient(data_dir) as admin:
            response = admin.call(
                "AddSensor",
                admin_pb2.AddSensorRequest(
                    dataset="air_quality", metrics=["pm25", "temperature", "wind_speed", "rain"],
                    latitude=58.9700, longitude=5.7331, label="Valand",
                ),
            )
        write_private_file(credential_path, response.credential_json)
        console.print(f"[bold]3.[/] Enrolled the Valand station as sensor {response.sensor.sensor_id}; credential in {credential_path}")
        credential = SensorCredential.load(credential_path)
        readings = list(read_station_csv(station_csv("Valand.csv"), credential.metrics, since=dt.date(2019, 1, 1), until=dt.date(2019, 2, 1)))
        with Progress(TextColumn("[bold]4.[/] Replaying Valand.csv, January 2019"), BarColumn(), MofNCompleteColumn(), console=console) as progress:
            task = progress.add_task("replay", total=len(readings))
            summary = replay(Sensor(credential), readings, progress=lambda n: progress.advance(task, n))
        console.print(f"   {summary.readings_stored} readings sealed with the sensor's own key and stored ({summary.frames} frames)")
        with AdminClient(data_dir) as admin:
            status = admin.call("GetStatus", admin_pb2.GetStatusRequest())
        console.print("[bold]5.[/] Hub status:")
        for c in status.counts:
            console.print(f"   {c.dataset}/{c.metric}: {c.readings} readings")
        console.print(f"\nTry: smartregion status --data-dir {data_dir}   (the hub keeps its data in {data_dir})")
        if keep_running:
            console.print("The hub keeps running; press Ctrl-C to stop it.")
            try:
                while hub.process.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
    finally:
        hub.stop()
        console.print("Hub stopped.")
