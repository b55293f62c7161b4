"""`smartregion sensor ...`: enrol, list, rekey, revoke, and replay collection points."""

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
from node.app.cli.names import resolve_id
from node.app.sensor_client import Sensor, SensorCredential, read_station_csv, replay
from node.client import AdminClient
from node.fileio import write_private_file
from node.senml import Reading
from node.sensors import DEFAULT_OLD_KEY_GRACE_S, MAX_OLD_KEY_GRACE_S

app = typer.Typer(help="Enrol, list, rekey, revoke and replay sensors (collection points).", no_args_is_help=True)


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
    lorawan_dev_eui: Annotated[str, typer.Option(help="Reached through a LoRaWAN network server: the device's DevEUI (16 hex).")] = "",
    lorawan_app_s_key_file: Annotated[
        Path | None, typer.Option(help="A file holding the device's AppSKey (32 hex); the hub keeps it wrapped. "
                                       "Leave out when the join server sends it in key envelopes.")
    ] = None,
    confidentiality: Annotated[str, typer.Option(help="LoRaWAN: end-to-end (the hub decrypts) or network-decrypted.")] = "end-to-end",
    codec: Annotated[str, typer.Option(help="LoRaWAN: payload codec from networks.toml (json, or one you define).")] = "",
    request_id: Annotated[str, typer.Option(
        help="Makes a retry safe: the same command with the same id returns the same sensor and credential.")] = "",
    json_output: JsonFlag = False,
) -> None:
    """Enrol a sensor with its own 256-bit key and write its credential file (for a LoRaWAN
    device: enrol its DevEUI; docs/integrations.md)."""
    lat, lon = parse_location(location)
    if out.exists() and not force:
        raise fail(f"{out} exists; refusing to overwrite a credential (use --force)")
    if not out.parent.is_dir():  # check before enrolling: the credential is the key's only copy
        raise fail(f"{out.parent} is not a directory; cannot write the credential there")
    with user_errors(), AdminClient(data_dir) as client:
        app_s_key = lorawan_app_s_key_file.read_text(encoding="utf-8").strip() if lorawan_app_s_key_file else ""
        response = client.call(
            "AddSensor",
            admin_pb2.AddSensorRequest(
                dataset=dataset, metrics=metrics.split(","), latitude=lat, longitude=lon, subject_id=subject, label=label,
                lorawan_dev_eui=lorawan_dev_eui, lorawan_app_s_key=app_s_key, confidentiality=confidentiality, codec=codec,
                request_id=request_id,
            ),
        )
        write_private_file(out, response.credential_json)
    if json_output:
        print_json({"sensor": MessageToDict(response.sensor, preserving_proto_field_name=True), "credential": str(out)})
    else:
        console.print(f"Enrolled sensor {response.sensor.sensor_id} ({dataset}: {', '.join(response.sensor.metrics)})")
        if response.sensor.lorawan_dev_eui:
            console.print(f"LoRaWAN DevEUI {response.sensor.lorawan_dev_eui}, {response.sensor.confidentiality}")
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
    table = Table("sensor id", "label", "dataset", "metrics", "confidentiality", "readings", "last seen", "rejected", "state")
    for s in response.sensors:
        state = f"revoked {_ms(s.revoked_at_ms)}" if s.revoked_at_ms else "active"
        via = f"{s.confidentiality} (LoRaWAN {s.lorawan_dev_eui})" if s.lorawan_dev_eui else s.confidentiality
        table.add_row(s.sensor_id, s.label, s.dataset, ",".join(s.metrics), via, str(s.readings), _ms(s.last_seen_ms),
                      str(s.frames_rejected), state)
    console.print(table)


@app.command("revoke")
def revoke(
    data_dir: DataDir,
    sensor_id: Annotated[str, typer.Argument(help="The sensor's id (32 hex digits), or a unique prefix.")],
) -> None:
    """Revoke a sensor: its frames are refused from now on."""
    with user_errors(), AdminClient(data_dir) as client:
        listed = client.call("ListSensors", admin_pb2.ListSensorsRequest(include_revoked=True)).sensors
        sensor_id = resolve_id("sensor", sensor_id, (s.sensor_id for s in listed), hex_only=True) if listed else sensor_id
        sensor = client.call("RevokeSensor", admin_pb2.RevokeSensorRequest(sensor_id=sensor_id))
    console.print(f"Revoked sensor {sensor.sensor_id} at {_ms(sensor.revoked_at_ms)}")


@app.command("rekey")
def rekey(
    data_dir: DataDir,
    sensor_id: Annotated[str, typer.Argument(help="The sensor's id (32 hex digits), or a unique prefix.")],
    out: Annotated[Path, typer.Option(help="Where to write the sensor's new credential file (0600).")],
    old_key_hours: Annotated[int, typer.Option(
        min=0, max=MAX_OLD_KEY_GRACE_S // 3600,
        help="Frames under the old key stay accepted this long, unless the sensor sends under the new key first "
             "(0: refuse them at once, for a leaked key).")] = DEFAULT_OLD_KEY_GRACE_S // 3600,
    force: Annotated[bool, typer.Option(help="Overwrite an existing credential file.")] = False,
    request_id: Annotated[str, typer.Option(
        help="Makes a retry safe: the same command with the same id returns the same new credential.")] = "",
    json_output: JsonFlag = False,
) -> None:
    """Give a sensor a new key under the same id and write its new credential; its history and
    counter go on (docs/operations.md, "Rekeying a sensor")."""
    if out.exists() and not force:
        raise fail(f"{out} exists; refusing to overwrite a credential (use --force)")
    if not out.parent.is_dir():  # check before rekeying: the credential is the new key's only copy
        raise fail(f"{out.parent} is not a directory; cannot write the credential there")
    with user_errors(), AdminClient(data_dir) as client:
        listed = client.call("ListSensors", admin_pb2.ListSensorsRequest(include_revoked=True)).sensors
        sensor_id = resolve_id("sensor", sensor_id, (s.sensor_id for s in listed), hex_only=True) if listed else sensor_id
        response = client.call("RekeySensor", admin_pb2.RekeySensorRequest(
            sensor_id=sensor_id, request_id=request_id, old_key_grace_seconds=old_key_hours * 3600))
        write_private_file(out, response.credential_json)
    sensor = response.sensor
    if json_output:
        print_json({"sensor": MessageToDict(sensor, preserving_proto_field_name=True), "credential": str(out)})
        return
    console.print(f"Rekeyed sensor {sensor.sensor_id}; its new credential is in {out} (keep it secret: it holds the new key)")
    if sensor.old_key_until_ms > sensor.rekeyed_at_ms:
        console.print(f"Frames under the old key are accepted until {_ms(sensor.old_key_until_ms)} "
                      "or the first frame under the new key, whichever comes first.")
    else:
        console.print("Frames under the old key are refused from now on.")


@app.command("credential")
def credential(
    data_dir: DataDir,
    sensor_id: Annotated[str, typer.Argument(help="The sensor's id (32 hex digits), or a unique prefix.")],
    out: Annotated[Path, typer.Option(help="Where to write the sensor's credential file (0600).")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing credential file.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Write a sensor's credential file again, with the same key (no rekey) and the hub's TLS
    issuer as its trust root: once for each sensor enrolled before the hub had an issuer
    (docs/operations.md, "Renewing the TLS certificate")."""
    if out.exists() and not force:
        raise fail(f"{out} exists; refusing to overwrite a credential (use --force)")
    if not out.parent.is_dir():
        raise fail(f"{out.parent} is not a directory; cannot write the credential there")
    with user_errors(), AdminClient(data_dir) as client:
        listed = client.call("ListSensors", admin_pb2.ListSensorsRequest(include_revoked=True)).sensors
        sensor_id = resolve_id("sensor", sensor_id, (s.sensor_id for s in listed), hex_only=True) if listed else sensor_id
        response = client.call("ReissueCredential", admin_pb2.ReissueCredentialRequest(sensor_id=sensor_id))
        write_private_file(out, response.credential_json)
    sensor = response.sensor
    if json_output:
        print_json({"sensor": MessageToDict(sensor, preserving_proto_field_name=True), "credential": str(out)})
        return
    console.print(f"Wrote the credential of sensor {sensor.sensor_id} again to {out}, with its same key "
                  "(keep it secret); install it on the sensor in place of the old one.")


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
    via: Annotated[str, typer.Option(help="hub (direct), or publish as a network would: chirpstack, tts, span, mqtt.")] = "hub",
    broker: Annotated[str, typer.Option(help="With --via: the MQTT broker, HOST:PORT.")] = "127.0.0.1:1883",
    lorawan_dev_eui: Annotated[str, typer.Option(help="chirpstack/tts: the device's DevEUI.")] = "",
    lorawan_dev_addr: Annotated[str, typer.Option(help="chirpstack/tts: the session's DevAddr (8 hex).")] = "26011bda",
    lorawan_app_s_key_file: Annotated[Path | None, typer.Option(help="chirpstack/tts: file with the AppSKey (32 hex).")] = None,
    kek_label: Annotated[str, typer.Option(help="chirpstack/tts: send the AppSKey in a key envelope under this join-server KEK.")] = "",
    kek_file: Annotated[Path | None, typer.Option(help="With --kek-label: file with the KEK (hex).")] = None,
    application_id: Annotated[str, typer.Option(help="chirpstack/tts: the network's application id.")] = "smartregion",
    json_output: JsonFlag = False,
) -> None:
    """Seal a CSV's readings as this sensor and send them to its hub, or (--via) publish them
    through an MQTT broker as ChirpStack, The Things Stack, Span or a gateway would."""
    with user_errors():
        cred = SensorCredential.load(credential)
        readings = list(read_station_csv(csv, cred.metrics, _date(since, "--since"), _date(until, "--until")))
        if not readings:
            raise fail(f"{csv} holds no readings of {', '.join(cred.metrics)} in the chosen dates")
        if via != "hub":
            _replay_via(via, broker, cred, readings, frame_size, lorawan_dev_eui, lorawan_dev_addr, lorawan_app_s_key_file,
                        kek_label, kek_file, application_id, json_output)
            return
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


def _hex_file(path: Path | None, what: str) -> bytes:
    if path is None:
        raise fail(f"give {what}")
    try:
        return bytes.fromhex(path.read_text(encoding="utf-8").strip())
    except ValueError:
        raise fail(f"{path} does not hold hex digits") from None


def _replay_via(via: str, broker: str, cred: SensorCredential, readings: list[Reading], frame_size: int, dev_eui: str, dev_addr: str,
                app_s_key_file: Path | None, kek_label: str, kek_file: Path | None, application_id: str, json_output: bool) -> None:
    import asyncio

    import aiomqtt

    from node.app import network_replay
    from node.networks import lorawan

    if via not in network_replay.VIAS:
        raise fail(f"--via is one of hub, {', '.join(network_replay.VIAS)}")
    host, _, port_text = broker.rpartition(":")
    if not host or not port_text.isdigit():
        raise fail(f"--broker is HOST:PORT, got {broker!r}")
    if via in ("chirpstack", "tts"):
        try:
            device = network_replay.LorawanDevice(
                lorawan.normalise_eui(dev_eui), lorawan.parse_dev_addr(dev_addr), _hex_file(app_s_key_file, "--lorawan-app-s-key-file"),
                kek_label, _hex_file(kek_file, "--kek-file") if kek_label else b"", application_id)
            messages = list(network_replay.lorawan_messages(via, device, readings, cred.metrics))
        except (lorawan.LorawanError, network_replay.ReplayError) as exc:
            raise fail(str(exc)) from None
    else:
        batches = [readings[i : i + frame_size] for i in range(0, len(readings), frame_size)]
        messages = list(network_replay.frame_messages(via, Sensor(cred).seal(batches), cred.sensor_id))
    try:
        summary = asyncio.run(network_replay.publish(host, int(port_text), messages, client_id=f"replay-{cred.sensor_id[:12]}-{via}"))
    except aiomqtt.MqttError as exc:
        raise fail(f"the broker {broker} failed: {exc}") from None
    result = {"sensor_id": cred.sensor_id, "via": via, "messages": summary.messages, "readings_sent": len(readings),
              "seconds": round(summary.seconds, 3)}
    if json_output:
        print_json(result)
    else:
        console.print(f"Published {len(readings)} readings in {summary.messages} {via} messages to {broker} in {summary.seconds:.1f}s "
                      "(each acknowledged by the broker; the hub acknowledges only what it committed).")
