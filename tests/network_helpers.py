"""Real components for the network-door tests: Debian's Mosquitto on a free loopback port,
the independent LoRaWAN encoder (npm lora-packet, tests/lorawan_encoder), and network-server
messages shaped as ChirpStack v4 and The Things Stack send them."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from node.app import broker

REPO_ROOT = Path(__file__).resolve().parents[1]
ENCODER_DIR = REPO_ROOT / "tests" / "lorawan_encoder"


class Mosquitto(broker.Mosquitto):
    """The project's broker runner; a test without Debian's mosquitto is skipped, not failed."""

    def __init__(self, directory: Path, listener_options: str = "", anonymous: bool = True) -> None:
        if broker.mosquitto_binary() is None:
            pytest.skip("Debian's mosquitto is not installed (make test installs it)")
        super().__init__(directory, listener_options=listener_options, anonymous=anonymous)


class LoraEncoder:
    """lora-packet (npm), driven line by line through tests/lorawan_encoder/encode.js."""

    def __init__(self) -> None:
        if shutil.which("node") is None:
            pytest.skip("node is not installed")
        if not (ENCODER_DIR / "node_modules" / "lora-packet").exists():
            subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                           cwd=ENCODER_DIR, check=True, timeout=300)
        self.process = subprocess.Popen(["node", str(ENCODER_DIR / "encode.js")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def encrypt(self, *, dev_addr: str, fcnt: int, payload: bytes, app_s_key: str, fport: int = 1,
                nwk_s_key: str = "44024241ed4ce9a68c6a8bc055233fd3") -> bytes:
        """The FRMPayload lora-packet produces for these fields."""
        assert self.process.stdin and self.process.stdout
        request = {"dev_addr": dev_addr, "fcnt": fcnt, "fport": fport, "payload": payload.hex(), "app_s_key": app_s_key,
                   "nwk_s_key": nwk_s_key}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return bytes.fromhex(json.loads(self.process.stdout.readline())["frm_payload"])

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=10)


def rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def chirpstack_up(dev_eui: str, fcnt: int, data: bytes, time_ms: int, *, dev_addr: str = "", key_envelope: tuple | None = None,
                  obj: dict | None = None, application_id: str = "app1") -> dict:
    """An `up` event as ChirpStack v4's JSON marshaler writes it (protobuf JSON mapping)."""
    event = {
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": rfc3339(time_ms),
        "deviceInfo": {"tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "Kommune",
                       "applicationId": application_id, "applicationName": "air", "deviceProfileId": "cb3a7d4a",
                       "deviceProfileName": "air-lpp", "deviceName": "station", "devEui": dev_eui, "tags": {}},
        "devAddr": dev_addr, "adr": True, "dr": 5, "fCnt": fcnt, "fPort": 1, "confirmed": False,
        "data": base64.b64encode(data).decode(),
        "rxInfo": [{"gatewayId": "0016c001ff10a235", "uplinkId": 4217106255, "rssi": -36, "snr": 10.5, "channel": 2,
                    "location": {}, "context": "EFwMtA==", "metadata": {"region_config_id": "eu868"}, "crcStatus": "CRC_OK"}],
        "txInfo": {"frequency": 868500000, "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7,
                                                                     "codeRate": "CR_4_5"}}},
    }
    if obj is not None:
        event["object"] = obj
    if key_envelope is not None:
        label, wrapped, *session = key_envelope
        event["joinServerContext"] = {"sessionKeyId": session[0] if session else "",
                                      "appSKey": {"kekLabel": label, "aesKey": base64.b64encode(wrapped).decode()}}
    return event


def tts_up(dev_eui: str, fcnt: int, frm_payload: bytes, time_ms: int, *, dev_addr: str = "", key_envelope: tuple[str, bytes] | None = None,
           decoded: dict | None = None) -> dict:
    """An uplink as The Things Stack v3 sends it (webhook body, MQTT message)."""
    up: dict = {"session_key_id": "AXBSH1Pk6Z0G166...", "f_port": 1, "f_cnt": fcnt,
                "frm_payload": base64.b64encode(frm_payload).decode(),
                "rx_metadata": [{"gateway_ids": {"gateway_id": "gw1"}, "rssi": -35, "snr": 5.2}],
                "settings": {"data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}}, "frequency": "868300000"},
                "received_at": rfc3339(time_ms)}
    if decoded is not None:
        up["decoded_payload"] = decoded
    if key_envelope is not None:
        up["app_s_key"] = {"kek_label": key_envelope[0], "encrypted_key": base64.b64encode(key_envelope[1]).decode()}
    return {"end_device_ids": {"device_id": "station", "application_ids": {"application_id": "app1"}, "dev_eui": dev_eui.upper(),
                               "join_eui": "0000000000000000", "dev_addr": dev_addr.upper()},
            "correlation_ids": ["as:up:01"], "received_at": rfc3339(time_ms), "uplink_message": up}
