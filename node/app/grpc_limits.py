"""Limits of the gRPC door (docs/limits.md): server options, and a size limit per method
checked on the raw bytes before they are parsed.

gRPC core refuses a message above `grpc.max_receive_message_length` with RESOURCE_EXHAUSTED
and no reason trailer. That ceiling is set just above the largest per-method limit, so any
request between its method's limit and the ceiling is refused here, with the reason trailer
(`frame_too_large` for ingest, `request_too_large` otherwise), and undecodable protobuf gets
`malformed_frame` / `invalid_request` instead of UNKNOWN and a traceback. Both are counted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from node.errors import Reason, Rejected
from node.frames import MAX_FRAME

log = logging.getLogger("smartregion.grpc")
KiB, MiB = 1024, 1024 * 1024

INGEST_PREFIX = "/smartregion.v1.Ingest/"
# Bytes of one request message, per method; methods not named use DEFAULT_REQUEST_BYTES.
SUBMIT_BATCH_BYTES = 4 * MiB
REQUEST_BYTES = {
    INGEST_PREFIX + "SubmitBatch": SUBMIT_BATCH_BYTES,
    INGEST_PREFIX + "StreamFrames": MAX_FRAME + 64,  # one SealedFrame: the frame and its field tag
    "/smartregion.v1.Federation/GetDescriptor": 4 * KiB,
    "/smartregion.v1.Federation/RegionCatalog": 4 * KiB,  # public, like GetDescriptor: an empty request
    "/smartregion.v1.Federation/ExchangeAgreements": 512 * KiB,
    "/smartregion.v1.Query/Run": 64 * KiB,
    "/smartregion.v1.Query/Partial": 64 * KiB,
}
ADMIN_REQUEST_BYTES = 1 * MiB  # authenticated operator calls (terms, key files)
DEFAULT_REQUEST_BYTES = 64 * KiB  # health, reflection
CEILING_BYTES = SUBMIT_BATCH_BYTES + 64 * KiB
MAX_SEND_BYTES = 16 * MiB  # answers the hub builds itself (audit export, listings)

MAXIMUM_CONCURRENT_RPCS = 256
STREAM_IDLE_SECONDS = 30.0  # a StreamFrames call that sends no frame for this long is closed
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", CEILING_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ("grpc.max_concurrent_streams", 100),  # per connection
    ("grpc.max_connection_idle_ms", 5 * 60_000),
    ("grpc.max_connection_age_ms", 60 * 60_000),
    ("grpc.max_connection_age_grace_ms", 5 * 60_000),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 3),
    ("grpc.max_metadata_size", 16 * KiB),
    ("grpc.so_reuseport", 0),
]


def request_limit(method: str) -> int:
    if method.startswith("/smartregion.v1.Admin/"):
        return ADMIN_REQUEST_BYTES
    return REQUEST_BYTES.get(method, DEFAULT_REQUEST_BYTES)


@dataclass(frozen=True)
class Refused:
    """What a checked deserializer returns instead of a message: the refusal, to be raised by
    the handler (a deserializer cannot set the status or trailers itself)."""

    rejected: Rejected


def _checked(method: str, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    limit = request_limit(method)
    ingest = method.startswith(INGEST_PREFIX)

    def check(data: bytes) -> Any:
        if len(data) > limit:
            reason = Reason.FRAME_TOO_LARGE if ingest else Reason.REQUEST_TOO_LARGE
            return Refused(Rejected(reason, f"the request is {len(data)} bytes; {method} takes at most {limit}"))
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except DecodeError as exc:
            reason = Reason.MALFORMED_FRAME if ingest else Reason.INVALID_REQUEST
            return Refused(Rejected(reason, f"the request is not a valid protobuf message for {method}: {exc}"))

    return check


OnRefused = Callable[[str, Rejected], Awaitable[None]]


class RequestLimitInterceptor(grpc.aio.ServerInterceptor):  # grpc ships no stubs
    """Checks every request message's size (and that it parses) before the servicer sees it."""

    def __init__(self, on_refused: OnRefused) -> None:
        self._on_refused = on_refused

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        deserialize = _checked(method, handler.request_deserializer)
        on_refused = self._on_refused

        async def refuse(refused: Refused, context: grpc.aio.ServicerContext) -> None:
            await on_refused(method, refused.rejected)
            log.info("refused", extra={"method": method, "reason": refused.rejected.reason.label})
            context.set_trailing_metadata((("smartregion-reason", refused.rejected.reason.label),))
            await context.abort(grpc.StatusCode[refused.rejected.reason.grpc_code], refused.rejected.message)

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, Refused):
                    await refuse(request, context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, handler.response_serializer)
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, Refused):
                    await refuse(request, context)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, handler.response_serializer)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await inner_su(_raising(requests, method, on_refused), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, handler.response_serializer)
        return handler  # bidirectional streams: none in this API


async def _raising(requests: AsyncIterator[Any], method: str, on_refused: OnRefused) -> AsyncIterator[Any]:
    """The stream's messages; a refused one raises its Rejected where the servicer reads it,
    so the servicer commits what came before (as for a bad frame) and reports the reason."""
    async for request in requests:
        if isinstance(request, Refused):
            await on_refused(method, request.rejected)
            raise request.rejected
        yield request
