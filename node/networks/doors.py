"""The hub's network doors, started and stopped with the hub (node/app/server.py) and wired
to its HTTP server (node/app/network_routes.py): each message becomes an uplink or a sealed
frame and goes into the one ingest pipeline. Every refusal is counted with its reason
(node/errors.py) and stores nothing; the door keeps serving."""

from __future__ import annotations

import hmac
import logging

from node.errors import Reason, Rejected
from node.hub import Hub
from node.ingest import Receipt
from node.networks import events
from node.networks.config import BrokerConfig
from node.networks.mqtt import Handler, Subscription
from node.networks.uplink import LorawanIngest, NetworkMetrics

log = logging.getLogger("smartregion.networks")
MAX_FRAME_MESSAGE_BYTES = 96 * 1024  # a sealed frame (at most 65 593 bytes) in base64 inside a Span message


class NetworkDoors:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.metrics = NetworkMetrics(hub.metrics)
        self.lorawan = LorawanIngest(
            hub.ingest, hub.storage, hub.identity.key_encryption_key, hub.identity.hub_id, hub.networks.codecs, self.metrics
        )
        self.subscriptions = [
            Subscription(b, self._mqtt_handler(b), hub.clock, self.metrics.reconnects.labels(b.name).inc)
            for b in hub.networks.brokers
        ]

    # -- one message, whatever the transport ------------------------------------------------
    async def _too_large(self, door: str, size: int, limit: int) -> Rejected:
        self.metrics.uplinks.labels(door, Reason.FRAME_TOO_LARGE.label).inc()
        return await self.hub.ingest.reject(Reason.FRAME_TOO_LARGE, f"the {door} message is {size} bytes; the limit is {limit}")

    async def uplink(self, door: str, marshaler: str, body: bytes) -> Receipt:
        """A network server's uplink event -> stored readings, or Rejected."""
        if len(body) > events.MAX_EVENT_BYTES:
            raise await self._too_large(door, len(body), events.MAX_EVENT_BYTES)
        try:
            uplink = events.UPLINK_PARSERS[(door, marshaler)](body, self.hub.clock.now_ms())
        except events.EventError as exc:
            self.metrics.uplinks.labels(door, Reason.MALFORMED_UPLINK.label).inc()
            raise await self.hub.ingest.reject(Reason.MALFORMED_UPLINK, str(exc)) from None
        return await self.lorawan.submit(uplink)

    async def frame(self, door: str, body: bytes) -> Receipt | None:
        """A sealed frame from a gateway (raw) or from Span (inside its JSON message)."""
        if len(body) > MAX_FRAME_MESSAGE_BYTES:
            raise await self._too_large(door, len(body), MAX_FRAME_MESSAGE_BYTES)
        if door == "span":
            if events.is_span_keepalive(body):
                return None
            try:
                body = events.span_frame(body)
            except events.EventError as exc:
                self.metrics.uplinks.labels(door, Reason.MALFORMED_UPLINK.label).inc()
                raise await self.hub.ingest.reject(Reason.MALFORMED_UPLINK, str(exc)) from None
        try:
            (receipt,) = await self.hub.ingest.submit_batch([body])
        except Rejected as exc:
            self.metrics.uplinks.labels(door, exc.reason.label).inc()
            raise
        self.metrics.uplinks.labels(door, "stored").inc()
        return receipt

    def _mqtt_handler(self, broker: BrokerConfig) -> Handler:
        async def handle(topic: str, payload: bytes) -> None:
            try:
                if broker.format in ("span", "frames"):
                    await self.frame(broker.format, payload)
                else:
                    await self.uplink(broker.format, broker.marshaler, payload)
            except Rejected as exc:  # counted and stored nothing; acknowledged so it is not sent again
                log.warning("message refused", extra={"subscription": broker.name, "topic": topic, "reason": exc.reason.label,
                                                      "detail": exc.message})

        return handle

    # -- HTTP: shared-secret check ----------------------------------------------------------
    async def check_secret(self, door: str, authorization: str | None) -> None:
        endpoint = self.hub.networks.http.get(door)
        if endpoint is None:
            raise Rejected(Reason.NOT_FOUND, f"this hub has no {door} HTTP endpoint (networks.toml [http.{door}])")
        presented = (authorization or "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(presented, endpoint.secret):
            self.metrics.uplinks.labels(door, Reason.UNAUTHENTICATED.label).inc()
            raise await self.hub.ingest.reject(Reason.UNAUTHENTICATED, f"the {door} request does not carry this hub's shared secret")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        for subscription in self.subscriptions:
            subscription.start()

    async def stop(self) -> None:
        for subscription in self.subscriptions:
            await subscription.stop()
