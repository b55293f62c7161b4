"""The hub's network doors, started and stopped with the hub (node/app/server.py) and wired
to its HTTP server (node/app/network_routes.py): each message becomes an uplink or a sealed
frame and goes into the one ingest pipeline. Every refusal is counted with its reason
(node/errors.py) and stores nothing; the door keeps serving.

Refusals are bounded per source (an HTTP door's client address, an MQTT subscription): a
token bucket of REFUSALS_BURST, refilled at REFUSALS_PER_SECOND. From the refusal that finds
it empty, every message of the source is refused at once, before it is read, with
`too_many_refusals` (HTTP 429) until the bucket has a token again. A network server that
shares its address with a flooder (or an MQTT subscription that carries one) is throttled
with it: the price of not reading the flood. Retries of a sender's own (`replayed`) and overload refusals
(`rate_limited`, `storage_full`) do not count: they are not garbage. Refusals are aggregated
in the audit log per source and minute (node/audit.py RefusalTally) and logged at most once
per source and minute."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from node.audit import RefusalTally
from node.errors import Reason, Rejected
from node.hub import Hub
from node.ingest import Receipt, SensorRateLimit
from node.networks import events
from node.networks.config import BrokerConfig
from node.networks.mqtt import Handler, Subscription
from node.networks.uplink import LorawanIngest, NetworkMetrics

log = logging.getLogger("smartregion.networks")
MAX_FRAME_MESSAGE_BYTES = 96 * 1024  # a sealed frame (at most 65 593 bytes) in base64 inside a Span message
REFUSALS_BURST = 200
REFUSALS_PER_SECOND = 20.0
MAX_THROTTLED_SOURCES = 4096  # memory bound: beyond it the table starts afresh
NOT_GARBAGE = frozenset({Reason.REPLAYED, Reason.RATE_LIMITED, Reason.STORAGE_FULL, Reason.INTERNAL, Reason.TOO_MANY_REFUSALS})
LOG_EVERY_MS = 60_000
T = TypeVar("T")


class NetworkDoors:
    def __init__(self, hub: Hub, refusals: RefusalTally) -> None:
        self.hub = hub
        self.refusals = refusals
        self.refusal_rate = SensorRateLimit(REFUSALS_PER_SECOND, REFUSALS_BURST, hub.clock)
        self._throttled_until: dict[str, float] = {}  # source -> monotonic time its bucket has a token again
        self._logged_at: dict[str, int] = {}
        self.metrics = NetworkMetrics(hub.metrics)
        self.lorawan = LorawanIngest(
            hub.ingest, hub.storage, hub.identity.key_encryption_key, hub.identity.hub_id, hub.networks.codecs, self.metrics
        )
        self.subscriptions = [
            Subscription(b, self._mqtt_handler(b), hub.clock, self.metrics.reconnects.labels(b.name).inc)
            for b in hub.networks.brokers
        ]

    # -- refusals per source (the module's docstring) ----------------------------------------
    async def from_source(self, source: str, door: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` for one message from `source`, unless the source is over its refusals."""
        until = self._throttled_until.get(source)
        if until is not None and self.hub.clock.monotonic() < until:
            rejected = Rejected(Reason.TOO_MANY_REFUSALS, f"{source} sent more than {REFUSALS_BURST:,} refused messages at "
                                                          f"{REFUSALS_PER_SECOND:g}/s; retry in {until - self.hub.clock.monotonic():.1f} s")
            self.metrics.uplinks.labels(door, rejected.reason.label).inc()
            self.hub.ingest.count_refusal(rejected.reason)
            await self._refused(source, door, rejected)
            raise rejected
        try:
            return await work()
        except Rejected as rejected:
            if rejected.reason not in NOT_GARBAGE:
                wait = self.refusal_rate.allow(source, 1)
                if wait:
                    if len(self._throttled_until) >= MAX_THROTTLED_SOURCES:
                        self._throttled_until.clear()
                    self._throttled_until[source] = self.hub.clock.monotonic() + wait
            await self._refused(source, door, rejected)
            raise

    async def _refused(self, source: str, door: str, rejected: Rejected) -> None:
        await self.refusals.count(source, "unknown", f"networks.{door}", rejected.reason.label, rejected.message)
        now = self.hub.clock.now_ms()
        if now - self._logged_at.get(source, -LOG_EVERY_MS) >= LOG_EVERY_MS:
            if len(self._logged_at) >= MAX_THROTTLED_SOURCES:
                self._logged_at.clear()
            self._logged_at[source] = now
            log.warning("message refused (further refusals from this source are counted, logged once a minute)",
                        extra={"source": source, "door": door, "reason": rejected.reason.label, "detail": rejected.message})

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
        source = f"mqtt:{broker.name}"

        async def one(payload: bytes) -> Receipt | None:
            if broker.format in ("span", "frames"):
                return await self.frame(broker.format, payload)
            return await self.uplink(broker.format, broker.marshaler, payload)

        async def handle(topic: str, payload: bytes) -> None:
            # A refusal is counted, audited per minute and stores nothing; acknowledged so it is not sent again.
            with contextlib.suppress(Rejected):
                await self.from_source(source, broker.format, lambda: one(payload))

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
