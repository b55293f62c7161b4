"""A cap on the concurrent gRPC calls of one source address (docs/limits.md).

`maximum_concurrent_rpcs` (256) bounds the whole server, so one flooding address could hold
every slot (idle `StreamFrames` streams, slow calls) and starve sensors and peers elsewhere.
Every call not already authenticated by the admin token (the admin interceptor runs before
this one) counts against its source address: ingest, federation, queries, health and
reflection, because their callers are only known once a frame or signed envelope has been
checked, after the call is accepted. A call over the cap is refused at once with
RESOURCE_EXHAUSTED and the reason trailer `too_many_calls`, before its request is read.

Refusals are counted (metric, and one audit entry per source and minute through the
RefusalTally) and logged at most once per source and minute: a refused call costs the hub a
dictionary lookup, never a write of its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from federation.auth import source_address
from node.app.servicers.auth import OTHERWISE_AUTHENTICATED, service_of
from node.clock import Clock
from node.errors import Reason, Rejected

log = logging.getLogger("smartregion.grpc")

PER_SOURCE_CONCURRENT_RPCS = 64  # of the server's 256 (as HTTP's 64 connections per source)
LOG_EVERY_MS = 60_000  # a refused source is logged at most once a minute (it is counted always)

OnRefused = Callable[[str, str, Rejected], Awaitable[None]]  # (source, method, refusal)


class SourceLimitInterceptor(grpc.aio.ServerInterceptor):  # grpc ships no stubs
    def __init__(self, clock: Clock, on_refused: OnRefused, per_source: int = PER_SOURCE_CONCURRENT_RPCS) -> None:
        self.per_source = per_source
        self.on_refused = on_refused
        self._clock = clock
        self._active: dict[str, int] = {}
        self._logged_at: dict[str, int] = {}

    def active(self, source: str) -> int:
        return self._active.get(source, 0)

    @asynccontextmanager
    async def _slot(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        source = source_address(context.peer() or "unknown")
        if self._active.get(source, 0) >= self.per_source:
            rejected = Rejected(Reason.TOO_MANY_CALLS, f"{source} has {self.per_source} calls under way, the most "
                                                       "one address may have; retry when one has ended")
            await self.on_refused(source, method, rejected)
            self._log(source, method)
            context.set_trailing_metadata((("smartregion-reason", rejected.reason.label),))
            await context.abort(grpc.StatusCode[rejected.reason.grpc_code], rejected.message)
        self._active[source] = self._active.get(source, 0) + 1
        try:
            yield
        finally:
            left = self._active[source] - 1
            if left:
                self._active[source] = left
            else:
                del self._active[source]  # the table holds only sources with calls under way

    def _log(self, source: str, method: str) -> None:
        now = self._clock.now_ms()
        if now - self._logged_at.get(source, -LOG_EVERY_MS) >= LOG_EVERY_MS:
            if len(self._logged_at) > 4096:
                self._logged_at.clear()  # bounded memory under many addresses
            self._logged_at[source] = now
            log.warning("refused: too many calls from one source", extra={"source": source, "method": method})

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or service_of(method) not in OTHERWISE_AUTHENTICATED:
            return handler  # admin calls got here with the admin token
        slot = self._slot
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with slot(method, context):
                    return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with slot(method, context):
                    async for item in inner_us(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                async with slot(method, context):
                    return await inner_su(requests, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, handler.request_deserializer, handler.response_serializer)
        if handler.stream_stream:  # reflection
            inner_ss = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                async with slot(method, context):
                    async for item in inner_ss(requests, context):
                        yield item

            return grpc.stream_stream_rpc_method_handler(stream_stream, handler.request_deserializer, handler.response_serializer)
        return handler
