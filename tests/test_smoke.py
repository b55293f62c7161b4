import grpc
import pytest

from node.api.v1 import admin_pb2, ingest_pb2
from node.senml import Reading


async def test_sealed_frames_are_stored_and_counted(live_hub, tmp_path):
    sensor = await live_hub.add_sensor(tmp_path)
    frames = sensor.seal([[Reading("pm25", 1546300800000, 5.3), Reading("temperature", 1546300800000, 4.6)]])
    response = await live_hub.ingest.SubmitBatch(ingest_pb2.SubmitBatchRequest(frames=[ingest_pb2.SealedFrame(frame=f) for f in frames]))
    assert response.receipts[0].readings_stored == 2
    status = await live_hub.admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=live_hub.admin_metadata)
    assert {(c.metric, c.readings) for c in status.counts} == {("pm25", 1), ("temperature", 1)}


async def test_admin_requires_the_credential(live_hub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live_hub.admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=(("authorization", "Bearer sra_wrong"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
