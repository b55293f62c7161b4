"""`smartregion sensor ...`: enrol, list, revoke, and replay collection points."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.json_format import MessageToDict
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, JsonFlag, console, fail, print_json, user_errors
from node.app.sensor_client import Sensor, SensorCredential, read_station_csv, replay
from node.client import AdminClient
from node.fileio import write_private_file

app = typer.Typer(help="Enrol, list, revoke and replay sensors (collection points).", no_args_is_help=True)


def _ms(value: int) -> str:
    if not value:
        return "-"
    return dt.datetime.fromtimestamp(value / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def parse_location(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected LAT,LON such as 58.97,5.73; got {text!r}") from None
    return lat, lon


@app.command("add")
def add(
    data_dir: DataDir,
    dataset: Annotated[str, typer.Option(help="Dataset the sensor feeds, e.g. air_quality.")],
    metrics: Annotated[str, typer.Option(help="Comma-separated metrics, e.g. pm25,temperature.")],
    location: Annotated[str, typer.Option(help="LAT,LON of the collection point.")],
    out: Annotated[Path, typer.Option(help="Where to write the sensor's credential file (0600).")],
    subject: Annotated[str, typer.Option(help="Data subject id (required for personal datasets).")] = "",
    label: Annotated[str, typer.Option(help="A human name for the sensor, e.g. the station.")] = "",
    force: Annotated[bool, typer.Option(help="Overwrite an existing credential file.")] = False,
    request_id: Annotated[str, typer.Option(
        help="Makes a retry safe: the same command with the same id returns the same sensor and credential.")] = "",
    json_output: JsonFlag = False,
) -> None:
    """Enrol a sensor with its own 256-bit key and write its credential file."""
    lat, lon = parse_location(location)
    if out.exists() and not force:
        raise fail(f"{out} exists; refusing to overwrite a credential (use --force)")
    if not out.parent.is_dir():  # check before enrolling: the credential is the key's only copy
        raise fail(f"{out.parent} is not a directory; cannot write the credential there")
    with user_errors(), AdminClient(data_dir) as client:
        response = client.call(
            "AddSensor",
            admin_pb2.AddSensorRequest(
                dataset=dataset, metrics=metrics.split(","), latitude=lat, longitude=lon, subject_id=subject, label=label,
                request_id=request_id,
            ),
        )
        write_private_file(out, response.credential_json)
    if json_output:
        print_json({"sensor": MessageToDict(response.sensor, preserving_proto_field_name=True), "credential": str(out)})
    else:
        console.print(f"Enrolled sensor {response.sensor.sensor_id} ({dataset}: {', '.join(response.sensor.metrics)})")
        console.print(f"Credential written to {out} (keep it secret: it holds the sensor's key)")


@app.command("list")
def list_sensors(
    data_dir: DataDir,
    all_: Annotated[bool, typer.Option("--all", help="Include revoked sensors.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """List the hub's sensors."""
    with user_errors(), AdminClient(data_dir) as client:
        response = client.call("ListSensors", admin_pb2.ListSensorsRequest(include_revoked=all_))
    if json_output:
        print_json([MessageToDict(s, preserving_proto_field_name=True) for s in response.sensors])
        return
    table = Table("sensor id", "label", "dataset", "metrics", "readings", "last seen", "rejected", "state")
    for s in response.sensors:
        state = f"revoked {_ms(s.revoked_at_ms)}" if s.revoked_at_ms else "active"
        table.add_row(s.sensor_id, s.label, s.dataset, ",".join(s.metrics), str(s.readings), _ms(s.last_seen_ms), str(s.frames_rejected), state)
    console.print(table)


@app.command("revoke")
def revoke(data_dir: DataDir, sensor_id: Annotated[str, typer.Argument(help="The sensor's id (32 hex digits).")]) -> None:
    """Revoke a sensor: its frames are refused from now on."""
    with user_errors(), AdminClient(data_dir) as client:
        sensor = client.call("RevokeSensor", admin_pb2.RevokeSensorRequest(sensor_id=sensor_id))
    console.print(f"Revoked sensor {sensor.sensor_id} at {_ms(sensor.revoked_at_ms)}")


def _date(value: str | None, name: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{name} must be a date like 2019-01-31, got {value!r}") from None


@app.command("replay")
def replay_csv(
    credential: Annotated[Path, typer.Option(help="The sensor's credential file.")],
    csv: Annotated[Path, typer.Option(help="A station CSV (date,time,pm25,temperature,windSpeed,rain,...).")],
    since: Annotated[str | None, typer.Option(help="First date to send (YYYY-MM-DD, UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Send dates before this one (YYYY-MM-DD).")] = None,
    frame_size: Annotated[int, typer.Option(min=1, max=5000, help="Readings per sealed frame.")] = 500,
    json_output: JsonFlag = False,
) -> None:
    """Seal a CSV's readings as this sensor and send them to its hub."""
    with user_errors():
        cred = SensorCredential.load(credential)
        readings = list(read_station_csv(csv, cred.metrics, _date(since, "--since"), _date(until, "--until")))
        if not readings:
            raise fail(f"{csv} holds no readings of {', '.join(cred.metrics)} in the chosen dates")
        with Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, disable=json_output, transient=False,
        ) as progress:
            task = progress.add_task(f"replaying {csv.name}", total=len(readings))
            summary = replay(Sensor(cred), readings, readings_per_frame=frame_size, progress=lambda n: progress.advance(task, n))
    rate = summary.readings_sent / summary.seconds if summary.seconds else 0.0
    result = {
        "sensor_id": cred.sensor_id,
        "frames": summary.frames,
        "readings_sent": summary.readings_sent,
        "readings_stored": summary.readings_stored,
        "readings_duplicate": summary.readings_duplicate,
        "retries": summary.retries,
        "seconds": round(summary.seconds, 3),
        "readings_per_second": round(rate),
    }
    if json_output:
        print_json(result)
    else:
        console.print(
            f"Sent {summary.readings_sent} readings in {summary.frames} frames in {summary.seconds:.1f}s ({rate:,.0f}/s): "
            f"{summary.readings_stored} stored, {summary.readings_duplicate} already there."
        )
