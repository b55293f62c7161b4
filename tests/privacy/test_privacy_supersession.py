"""Issue 9, attack 6: agreement lineage rolled back by one side.

Tried: hub A grants hub B wide terms (v1: hourly means); both sign v2 superseding v1 with
narrower terms (monthly means only); then B alone revokes v2 and asks v1's hourly question.
Before: v1 became active again and the hourly means were answered. Now: v1 stays superseded,
the revocation ends the line, and the hourly question is refused (recovered: nothing)."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc

from node.api.v1 import admin_pb2, agreement_pb2, query_pb2
from node.app.sensor_client import replay
from node.senml import Reading
from tests.conftest import sign_agreement, start_peered
from tests.test_federation_region import TERMS

JAN, FEB = (int(dt.datetime(2019, m, 1, tzinfo=dt.UTC).timestamp() * 1000) for m in (1, 2))
WIDE = TERMS.replace('smallest_bucket = "month"', 'smallest_bucket = "hour"')


async def _state(hub, agreement_id: str) -> int:
    view = await hub.admin.GetAgreement(admin_pb2.AgreementRef(agreement_id=agreement_id), metadata=hub.admin_metadata)
    return view.state


async def test_revoking_the_newer_version_never_reactivates_the_older(tmp_path):
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        sensor = await provider.add_sensor(tmp_path, "station", metrics=["pm25"])
        await asyncio.to_thread(replay, sensor, [Reading("pm25", JAN + h * 3_600_000, 5.0 + h % 7) for h in range(48)])
        v1 = await sign_agreement(provider, consumer, WIDE)
        v2 = await sign_agreement(provider, consumer, f'version = 2\nsupersedes = "{v1}"\n' + TERMS)
        assert await _state(provider, v1) == agreement_pb2.AGREEMENT_STATE_SUPERSEDED

        await consumer.admin.RevokeAgreement(admin_pb2.RevokeAgreementRequest(agreement_id=v2, reason="one side only"),
                                             metadata=consumer.admin_metadata)
        deadline = asyncio.get_running_loop().time() + 10
        while await _state(provider, v2) != agreement_pb2.AGREEMENT_STATE_REVOKED:
            assert asyncio.get_running_loop().time() < deadline, "the revocation did not reach the provider"
            await asyncio.sleep(0.05)
        for hub in (provider, consumer):  # both sides agree: the line ended
            assert await _state(hub, v1) == agreement_pb2.AGREEMENT_STATE_SUPERSEDED
        hourly = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=JAN, end_ms=JAN + 86_400_000,
                                     bucket="hour", group_by="municipality", purpose_code="environmental_monitoring",
                                     hub_ids=[provider.hub.config.hub_id])
        try:
            await consumer.admin.RunQuery(hourly, metadata=consumer.admin_metadata)
            raise AssertionError("the superseded terms were answered again")
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            assert f"{v1} is superseded" in refused.details() and f"{v2} is revoked" in refused.details(), refused.details()
    finally:
        await consumer.stop()
        await provider.stop()
