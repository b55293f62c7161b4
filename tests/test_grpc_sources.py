"""The per-source cap on concurrent gRPC calls (node/app/grpc_sources.py, docs/limits.md).

Before: `maximum_concurrent_rpcs` (256) was the only bound, so one address holding 256 idle
`StreamFrames` streams made every other caller see RESOURCE_EXHAUSTED. Now one address holds
at most PER_SOURCE_CONCURRENT_RPCS calls; the flooder here comes from 127.0.0.2 (through a
relay on loopback), the honest sensor and the pinned peer from 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from conftest import sign_agreement, start_peered
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ingest_helpers import fresh_readings
from relay_helpers import Relay

from node.api.v1 import ingest_pb2, ingest_pb2_grpc
from node.app import grpc_limits
from node.app.grpc_sources import PER_SOURCE_CONCURRENT_RPCS
from node.client import channel_options
from tests.test_federation_region import TERMS

FLOOD = 300  # more than the whole server's 256


def reason_of(err: grpc.aio.AioRpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("smartregion-reason")


async def test_one_flooding_address_cannot_take_the_calls_of_a_sensor_and_a_pinned_peer(tmp_path):
    assert PER_SOURCE_CONCURRENT_RPCS * 2 < grpc_limits.MAXIMUM_CONCURRENT_RPCS < FLOOD
    target, peer = await start_peered(tmp_path, "1103", "4601")
    relay = await Relay(int(target.hub.endpoint.grpc_address.rsplit(":", 1)[1]), source_host="127.0.0.2").start()
    hub_id = target.hub.config.hub_id
    credentials = grpc.ssl_channel_credentials(root_certificates=target.hub.identity.tls_cert_pem)
    # Several connections (a connection carries at most 100 streams), all from 127.0.0.2.
    flood_channels = [grpc.aio.secure_channel(relay.address, credentials,
                                              options=[*channel_options(hub_id), ("grpc.use_local_subchannel_pool", 1)])
                      for _ in range(4)]
    calls = [ingest_pb2_grpc.IngestStub(flood_channels[i % 4]).StreamFrames(timeout=60) for i in range(FLOOD)]
    waits = [asyncio.ensure_future(call) for call in calls]  # idle streams: they send nothing
    try:
        sensor = await target.add_sensor(tmp_path, "honest", metrics=["pm25"])
        # Every call over the cap is refused at once with the reason; the cap's worth stay open.
        try:
            async with asyncio.timeout(30):
                while sum(w.done() for w in waits) < FLOOD - PER_SOURCE_CONCURRENT_RPCS:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail(f"only {sum(w.done() for w in waits)} of {FLOOD} calls from one address were refused")
        refused = [w.exception() for w in waits if w.done()]
        assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                   and reason_of(e) == "too_many_calls" for e in refused), {str(e) for e in refused}
        assert len(refused) == FLOOD - PER_SOURCE_CONCURRENT_RPCS

        # While the flooder holds its streams, a sensor elsewhere is served ...
        frames = sensor.seal([fresh_readings(3, ("pm25",))])
        response = await target.ingest.SubmitBatch(
            ingest_pb2.SubmitBatchRequest(frames=[ingest_pb2.SealedFrame(frame=f) for f in frames]), timeout=10)
        assert response.receipts[0].readings_stored == 3
        # ... and so is a pinned peer: an agreement is proposed, delivered and countersigned both ways.
        await sign_agreement(peer, target, TERMS)
        assert sum(w.done() for w in waits) == FLOOD - PER_SOURCE_CONCURRENT_RPCS, "the flooder's streams ended early"

        # The refusals are one audit entry for the source (per minute), not one per call.
        await target.running.federation.refusals.flush()
        rows = await target.hub.storage.read(lambda s: s.audit_rows())
        entries = [json.loads(r.entry) for r in rows]
        flooder = [e for e in entries if e["actor"] == "source:ipv4:127.0.0.2"]
        assert len(flooder) == 1 and f"{FLOOD - PER_SOURCE_CONCURRENT_RPCS} refused" in flooder[0]["detail"]
        assert "too_many_calls" in flooder[0]["detail"]
        assert target.hub.metrics.frames_rejected.labels("too_many_calls")._value.get() == FLOOD - PER_SOURCE_CONCURRENT_RPCS
        # The cap counts calls under way, not calls ever made: once the streams end, the address is served.
        for call in calls:
            call.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        async with asyncio.timeout(10):
            while True:
                try:
                    health = await health_pb2_grpc.HealthStub(flood_channels[0]).Check(health_pb2.HealthCheckRequest(), timeout=5)
                    break
                except grpc.aio.AioRpcError as err:  # the hub sees the cancellations a moment later
                    assert reason_of(err) == "too_many_calls", err
                    await asyncio.sleep(0.05)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        print(f"\nflood of {FLOOD} idle streams from one address: {PER_SOURCE_CONCURRENT_RPCS} held, "
              f"{len(refused)} refused (too_many_calls); a sensor and a pinned peer were served meanwhile")
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        for channel in flood_channels:
            await channel.close()
        await relay.stop()
        for live in (target, peer):
            await live.stop()
