"""Limits of the HTTP door (docs/limits.md): how long a client may take, and how many
connections one source and all sources together may hold.

aiohttp alone closes an idle connection only after its keep-alive timeout (an hour by
default) and has no bound on the time to send request headers: 100 TLS connections sending
headers a byte at a time stayed open for minutes and, with the open-file limit reached, made
both gRPC and HTTP fail to accept. Here each connection gets:

* a TLS handshake bound (`ssl_handshake_timeout` of the listening socket);
* a header bound: from its first byte (or from the connection when nothing was sent), a
  request's headers must be complete within `header_seconds`, else 408 and close;
* a body bound (`body_seconds`, applied by the handlers that read bodies);
* an idle bound between requests (aiohttp's keep-alive timeout);
* caps on connections per source address and in total: over a cap, 503 and close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from node.errors import Reason

log = logging.getLogger("smartregion.http")


@dataclass(frozen=True)
class HttpLimits:
    header_seconds: float = 10.0
    body_seconds: float = 10.0
    tls_handshake_seconds: float = 10.0
    idle_seconds: float = 30.0
    connections_per_source: int = 64
    connections_total: int = 1024
    max_headers: int = 64
    max_line_bytes: int = 8190


def _closing_response(status: int, title: str, reason: Reason, message: str) -> bytes:
    body = json.dumps({"error": reason.label, "message": message}).encode()
    head = (f"HTTP/1.1 {status} {title}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class ConnectionGuard:
    """Counts open connections per source and in total; knows the limits."""

    def __init__(self, limits: HttpLimits, on_refused: Callable[[Reason], None]) -> None:
        soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # Keep at least three quarters of the process's files for gRPC, SQLite and logs.
        self.total_cap = max(1, min(limits.connections_total, soft_nofile // 4))
        self.limits = limits
        self.on_refused = on_refused
        self.per_source: Counter[str] = Counter()
        self.total = 0

    def admit(self, source: str) -> str | None:
        """None if the connection may stay, else why not (and it is not counted)."""
        if self.total >= self.total_cap:
            return f"the hub holds its limit of {self.total_cap} HTTP connections"
        if self.per_source[source] >= self.limits.connections_per_source:
            return f"{source} holds its limit of {self.limits.connections_per_source} HTTP connections"
        self.per_source[source] += 1
        self.total += 1
        return None

    def release(self, source: str) -> None:
        self.total -= 1
        self.per_source[source] -= 1
        if not self.per_source[source]:
            del self.per_source[source]


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with the caps and the header bound."""

    __slots__ = ("_guard", "_source", "_admitted", "_header_timer", "_in_request")

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._source = ""
        self._admitted = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._source = str(peer[0]) if peer else "?"
        refusal = self._guard.admit(self._source)
        if refusal is not None:
            self._guard.on_refused(Reason.UNAVAILABLE)
            log.info("connection refused", extra={"source": self._source, "detail": refusal})
            transport.write(_closing_response(503, "Service Unavailable", Reason.UNAVAILABLE, refusal))  # type: ignore[attr-defined]
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._disarm_header_timer()
        self._guard.release(self._source)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        requests_before = self._request_count
        if not self._in_request and self._header_timer is None:
            self._arm_header_timer()  # the first byte of a new request
        super().data_received(data)
        if self._request_count > requests_before:  # its headers are complete
            self._in_request = True
            self._disarm_header_timer()

    def request_finished(self) -> None:
        self._in_request = False

    def _arm_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._guard.limits.header_seconds, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport is None:
            return
        self._guard.on_refused(Reason.TIMED_OUT)
        message = f"the request headers were not complete within {self._guard.limits.header_seconds:g} s"
        self.transport.write(_closing_response(408, "Request Timeout", Reason.TIMED_OUT, message))
        self.force_close()
        self.transport.close()


@web.middleware
async def track_requests(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Marks the end of each request, so the header bound starts again for the next one."""
    try:
        return await handler(request)
    finally:
        protocol = request.protocol
        if isinstance(protocol, GuardedRequestHandler):
            protocol.request_finished()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections use GuardedRequestHandler, with a TLS handshake bound."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        loop = asyncio.get_running_loop()
        manager = self._runner.server
        assert manager is not None
        limits = self._guard.limits

        def protocol() -> GuardedRequestHandler:
            options = {**manager._kwargs, "keepalive_timeout": limits.idle_seconds, "max_headers": limits.max_headers,
                       "max_line_size": limits.max_line_bytes, "max_field_size": limits.max_line_bytes}
            return GuardedRequestHandler(manager, self._guard, loop=loop, **options)

        self._server = await loop.create_server(
            protocol, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=limits.tls_handshake_seconds if self._ssl_context else None,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
