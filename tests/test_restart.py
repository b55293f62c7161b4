"""Restarts with real hub processes (`smartregion serve`): replay protection and stored
readings survive a restart, and a sensor's counter keeps increasing across runs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import grpc
import pytest

from node import hubdir
from node.api.v1 import admin_pb2, ingest_pb2, ingest_pb2_grpc
from node.app.launcher import HubProcess
from node.app.sensor_client import Sensor, SensorCredential, counter_store_for, replay
from node.client import AdminClient, open_channel
from node.senml import Reading

PASSPHRASE = "restart-test-passphrase-0123"
T0 = 1546300800000  # 2019-01-01T00:00:00Z
HOUR = 3_600_000


@pytest.fixture
def hub_processes():
    """Start hub processes for a test; every one of them is stopped afterwards."""
    started: list[HubProcess] = []

    def start(data_dir: Path, **options) -> HubProcess:
        process = HubProcess(data_dir, PASSPHRASE, **options)
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop(timeout=10)
            process.kill()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    path = tmp_path / "hub"
    hubdir.init_hub(path, "1103", PASSPHRASE.encode())
    return path


def enrol(data_dir: Path, out: Path, metrics=("pm25", "temperature")) -> SensorCredential:
    with AdminClient(data_dir) as client:
        response = client.call(
            "AddSensor",
            admin_pb2.AddSensorRequest(dataset="air_quality", metrics=list(metrics), latitude=58.97, longitude=5.73, label="Valand"),
        )
    out.write_bytes(response.credential_json)
    return SensorCredential.load(out)


def submit(process: HubProcess, frames: list[bytes]) -> ingest_pb2.SubmitBatchResponse:
    """Send frames to wherever this hub process really listens now."""
    hub_dir = hubdir.HubDir(process.data_dir)
    endpoint = process.endpoint
    with open_channel(endpoint["grpc_address"], hub_id=endpoint["hub_id"], cert_pem=hub_dir.tls_cert_pem(), tls=endpoint["tls"]) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        return stub.SubmitBatch(ingest_pb2.SubmitBatchRequest(frames=[ingest_pb2.SealedFrame(frame=f) for f in frames]), timeout=30)


def refused(process: HubProcess, frames: list[bytes]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        submit(process, frames)
    return err.value


def readings_of(data_dir: Path) -> dict[str, int]:
    with AdminClient(data_dir) as client:
        status = client.call("GetStatus", admin_pb2.GetStatusRequest())
    return {c.metric: c.readings for c in status.counts}


def sensor_row(data_dir: Path, sensor_id: str) -> admin_pb2.Sensor:
    with AdminClient(data_dir) as client:
        response = client.call("ListSensors", admin_pb2.ListSensorsRequest(include_revoked=True))
    return next(s for s in response.sensors if s.sensor_id == sensor_id)


def stop_cleanly(process: HubProcess) -> None:
    pid = process.process.pid
    assert process.stop() == 0, process.log_tail()
    assert not (process.data_dir / hubdir.ENDPOINT_FILE).exists()
    with pytest.raises(hubdir.HubDirError, match="not running"):
        hubdir.HubDir(process.data_dir).endpoint()
    assert "Traceback" not in process.log_tail(200), process.log_tail(200)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_replays_are_refused_after_a_restart_and_new_frames_are_accepted(data_dir, tmp_path, hub_processes):
    first = hub_processes(data_dir, grpc_port=0, http_port=0)
    credential = enrol(data_dir, tmp_path / "valand.json")

    sensor = Sensor(credential)
    sent = sensor.seal([[Reading("pm25", T0, 5.3), Reading("temperature", T0, 4.6)], [Reading("pm25", T0 + HOUR, 6.1)]])
    receipts = submit(first, sent).receipts
    assert [r.readings_stored for r in receipts] == [2, 1]
    # A frame sealed but not delivered before the restart; its counter is below the last accepted.
    late = sent[0]
    stop_cleanly(first)

    second = hub_processes(data_dir, grpc_port=0, http_port=0)
    assert second.endpoint["hub_id"] == first.endpoint["hub_id"]
    # The readings committed before the restart are still there.
    assert readings_of(data_dir) == {"pm25": 2, "temperature": 1}
    assert sensor_row(data_dir, credential.sensor_id).last_counter == receipts[-1].counter

    for old in (sent[1], late):
        error = refused(second, [old])
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert "not above the last accepted" in error.details()
        assert ("smartregion-reason", "replayed") in error.trailing_metadata()

    # A new run of the sensor (a new Sensor, as after a restart of the sensor too) is accepted.
    again = Sensor(SensorCredential.load(credential.path))
    fresh = again.seal([[Reading("pm25", T0 + 2 * HOUR, 7.0), Reading("temperature", T0 + 2 * HOUR, 4.0)]])
    receipt = submit(second, fresh).receipts[0]
    assert receipt.readings_stored == 2 and receipt.counter > receipts[-1].counter
    assert readings_of(data_dir) == {"pm25": 3, "temperature": 2}
    row = sensor_row(data_dir, credential.sensor_id)
    assert row.frames_accepted == 3 and row.frames_rejected == 2 and row.readings == 5
    stop_cleanly(second)

    # And once more: everything persisted, the fresh frame is now a replay too.
    third = hub_processes(data_dir, grpc_port=0, http_port=0)
    assert readings_of(data_dir) == {"pm25": 3, "temperature": 2}
    assert refused(third, fresh).code() == grpc.StatusCode.FAILED_PRECONDITION
    stop_cleanly(third)


def test_the_sensor_counter_keeps_increasing_across_runs(data_dir, tmp_path, hub_processes):
    process = hub_processes(data_dir, grpc_port=0, http_port=0)
    credential = enrol(data_dir, tmp_path / "valand.json")
    counter_file = credential.path.with_name(credential.path.name + ".counter")
    assert counter_store_for(credential).path == counter_file
    assert not counter_file.exists()

    last = 0
    all_counters = []
    for run in range(3):
        sensor = Sensor(SensorCredential.load(credential.path))  # a separate run each time
        frames = sensor.seal([[Reading("pm25", T0 + (3 * run + i) * HOUR, 5.0)] for i in range(3)])
        counters = [int.from_bytes(f[33:41], "big") for f in frames]
        assert counters == sorted(counters) and len(set(counters)) == 3
        assert counters[0] > last
        assert int(counter_file.read_text()) == counters[-1]
        assert stat.S_IMODE(counter_file.stat().st_mode) == 0o600
        receipts = submit(process, frames).receipts
        assert [r.counter for r in receipts] == counters
        last = counters[-1]
        all_counters += counters
    assert all_counters == sorted(set(all_counters))

    # A lost counter file does not make the sensor reuse a counter (they start at the clock).
    counter_file.unlink()
    sensor = Sensor(SensorCredential.load(credential.path))
    frames = sensor.seal([[Reading("pm25", T0 + 100 * HOUR, 5.0)]])
    assert submit(process, frames).receipts[0].counter > last
    # A damaged counter file is refused rather than guessed.
    counter_file.write_text("not a number\n")
    with pytest.raises(Exception, match="does not hold a counter"):
        Sensor(SensorCredential.load(credential.path)).seal([[Reading("pm25", T0, 1.0)]])


def test_a_replay_through_the_credential_survives_a_restart_on_the_same_ports(data_dir, tmp_path, hub_processes):
    """As in production, the hub comes back on its configured ports; the credential still
    works, and sending the same readings again stores nothing twice."""
    first = hub_processes(data_dir, grpc_port=0, http_port=0)
    grpc_port = int(first.endpoint["grpc_address"].rsplit(":", 1)[1])
    http_port = int(first.endpoint["http_url"].rsplit(":", 1)[1])
    credential = enrol(data_dir, tmp_path / "valand.json")
    readings = [Reading(m, T0 + i * HOUR, 1.0 + i) for i in range(30) for m in ("pm25", "temperature")]

    summary = replay(Sensor(credential), readings, readings_per_frame=7, frames_per_call=3)
    assert (summary.readings_stored, summary.readings_duplicate) == (60, 0)
    stop_cleanly(first)

    second = hub_processes(data_dir, grpc_port=grpc_port, http_port=http_port)
    assert second.endpoint["grpc_address"] == first.endpoint["grpc_address"]
    summary = replay(Sensor(SensorCredential.load(credential.path)), readings, readings_per_frame=7, frames_per_call=3)
    assert (summary.readings_stored, summary.readings_duplicate) == (0, 60)
    assert summary.retries == 0
    assert readings_of(data_dir) == {"pm25": 30, "temperature": 30}
    stop_cleanly(second)


def test_endpoint_file_names_the_live_process(data_dir, hub_processes):
    process = hub_processes(data_dir, grpc_port=0, http_port=0)
    endpoint_file = data_dir / hubdir.ENDPOINT_FILE
    info = json.loads(endpoint_file.read_text())
    assert info["pid"] == process.process.pid
    assert info["tls"] is True
    assert not info["grpc_address"].endswith(":0") and not info["http_url"].endswith(":0")
    assert stat.S_IMODE(endpoint_file.stat().st_mode) == 0o600
    stop_cleanly(process)
