"""The gRPC door's limits (node/app/grpc_limits.py, docs/limits.md): every method refuses a
request above its size limit with the reason trailer, undecodable messages get a precise
reason instead of UNKNOWN, idle streams are closed, and nothing of a refused request is stored."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
import pytest_asyncio
from conftest import make_hub_dir, start_live_hub
from ingest_helpers import assert_nothing_stored, fresh_readings, snapshot

from node.api.v1 import admin_pb2, federation_pb2, ingest_pb2, query_service_pb2
from node.app import grpc_limits

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def live_hub(tmp_path_factory):
    live = await start_live_hub(make_hub_dir(tmp_path_factory.mktemp("limits") / "hub"))
    yield live
    await live.stop()


def all_methods() -> list[str]:
    methods = []
    for module, service in ((ingest_pb2, "Ingest"), (admin_pb2, "Admin"), (federation_pb2, "Federation"),
                            (query_service_pb2, "Query")):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        methods += [f"/{descriptor.full_name}/{m.name}" for m in descriptor.methods]
    return methods


def reason_of(err: grpc.aio.AioRpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("smartregion-reason")


async def raw_unary(live, method: str, body: bytes, metadata=()) -> grpc.aio.AioRpcError:
    call = live.channel.unary_unary(method)  # no serializers: the bytes go out as they are
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(body, timeout=20, metadata=metadata)
    return err.value


def over_limit(method: str) -> bytes:
    """A request one byte over the method's limit: a bytes field 1 of that length (protobuf
    wire format), so it would parse if it were allowed in."""
    limit = grpc_limits.request_limit(method)
    payload_len = limit
    return b"\x0a" + _varint(payload_len) + b"\x00" * payload_len


def padded(message: bytes, size: int) -> bytes:
    """`message` with an unknown bytes field 15 (which protobuf skips) making it `size` bytes."""
    pad = size - len(message) - 2
    while len(message) + 1 + len(_varint(pad)) + pad > size:
        pad -= 1
    body = message + b"\x7a" + _varint(pad) + b"\x00" * pad
    assert len(body) == size
    return body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@pytest.mark.parametrize("method", [m for m in all_methods() if not m.endswith("/StreamFrames")])
async def test_every_unary_method_refuses_a_request_over_its_limit_with_the_reason(live_hub, method):
    """Before: every method took 16 MiB from anyone, and one over the limit got no reason."""
    metadata = live_hub.admin_metadata if ".Admin/" in method else ()
    err = await raw_unary(live_hub, method, over_limit(method), metadata)
    expected = "frame_too_large" if ".Ingest/" in method else "request_too_large"
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert reason_of(err) == expected and str(grpc_limits.request_limit(method)) in err.details()


async def test_the_documented_batch_limit_is_exact_and_a_refused_batch_stores_nothing(live_hub, tmp_path):
    sensor = await live_hub.add_sensor(tmp_path, "big")
    frames = sensor.seal([fresh_readings(1) for _ in range(3)])
    for extra, accepted in ((0, True), (1, False)):
        body = padded(ingest_pb2.SubmitBatchRequest(frames=[ingest_pb2.SealedFrame(frame=f) for f in frames]).SerializeToString(),
                      grpc_limits.SUBMIT_BATCH_BYTES + extra)
        assert len(body) == grpc_limits.SUBMIT_BATCH_BYTES + extra
        before = await snapshot(live_hub)
        if accepted:
            response = ingest_pb2.SubmitBatchResponse.FromString(
                await live_hub.channel.unary_unary("/smartregion.v1.Ingest/SubmitBatch")(body, timeout=20))
            assert len(response.receipts) == 3
            frames = sensor.seal([fresh_readings(1) for _ in range(3)])
        else:
            err = await raw_unary(live_hub, "/smartregion.v1.Ingest/SubmitBatch", body)
            assert reason_of(err) == "frame_too_large"
            await assert_nothing_stored(live_hub, before, "frame_too_large")


async def test_a_message_over_the_ceiling_is_refused_by_grpc_itself(live_hub):
    """Documented: above grpc_max_message gRPC answers RESOURCE_EXHAUSTED without a trailer."""
    err = await raw_unary(live_hub, "/smartregion.v1.Ingest/SubmitBatch", b"\x00" * (grpc_limits.CEILING_BYTES + 1))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("method, reason", [
    ("/smartregion.v1.Ingest/SubmitBatch", "malformed_frame"),
    ("/smartregion.v1.Federation/GetDescriptor", "invalid_request"),
])
async def test_undecodable_protobuf_gets_a_precise_reason_and_is_counted(live_hub, method, reason):
    """Before: UNKNOWN, an ERROR traceback per message, not counted."""
    before = live_hub.hub.metrics.frames_rejected.labels(reason)._value.get()
    err = await raw_unary(live_hub, method, b"\xff\xff\xff\xff")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(err) == reason, err.details()
    assert live_hub.hub.metrics.frames_rejected.labels(reason)._value.get() == before + 1


@pytest.mark.parametrize("method", ["/smartregion.v1.Federation/ExchangeAgreements", "/smartregion.v1.Query/Partial"])
async def test_undecodable_protobuf_to_an_authenticated_method_is_unauthenticated(live_hub, method):
    """The one authentication path parses the envelope first: garbage cannot name a caller, so
    it is refused as unauthenticated, with the reason trailer, and counted in the refusal tally."""
    err = await raw_unary(live_hub, method, b"\xff\xff\xff\xff")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and reason_of(err) == "unauthenticated", err.details()
    assert "does not parse" in err.details()


async def test_an_oversized_stream_message_ends_the_stream_after_committing_the_frames_before(live_hub, tmp_path):
    sensor = await live_hub.add_sensor(tmp_path, "streamer")
    good = sensor.seal([fresh_readings(2), fresh_readings(2)])
    call = live_hub.channel.stream_unary("/smartregion.v1.Ingest/StreamFrames")
    oversized = ingest_pb2.SealedFrame(frame=os.urandom(grpc_limits.request_limit("/smartregion.v1.Ingest/StreamFrames")))
    messages = [ingest_pb2.SealedFrame(frame=f).SerializeToString() for f in good] + [oversized.SerializeToString()]
    before = await snapshot(live_hub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(iter(messages), timeout=20)
    assert reason_of(err.value) == "frame_too_large" and "the 2 frames before were committed" in err.value.details()
    after = await snapshot(live_hub)
    assert after.readings(sensor) == before.readings(sensor) + 4


async def test_idle_streams_are_closed_and_their_frames_committed(live_hub, tmp_path, monkeypatch):
    """Before: 2,000 idle StreamFrames streams stayed open."""
    monkeypatch.setattr(grpc_limits, "STREAM_IDLE_SECONDS", 0.5)
    sensor = await live_hub.add_sensor(tmp_path, "idler")
    streams = 50

    async def idle_stream(i: int) -> grpc.aio.AioRpcError:
        call = live_hub.ingest.StreamFrames()
        if i == 0:
            await call.write(ingest_pb2.SealedFrame(frame=sensor.seal([fresh_readings(3)])[0]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call, timeout=30)  # generous: the hub closes it after 0.5 s
        return err.value

    before = await snapshot(live_hub)
    errors = await asyncio.gather(*(idle_stream(i) for i in range(streams)))
    assert {(e.code(), reason_of(e)) for e in errors} == {(grpc.StatusCode.DEADLINE_EXCEEDED, "timed_out")}
    assert "the 1 frames before were committed" in errors[0].details()
    assert (await snapshot(live_hub)).readings(sensor) == before.readings(sensor) + 3
    print(f"\n{streams} idle streams closed by the hub")


async def test_the_server_options_bound_connections_and_concurrency():
    options = dict(grpc_limits.SERVER_OPTIONS)
    assert options["grpc.max_receive_message_length"] == grpc_limits.CEILING_BYTES < 16 * 1024 * 1024
    for key in ("grpc.max_connection_idle_ms", "grpc.max_connection_age_ms", "grpc.keepalive_time_ms",
                "grpc.max_concurrent_streams"):
        assert options[key] > 0
    assert 0 < grpc_limits.MAXIMUM_CONCURRENT_RPCS <= 1024
