"""AddSensor with a client-chosen request id is idempotent (issue 11, "Retries that surprise")."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from node.api.v1 import admin_pb2


def request(**changes) -> admin_pb2.AddSensorRequest:
    fields = {"dataset": "air_quality", "metrics": ["pm25"], "latitude": 58.97, "longitude": 5.73, "label": "Valand",
              "request_id": "batch-7/valand"}
    fields.update(changes)
    return admin_pb2.AddSensorRequest(**fields)


async def test_a_retry_with_the_same_request_id_returns_the_same_sensor_and_credential(live_hub):
    first = await live_hub.admin.AddSensor(request(), metadata=live_hub.admin_metadata)
    again = await live_hub.admin.AddSensor(request(), metadata=live_hub.admin_metadata)
    assert again.sensor.sensor_id == first.sensor.sensor_id
    assert json.loads(again.credential_json)["key"] == json.loads(first.credential_json)["key"]
    listing = await live_hub.admin.ListSensors(admin_pb2.ListSensorsRequest(), metadata=live_hub.admin_metadata)
    assert [s.sensor_id for s in listing.sensors] == [first.sensor.sensor_id]
    # Without a request id, each call enrols a new sensor (as before).
    a = await live_hub.admin.AddSensor(request(request_id=""), metadata=live_hub.admin_metadata)
    b = await live_hub.admin.AddSensor(request(request_id=""), metadata=live_hub.admin_metadata)
    assert len({a.sensor.sensor_id, b.sensor.sensor_id, first.sensor.sensor_id}) == 3


async def test_concurrent_calls_with_one_request_id_enrol_one_sensor(live_hub):
    answers = await asyncio.gather(*(live_hub.admin.AddSensor(request(request_id="same"), metadata=live_hub.admin_metadata)
                                     for _ in range(8)))
    assert len({a.sensor.sensor_id for a in answers}) == 1


@pytest.mark.parametrize("changes, code", [
    ({"label": "another"}, grpc.StatusCode.ALREADY_EXISTS),
    ({"latitude": 60.0}, grpc.StatusCode.ALREADY_EXISTS),
])
async def test_a_request_id_reused_for_another_enrolment_is_refused(live_hub, changes, code):
    await live_hub.admin.AddSensor(request(), metadata=live_hub.admin_metadata)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live_hub.admin.AddSensor(request(**changes), metadata=live_hub.admin_metadata)
    assert err.value.code() == code and "another enrolment" in err.value.details()


@pytest.mark.parametrize("bad", ["x" * 129, "tab\there", "ø-not-ascii"])
async def test_a_malformed_request_id_is_refused(live_hub, bad):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live_hub.admin.AddSensor(request(request_id=bad), metadata=live_hub.admin_metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
