"""The HTTP door's limits (node/app/http_guard.py): slow clients are closed by a bound, one
source cannot hold every connection, and neither starves gRPC or other HTTP clients.

Repeats the live attempt of issue 11: TLS connections that finish the handshake and then send
headers one byte at a time (slowloris)."""

from __future__ import annotations

import asyncio
import ssl
import time

import aiohttp
import pytest
from conftest import PASSPHRASE, make_hub_dir
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.app.http_guard import HttpLimits
from node.app.server import start
from node.client import open_channel
from node.hub import Hub
from node.tlsfiles import pinned_client_ssl_context

ATTACKER = "127.0.0.2"  # another loopback address: a second source


@pytest.fixture
async def guarded_hub(tmp_path, request):
    limits: HttpLimits = request.param
    hub = Hub.open(make_hub_dir(tmp_path / "hub"), PASSPHRASE.encode())
    running = await start(hub, host="127.0.0.1", grpc_port=0, http_port=0, http_limits=limits)
    yield running
    await running.stop(grace=1)


def tls(hub) -> ssl.SSLContext:
    return pinned_client_ssl_context(hub.identity.tls_cert_pem)


async def open_tls(running, source: str = ATTACKER):
    host, port = "127.0.0.1", int(running.hub.endpoint.http_url.rsplit(":", 1)[1])
    return await asyncio.open_connection(host, port, ssl=tls(running.hub), server_hostname=running.hub.config.hub_id,
                                         local_addr=(source, 0))


async def healthz(running) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(running.hub.endpoint.http_url + "/healthz", ssl=tls(running.hub),
                               server_hostname=running.hub.config.hub_id, timeout=aiohttp.ClientTimeout(total=10)) as r:
            return r.status


async def grpc_serving(running) -> bool:
    hub = running.hub
    async with open_channel(hub.endpoint.grpc_address, hub_id=hub.config.hub_id, cert_pem=hub.identity.tls_cert_pem,
                            tls=True, aio=True) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


async def slow_headers(running, stop: asyncio.Event) -> tuple[bytes, float]:
    """Send `GET / HTTP/1.1\\r\\nX: ...` a byte every 0.1 s until the hub closes; return what
    the hub answered and after how long."""
    reader, writer = await open_tls(running)
    started = time.monotonic()
    request = b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Slow: " + b"a" * 10_000
    answer = b""
    try:
        for byte in request:
            if stop.is_set():
                break
            writer.write(bytes([byte]))
            try:
                answer = await asyncio.wait_for(reader.read(1024), timeout=0.1)
            except TimeoutError:
                continue
            if answer or reader.at_eof():
                break
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
    return answer, time.monotonic() - started


@pytest.mark.parametrize("guarded_hub", [HttpLimits(header_seconds=1.0, connections_per_source=200)], indirect=True)
async def test_a_hundred_slow_header_connections_are_closed_by_the_bound_and_starve_nothing(guarded_hub):
    """Before: all 100 still open after 150 s, and with 256 open files gRPC and HTTP timed out."""
    stop = asyncio.Event()
    attack = [asyncio.create_task(slow_headers(guarded_hub, stop)) for _ in range(100)]
    await asyncio.sleep(0.3)  # the attack is under way
    # Meanwhile the hub serves HTTP and gRPC to others.
    assert await healthz(guarded_hub) == 200
    assert await grpc_serving(guarded_hub)
    try:
        results = await asyncio.wait_for(asyncio.gather(*attack), timeout=60)  # generous; the bound is 1 s
    finally:
        stop.set()
    closed = [answer for answer, _ in results if answer.startswith(b"HTTP/1.1 408")]
    assert len(closed) == 100, [a[:40] for a, _ in results if not a.startswith(b"HTTP/1.1 408")][:3]
    assert max(seconds for _, seconds in results) < 30  # far below 150 s; the bound is 1 s
    assert b'"error": "timed_out"' in closed[0]
    print(f"\n100 slow-header connections closed, the last after {max(s for _, s in results):.1f} s")
    assert await healthz(guarded_hub) == 200


@pytest.mark.parametrize("guarded_hub", [HttpLimits(connections_per_source=5, header_seconds=30)], indirect=True)
async def test_one_source_cannot_hold_more_than_its_connections(guarded_hub):
    held = [await open_tls(guarded_hub) for _ in range(5)]
    reader, writer = await open_tls(guarded_hub)
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    assert answer.startswith(b"HTTP/1.1 503") and b'"error": "unavailable"' in answer
    writer.close()
    # Another source is still served; and a freed slot is usable again.
    assert await healthz(guarded_hub) == 200
    held[0][1].close()
    await held[0][1].wait_closed()
    for _ in range(100):  # until the hub has noticed the closed connection
        reader, writer = await open_tls(guarded_hub)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        if answer.startswith(b"HTTP/1.1 200"):
            break
        await asyncio.sleep(0.05)
    assert answer.startswith(b"HTTP/1.1 200")
    for _, w in held[1:]:
        w.close()


@pytest.mark.parametrize("guarded_hub", [HttpLimits(connections_total=3, connections_per_source=100)], indirect=True)
async def test_the_total_connection_cap_holds(guarded_hub):
    held = [await open_tls(guarded_hub) for _ in range(3)]
    reader, writer = await open_tls(guarded_hub, "127.0.0.3")
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    assert answer.startswith(b"HTTP/1.1 503")
    for _, w in (*held, (reader, writer)):
        w.close()


@pytest.mark.parametrize("guarded_hub", [HttpLimits(body_seconds=0.5)], indirect=True)
async def test_a_frame_body_sent_too_slowly_is_refused_as_timed_out(guarded_hub):
    reader, writer = await open_tls(guarded_hub)
    writer.write(b"POST /v1/frames HTTP/1.1\r\nHost: hub\r\nContent-Type: application/vnd.smartregion.frame\r\n"
                 b"Content-Length: 1000\r\n\r\n" + b"\x01" * 10)
    answer = await asyncio.wait_for(reader.read(4096), timeout=20)
    assert answer.startswith(b"HTTP/1.1 408") and b"timed_out" in answer
    writer.close()


def test_the_hub_raises_its_open_file_limit_to_the_hard_limit():
    """Before: a soft limit of 256 let 232 slow connections make accept() fail for gRPC and HTTP."""
    import resource

    from node.app.server import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        limit = raise_open_file_limit()
        expected = hard if hard != resource.RLIM_INFINITY else 65536
        assert limit == expected == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
