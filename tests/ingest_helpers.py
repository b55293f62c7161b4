"""Helpers for the ingest integration tests: deliver frames to a live hub over each transport,
hand-seal frames, and snapshot what the hub has stored (through the admin API and storage)."""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
from dataclasses import dataclass, field

import aiohttp
import grpc

from node import frames
from node.api.v1 import admin_pb2, ingest_pb2
from node.app.sensor_client import Sensor
from node.senml import Reading
from node.storage.base import ReadingFilter
from node.tlsfiles import pinned_client_ssl_context

# Expected outcome of each rejection reason, written out here (not derived from node.errors)
# so that a change to the mapping table is caught by the tests.
EXPECTED = {
    "malformed_frame": (grpc.StatusCode.INVALID_ARGUMENT, 400),
    "frame_too_large": (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    "wrong_hub": (grpc.StatusCode.FAILED_PRECONDITION, 421),
    "unknown_sensor": (grpc.StatusCode.UNAUTHENTICATED, 401),
    "revoked_sensor": (grpc.StatusCode.PERMISSION_DENIED, 403),
    "authentication_failed": (grpc.StatusCode.UNAUTHENTICATED, 401),
    "replayed": (grpc.StatusCode.FAILED_PRECONDITION, 409),
    "retired_key": (grpc.StatusCode.PERMISSION_DENIED, 403),
    "malformed_senml": (grpc.StatusCode.INVALID_ARGUMENT, 422),
    "unknown_metric": (grpc.StatusCode.INVALID_ARGUMENT, 422),
    "non_finite_value": (grpc.StatusCode.INVALID_ARGUMENT, 422),
    "rate_limited": (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    "storage_full": (grpc.StatusCode.UNAVAILABLE, 507),
    "timed_out": (grpc.StatusCode.DEADLINE_EXCEEDED, 408),
}

TRANSPORTS = ("batch", "stream", "http")
FRAME_CONTENT_TYPE = "application/vnd.smartregion.frame"

_minutes = itertools.count()
BASE_TIME_MS = 1_546_300_800_000  # 2019-01-01T00:00:00Z


def fresh_readings(n: int = 2, metrics: tuple[str, ...] = ("pm25", "temperature")) -> list[Reading]:
    """`n` readings at times never used before in this process (so never duplicates)."""
    out = []
    for i in range(n):
        out.append(Reading(metrics[i % len(metrics)], BASE_TIME_MS + next(_minutes) * 60_000, 1.0 + i))
    return out


def seal_raw(sensor: Sensor, plaintext: bytes, *, hub_id: bytes | None = None, sensor_id: bytes | None = None,
             key: bytes | None = None, counter: int | None = None) -> bytes:
    """Seal any plaintext as `sensor` (or with the given header fields / key), with a fresh counter."""
    cred = sensor.credential
    header = frames.FrameHeader(
        hub_id if hub_id is not None else bytes.fromhex(cred.hub_id),
        sensor_id if sensor_id is not None else bytes.fromhex(cred.sensor_id),
        counter if counter is not None else sensor.counters.reserve(1)[0],
    )
    return frames.seal(key if key is not None else cred.key, header, plaintext)


def senml_json(records) -> bytes:
    return json.dumps(records).encode()


# -- delivering ---------------------------------------------------------------------------------

@dataclass
class Delivery:
    transport: str
    ok: bool
    code: grpc.StatusCode | None = None  # gRPC status (OK on success)
    http_status: int | None = None
    reason: str | None = None  # trailing metadata `smartregion-reason`, or the HTTP body's "error"
    message: str = ""
    response: object = None  # SubmitBatchResponse / StreamFramesResponse / HTTP JSON body

    @property
    def stored(self) -> int:
        r = self.response
        if self.transport == "batch":
            return sum(x.readings_stored for x in r.receipts)
        if self.transport == "stream":
            return r.readings_stored
        return r["readings_stored"]

    @property
    def duplicate(self) -> int:
        r = self.response
        if self.transport == "batch":
            return sum(x.readings_duplicate for x in r.receipts)
        if self.transport == "stream":
            return r.readings_duplicate
        return r["readings_duplicate"]


def _rpc_failure(transport: str, err: grpc.aio.AioRpcError) -> Delivery:
    trailers = dict(err.trailing_metadata() or ())
    return Delivery(transport, False, code=err.code(), reason=trailers.get("smartregion-reason"), message=err.details() or "")


def client_ssl_context(live) -> ssl.SSLContext:
    return pinned_client_ssl_context(live.hub.identity.tls_cert_pem)


async def http_post(live, body, *, headers: dict | None = None) -> Delivery:
    """POST /v1/frames with TLS pinned to the hub's certificate and hub id (aiohttp, in-loop)."""
    url = live.hub.endpoint.http_url + "/v1/frames"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": FRAME_CONTENT_TYPE, **(headers or {})},
            ssl=client_ssl_context(live),
            server_hostname=live.hub.config.hub_id,
        ) as response:
            doc = await response.json(content_type=None)
    ok = response.status == 200
    return Delivery("http", ok, http_status=response.status, reason=None if ok else doc.get("error"),
                    message="" if ok else doc.get("message", ""), response=doc)


async def deliver(live, sealed: list[bytes] | bytes, transport: str) -> Delivery:
    """Send frames in one SubmitBatch, one StreamFrames call, or (one frame) one HTTP POST."""
    sealed = [sealed] if isinstance(sealed, bytes) else list(sealed)
    if transport == "batch":
        request = ingest_pb2.SubmitBatchRequest(frames=[ingest_pb2.SealedFrame(frame=f) for f in sealed])
        try:
            response = await live.ingest.SubmitBatch(request, timeout=20)
        except grpc.aio.AioRpcError as err:
            return _rpc_failure(transport, err)
        return Delivery(transport, True, code=grpc.StatusCode.OK, response=response)
    if transport == "stream":
        try:
            response = await live.ingest.StreamFrames(iter([ingest_pb2.SealedFrame(frame=f) for f in sealed]), timeout=20)
        except grpc.aio.AioRpcError as err:
            return _rpc_failure(transport, err)
        return Delivery(transport, True, code=grpc.StatusCode.OK, response=response)
    if transport == "http":
        assert len(sealed) == 1, "the HTTP endpoint takes one frame per request"
        return await http_post(live, sealed[0])
    raise ValueError(transport)


def assert_rejected(delivery: Delivery, reason: str) -> None:
    """The precise status for `reason` on the delivery's transport, and the reason label."""
    code, http_status = EXPECTED[reason]
    assert not delivery.ok, f"expected {reason}, but the frame was accepted: {delivery.response}"
    if delivery.transport == "http":
        assert (delivery.http_status, delivery.reason) == (http_status, reason), delivery.message
    else:
        assert (delivery.code, delivery.reason) == (code, reason), delivery.message
    assert delivery.message


async def send_readings_http(sensor: Sensor, sealed: bytes) -> dict:
    """The real sensor client's HTTP path (blocking stdlib), run off the event loop."""
    return await asyncio.to_thread(sensor.send_http, sealed)


# -- what the hub has stored ---------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    counts: dict  # (dataset, metric) -> readings, from GetStatus
    sensors: dict  # sensor_id -> (last_counter, last_seen_ms, frames_accepted, readings), from ListSensors
    rejections: dict  # reason -> count, from GetStatus
    rows: list = field(default_factory=list)  # every stored reading, straight from storage

    def sensor(self, sensor: Sensor) -> tuple:
        return self.sensors[sensor.credential.sensor_id]

    def last_counter(self, sensor: Sensor) -> int:
        return self.sensor(sensor)[0]

    def readings(self, sensor: Sensor) -> int:
        return self.sensor(sensor)[3]


async def snapshot(live) -> Snapshot:
    status = await live.admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=live.admin_metadata)
    listing = await live.admin.ListSensors(admin_pb2.ListSensorsRequest(include_revoked=True), metadata=live.admin_metadata)
    rows = await live.hub.storage.read(lambda s: s.readings(ReadingFilter()))
    return Snapshot(
        counts={(c.dataset, c.metric): c.readings for c in status.counts},
        sensors={s.sensor_id: (s.last_counter, s.last_seen_ms, s.frames_accepted, s.readings) for s in listing.sensors},
        rejections=dict(status.rejections_by_reason),
        rows=[(r.sensor_id, r.metric, r.time_ms, r.value) for r in rows],
    )


async def assert_nothing_stored(live, before: Snapshot, reason: str | None) -> Snapshot:
    """No reading, counter or acceptance changed since `before`; exactly one rejection of
    `reason` was counted (none if `reason` is None)."""
    after = await snapshot(live)
    assert after.rows == before.rows
    assert after.counts == before.counts
    assert after.sensors == before.sensors
    expected = dict(before.rejections)
    if reason is not None:
        expected[reason] = expected.get(reason, 0) + 1
    assert after.rejections == expected
    return after


async def assert_still_serving(live, sensor: Sensor, transport: str) -> None:
    """A valid frame from `sensor` is accepted and stored after a rejection."""
    readings = fresh_readings(2)
    before = await snapshot(live)
    sealed = sensor.seal([readings])[0]
    if transport == "http":
        body = await send_readings_http(sensor, sealed)
        assert body["status"] == 200, body
        assert body["readings_stored"] == 2
    else:
        delivery = await deliver(live, sealed, transport)
        assert delivery.ok, delivery.message
        assert delivery.stored == 2
    after = await snapshot(live)
    assert after.readings(sensor) == before.readings(sensor) + 2
    assert after.last_counter(sensor) > before.last_counter(sensor)

