"""HTTP endpoints for network servers (docs/integrations.md): thin translation to node/networks.

    POST /v1/networks/chirpstack?event=up   ChirpStack v4 HTTP integration (JSON or Protobuf marshaler)
    POST /v1/networks/tts                   The Things Stack webhook (uplink message JSON)

Both require `Authorization: Bearer <shared secret>` (networks.toml [http.chirpstack] / [http.tts]).
ChirpStack posts every event type to one URL; events other than `up` are acknowledged and ignored.
"""

from __future__ import annotations

from aiohttp import web

from node.app.http_app import error_response, read_body
from node.app.network_doors import NetworkDoors
from node.errors import Rejected
from node.ingest import Receipt
from node.networks import events

DOORS_KEY = web.AppKey("network_doors", NetworkDoors)
PROTOBUF_TYPES = ("application/octet-stream", "application/x-protobuf", "application/protobuf")


def _receipt(receipt: Receipt) -> web.Response:
    return web.json_response({"sensor_id": receipt.sensor_id, "counter": receipt.counter,
                              "readings_stored": receipt.stored, "readings_duplicate": receipt.duplicate})


async def _body(request: web.Request, doors: NetworkDoors, door: str) -> bytes:
    await doors.check_secret(door, request.headers.get("Authorization"))
    if request.content_length is not None and request.content_length > events.MAX_EVENT_BYTES:
        raise await doors._too_large(door, request.content_length, events.MAX_EVENT_BYTES)
    return await read_body(request, events.MAX_EVENT_BYTES + 1)


def _source(request: web.Request) -> str:
    return f"http:{request.remote or 'unknown'}"


async def chirpstack(request: web.Request) -> web.Response:
    doors = request.app[DOORS_KEY]

    async def handle() -> web.Response:
        body = await _body(request, doors, "chirpstack")
        if request.query.get("event") != "up":
            return web.json_response({"ignored": request.query.get("event", "")})
        marshaler = "protobuf" if request.content_type in PROTOBUF_TYPES else "json"
        return _receipt(await doors.uplink("chirpstack", marshaler, body))

    try:
        return await doors.from_source(_source(request), "chirpstack", handle)
    except Rejected as rejected:
        return error_response(rejected)


async def tts(request: web.Request) -> web.Response:
    doors = request.app[DOORS_KEY]

    async def handle() -> web.Response:
        body = await _body(request, doors, "tts")
        return _receipt(await doors.uplink("tts", "json", body))

    try:
        return await doors.from_source(_source(request), "tts", handle)
    except Rejected as rejected:
        return error_response(rejected)


def add_routes(app: web.Application, doors: NetworkDoors) -> None:
    app[DOORS_KEY] = doors
    app.router.add_post("/v1/networks/chirpstack", chirpstack)
    app.router.add_post("/v1/networks/tts", tts)
