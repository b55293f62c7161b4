"""Run a hub: the gRPC server (ingest, admin, health, reflection) and the HTTP server, in
one event loop, until stopped. TLS on both unless `insecure` is set explicitly."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from federation.query_service import QueryService
from federation.retention_promises import promised_history
from federation.service import Federation
from node import retention
from node.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    federation_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    query_service_pb2,
)
from node.app import catalog_guard, grpc_limits, network_routes
from node.app.certificates import ServedCertificate
from node.app.dashboard.data import DashboardData
from node.app.dashboard.routes import Dashboard
from node.app.grpc_sources import SourceLimitInterceptor
from node.app.http_app import build_app
from node.app.http_guard import ConnectionGuard, GuardedSite, HttpLimits
from node.app.network_doors import NetworkDoors
from node.app.servicers import federation as federation_servicer
from node.app.servicers import query as query_servicer
from node.app.servicers.admin import AdminServicer
from node.app.servicers.auth import AdminAuthInterceptor
from node.app.servicers.authenticated import add_service
from node.app.servicers.ingest import IngestServicer
from node.errors import Rejected
from node.hub import Endpoint, Hub
from node.tlsfiles import server_ssl_context

log = logging.getLogger("smartregion.server")
MAX_MESSAGE_BYTES = grpc_limits.CEILING_BYTES  # the largest request message gRPC accepts at all
SERVICE_NAMES = (
    ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
    federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name,
    query_service_pb2.DESCRIPTOR.services_by_name["Query"].full_name,
)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name


def watch_writable(hub: Hub, health: health_aio.HealthServicer) -> None:
    """Ingest is NOT_SERVING while no write can succeed (a full disk), SERVING again after."""
    pending: set[asyncio.Task[None]] = set()

    def changed(writable: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if writable else health_pb2.HealthCheckResponse.NOT_SERVING
        task = asyncio.get_running_loop().create_task(health.set(INGEST_SERVICE, status))
        pending.add(task)
        task.add_done_callback(pending.discard)

    hub.ingest.on_writable = changed


@dataclass
class RunningHub:
    hub: Hub
    grpc_server: grpc.aio.Server
    http_runner: web.AppRunner
    health: health_aio.HealthServicer
    federation: Federation
    background: asyncio.Task
    stopping: asyncio.Event
    housekeeping: asyncio.Task | None = None  # retention (node/retention.py)
    networks: NetworkDoors | None = None
    certificates: ServedCertificate | None = None  # the served TLS certificate (renewal, expiry)
    certificate_watch: asyncio.Task | None = None

    async def stop(self, grace: float = 5.0) -> None:
        for name in (*SERVICE_NAMES, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.stopping.set()
        if self.networks is not None:
            await self.networks.stop()
        self.federation.wake()
        await self.background
        if self.housekeeping is not None:
            await self.housekeeping
        if self.certificate_watch is not None:
            await self.certificate_watch
        await self.grpc_server.stop(grace)
        await self.federation.close()
        await self.http_runner.cleanup()
        await self.hub.ingest.close()
        self.hub.hub_dir.clear_endpoint()
        self.hub.close()
        log.info("stopped", extra={"hub_id": self.hub.config.hub_id})


async def start(
    hub: Hub,
    *,
    host: str | None = None,
    grpc_port: int | None = None,
    http_port: int | None = None,
    insecure: bool = False,
    dashboard_read_only: bool = False,
    http_limits: HttpLimits | None = None,
) -> RunningHub:
    net = hub.config.network
    host = host or net.listen_host
    grpc_port = net.grpc_port if grpc_port is None else grpc_port
    http_port = net.http_port if http_port is None else http_port

    async def count_refused(method: str, rejected: Rejected) -> None:
        if method.startswith(grpc_limits.INGEST_PREFIX):
            hub.ingest.count_refusal(rejected.reason)
        else:
            hub.metrics.rejected(rejected.reason)

    fed_config = hub.config.federation
    federation = Federation(hub, fed_config.refresh_seconds, fed_config.retry_base_seconds, fed_config.retry_max_seconds)

    async def count_source_refused(source: str, method: str, rejected: Rejected) -> None:
        hub.metrics.rejected(rejected.reason)
        await federation.refusals.count(source, "unknown", method, rejected.reason.label, rejected.message)

    server = grpc.aio.server(
        interceptors=[AdminAuthInterceptor(lambda: hub.config.admin_token_sha256),
                      SourceLimitInterceptor(hub.clock, count_source_refused),
                      grpc_limits.RequestLimitInterceptor(count_refused)],
        options=grpc_limits.SERVER_OPTIONS,
        maximum_concurrent_rpcs=grpc_limits.MAXIMUM_CONCURRENT_RPCS,
    )
    try:
        await catalog_guard.check_and_record(hub, federation.ledger)
    except BaseException:
        hub.close()  # a hub that will not serve lets go of its data directory
        raise
    ingest_pb2_grpc.add_IngestServicer_to_server(IngestServicer(hub), server)
    queries = QueryService(federation)
    certificates = ServedCertificate(hub, federation)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(hub, federation, queries, certificates), server)
    # Every Federation and Query method is authenticated before its handler runs (but the public ones).
    add_service(server, federation_pb2.DESCRIPTOR.services_by_name["Federation"],
                federation_servicer.FederationServicer(federation), federation.authenticator, federation_servicer.PUBLIC_METHODS)
    add_service(server, query_service_pb2.DESCRIPTOR.services_by_name["Query"],
                query_servicer.QueryServicer(queries), federation.authenticator, query_servicer.PUBLIC_METHODS)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = f"{_url_host(host)}:{grpc_port}"
    try:
        bound = server.add_insecure_port(address) if insecure else server.add_secure_port(address, certificates.grpc_credentials())
    except RuntimeError:  # grpcio's way of saying the address is taken
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address} (in use?); choose another with --grpc-port")
    await server.start()

    dashboard = Dashboard(DashboardData(federation, queries), lambda: hub.config.admin_token_sha256, dashboard_read_only, hub.clock)
    http_limits = http_limits or HttpLimits()
    networks = NetworkDoors(hub, federation.refusals)  # LoRaWAN, NB-IoT and MQTT doors (DATA_DIR/networks.toml)
    app = build_app(hub, dashboard, federation, http_limits)
    network_routes.add_routes(app, networks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ssl_context = None if insecure else server_ssl_context(hub.identity.tls_chain_pem, hub.identity.tls_key_pem)
    if ssl_context is not None:
        certificates.serve_http_with(ssl_context)
    site = GuardedSite(runner, host, http_port, ConnectionGuard(http_limits, hub.metrics.rejected), ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await server.stop(0)
        await runner.cleanup()
        raise
    http_bound = runner.addresses[0][1]  # the real port when 0 was asked

    advertise = net.advertise_host if host in ("0.0.0.0", "::") else host
    hub.endpoint = Endpoint(
        grpc_address=f"{_url_host(advertise)}:{bound}",
        http_url=f"{'http' if insecure else 'https'}://{_url_host(advertise)}:{http_bound}",
        tls=not insecure,
    )
    for name in (*SERVICE_NAMES, ""):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    watch_writable(hub, health)
    hub.hub_dir.write_endpoint(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "hub_id": hub.config.hub_id,
            "grpc_address": hub.endpoint.grpc_address,
            "http_url": hub.endpoint.http_url,
            "tls": hub.endpoint.tls,
        }
    )
    log.info(
        "serving",
        extra={
            "hub_id": hub.config.hub_id,
            "municipality": hub.config.municipality,
            "grpc": hub.endpoint.grpc_address,
            "http": hub.endpoint.http_url,
            "tls": hub.endpoint.tls,
            "host": socket.gethostname(),
        },
    )
    stopping = asyncio.Event()
    background = asyncio.create_task(federation.run(stopping), name="federation")
    networks.start()
    promises = lambda: promised_history(federation)  # noqa: E731
    await retention.run_logged(hub, promises)  # expired readings go before the first answer
    housekeeping = asyncio.create_task(retention.loop(hub, promises, stopping), name="retention")
    watch = None if insecure else asyncio.create_task(certificates.monitor(stopping), name="certificate")
    return RunningHub(hub, server, runner, health, federation, background, stopping, housekeeping, networks,
                      certificates, watch)


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit (each connection is a file; a
    default soft limit of 256 or 1024 let slow clients make accept() fail). Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.warning("cannot raise the open-file limit", extra={"soft": soft, "hard": hard})
            return soft
    return target


async def serve_forever(hub: Hub, **options) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly."""
    limit = raise_open_file_limit()
    log.info("open-file limit", extra={"nofile": limit})
    # Handlers first: start() publishes the endpoint file, and a SIGTERM sent as soon as a
    # launcher sees it must still shut the hub down cleanly (not kill it with exit -15).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start(hub, **options)
    try:
        await stop.wait()
        log.info("shutting down", extra={"hub_id": hub.config.hub_id})
    finally:
        await running.stop()
