"""The hub's HTTP server (aiohttp): sealed-frame ingest for sensors that cannot speak gRPC,
health, Prometheus metrics, open data (node/app/open_data.py) and the dashboard
(node/app/dashboard/)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from node.app import open_data
from node.app.http_guard import HttpLimits, track_requests
from node.errors import Reason, Rejected
from node.frames import MAX_FRAME
from node.hub import Hub
from node.hubdir import token_matches

if TYPE_CHECKING:
    from federation.service import Federation
    from node.app.dashboard.routes import Dashboard

HUB_KEY = web.AppKey("hub", Hub)
FEDERATION_KEY: web.AppKey[Federation] = web.AppKey("federation")
LIMITS_KEY = web.AppKey("limits", HttpLimits)
FRAME_CONTENT_TYPE = "application/vnd.smartregion.frame"


def error_response(rejected: Rejected) -> web.Response:
    return web.json_response(
        {"error": rejected.reason.label, "message": rejected.message}, status=rejected.reason.http_status
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, or its first `limit` bytes. (`content.read(n)` alone returns only what has
    arrived so far, which truncates a frame that comes in several TCP or TLS segments.)"""
    body = bytearray()
    while len(body) < limit:
        chunk = await request.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def post_frame(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    if request.content_length is not None and request.content_length > MAX_FRAME:
        rejected = await hub.ingest.reject(
            Reason.FRAME_TOO_LARGE, f"the frame is {request.content_length} bytes; the limit is {MAX_FRAME}"
        )
        return error_response(rejected)
    seconds = request.app[LIMITS_KEY].body_seconds
    try:
        try:
            async with asyncio.timeout(seconds):
                body = await read_body(request, MAX_FRAME + 1)
        except TimeoutError:
            raise await hub.ingest.reject(Reason.TIMED_OUT, f"the frame did not arrive within {seconds:g} s") from None
        receipts = await hub.ingest.submit_batch([body])
    except Rejected as rejected:
        return error_response(rejected)
    r = receipts[0]
    return web.json_response(
        {"sensor_id": r.sensor_id, "counter": r.counter, "readings_stored": r.stored, "readings_duplicate": r.duplicate}
    )


async def health(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    return web.json_response({"status": "serving", "hub_id": hub.config.hub_id, "version": hub.version})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics name peers and give per-peer query counts and ingest totals, so they
    are for the operator: `Authorization: Bearer <admin token>` (Prometheus: `authorization:
    credentials_file: admin.token`)."""
    hub = request.app[HUB_KEY]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token_matches(token.strip(), hub.config.admin_token_sha256):
        hub.metrics.rejected(Reason.UNAUTHENTICATED)
        return web.json_response({"error": Reason.UNAUTHENTICATED.label,
                                  "message": "metrics need 'Authorization: Bearer <admin token>'"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})
    federation = request.app.get(FEDERATION_KEY)
    if federation is not None:
        await federation.refresh_metrics()
    body = request.app[HUB_KEY].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def hub_catalog(request: web.Request) -> web.Response:
    """What this hub offers: its datasets, metrics, units and classifications (not the data)."""
    hub = request.app[HUB_KEY]
    return web.json_response({"hub_id": hub.config.hub_id, "municipality": hub.config.municipality, **hub.catalog.to_dict()})


async def open_datasets(request: web.Request) -> web.Response:
    return web.json_response(await open_data.datasets(request.app[HUB_KEY]))


async def open_aggregate(request: web.Request) -> web.Response:
    try:
        rows = await open_data.aggregate(request.app[HUB_KEY], request.match_info["dataset"], request.match_info["metric"], request.query)
    except Rejected as rejected:
        return error_response(rejected)
    if request.query.get("format") == "csv":
        return web.Response(text=open_data.to_csv(rows), content_type="text/csv")
    return web.json_response({"rows": rows})


def build_app(hub: Hub, dashboard: Dashboard | None = None, federation: Federation | None = None,
              limits: HttpLimits | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_FRAME + 1, middlewares=[track_requests])
    app[HUB_KEY] = hub
    app[LIMITS_KEY] = limits or HttpLimits()
    if federation is not None:
        app[FEDERATION_KEY] = federation
    if dashboard is not None:
        dashboard.add_routes(app)
    app.router.add_get("/v1/catalog", hub_catalog)
    app.router.add_get("/open/v1/datasets", open_datasets)
    app.router.add_get("/open/v1/{dataset}/{metric}", open_aggregate)
    app.router.add_post("/v1/frames", post_frame)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", metrics)
    return app
