"""The demo's LoRaWAN station: a weather monitor beside Knarrdalstranda in Porsgrunn whose
uplinks cross a regional LoRaWAN network (ChirpStack's MQTT integration, here a Mosquitto on
this machine) that cannot read them: the network forwards the encrypted FRMPayload with the
AppSKey in a key envelope under the join server's KEK, which only the Porsgrunn hub holds."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from node.api.v1 import admin_pb2
from node.app import network_replay, region
from node.app.broker import Mosquitto
from node.app.sensor_client import read_station_csv

METRICS = ["temperature", "wind_speed"]  # not PM2.5: the partner's PM2.5 answer stays the station's own
CODEC = "weather-lpp"
KEK_LABEL = "join-server-telemark"
DEV_EUI = "70b3d57ed005e001"
APPLICATION_ID = "porsgrunn-air"
MONTH = ("2019-12-01", "2020-01-01")


@dataclass
class LorawanStation:
    broker: Mosquitto
    hub: region.RegionHub
    kek: bytes

    def stop(self) -> None:
        self.broker.stop()


def prepare(directory: Path, hub: region.RegionHub) -> LorawanStation:
    """Start the broker and configure the hub's ChirpStack subscription (before the hub starts)."""
    broker = Mosquitto(directory / "lorawan-broker").start()
    (hub.data_dir / "networks.toml").write_text(
        network_replay.lpp_codec_toml(CODEC, METRICS)
        + f'\n[[mqtt]]\nname = "regional-lorawan"\nformat = "chirpstack"\nhost = "127.0.0.1"\nport = {broker.port}\ntls = false\n'
        f'topics = ["application/{APPLICATION_ID}/device/+/event/up"]\nbackoff_initial_seconds = 0.1\nbackoff_max_seconds = 2.0\n'
    )
    return LorawanStation(broker, hub, secrets.token_bytes(16))


def run(station: LorawanStation, say) -> tuple[int, str]:
    """Enrol the device, publish a month of uplinks as ChirpStack would, wait until the hub
    stored them; return (readings stored, what the network saw of the first uplink)."""
    hub = station.hub
    with hub.admin() as admin:
        admin.call("AddLorawanKek", admin_pb2.AddLorawanKekRequest(label=KEK_LABEL, kek=station.kek))
        response = admin.call("AddSensor", admin_pb2.AddSensorRequest(
            dataset="air_quality", metrics=METRICS, latitude=hub.station.lat, longitude=hub.station.lon,
            label=f"{hub.station.name} LoRaWAN weather", lorawan_dev_eui=DEV_EUI, confidentiality="end-to-end", codec=CODEC))
    sensor_id = response.sensor.sensor_id
    since, until = (dt.date.fromisoformat(d) for d in MONTH)
    readings = list(read_station_csv(region.station_csv(hub.station), METRICS, since, until))
    device = network_replay.LorawanDevice(DEV_EUI, bytes.fromhex("26011bda"), secrets.token_bytes(16), KEK_LABEL, station.kek,
                                          APPLICATION_ID)
    messages = list(network_replay.lorawan_messages("chirpstack", device, readings, METRICS))
    first = json.loads(messages[0][1])
    seen = base64.b64decode(first["data"]).hex()
    say(f"   {len(messages)} uplinks through the network's MQTT broker (127.0.0.1:{station.broker.port}); "
        f"the network sees FRMPayload {seen} and a wrapped AppSKey")
    asyncio.run(network_replay.publish("127.0.0.1", station.broker.port, messages, client_id="demo-chirpstack"))

    def stored() -> bool:
        with hub.admin() as admin:
            sensors = admin.call("ListSensors", admin_pb2.ListSensorsRequest()).sensors
        return any(s.sensor_id == sensor_id and s.readings >= len(readings) for s in sensors)

    region.wait_until(stored, "the LoRaWAN station's readings", timeout=120)
    return len(readings), seen
