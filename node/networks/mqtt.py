"""The hub's MQTT subscriptions (aiomqtt, over paho-mqtt).

Each subscription keeps one broker connection with a fixed client id and a persistent session
(clean_session false), so the broker holds QoS 1 messages while the hub is away. Messages are
handled one at a time, in the order the broker delivers them (LoRaWAN frame counters must
arrive in order), and a QoS 1 message is acknowledged (PUBACK) only after its handler returned:
after its readings were committed, or after it was refused for good and counted. If a handler
fails unexpectedly (the database is unavailable, say), the message is not acknowledged and the
connection is dropped, so the broker delivers it again. A lost connection is retried with
bounded exponential backoff, read from the hub's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt

from node.clock import Clock
from node.networks.config import BrokerConfig

log = logging.getLogger("smartregion.networks.mqtt")

Handler = Callable[[str, bytes], Awaitable[None]]


@dataclass
class SubscriptionState:
    connected: bool = False
    messages: int = 0
    connections: int = 0
    last_error: str = ""


def _tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    if not broker.tls:
        return None
    context = ssl.create_default_context(cafile=broker.ca_file or None)
    if broker.cert_file:
        context.load_cert_chain(broker.cert_file, broker.key_file)
    return context


class Subscription:
    def __init__(self, broker: BrokerConfig, handler: Handler, clock: Clock, on_reconnect: Callable[[], None] | None = None) -> None:
        self.broker = broker
        self._handler = handler
        self._clock = clock
        self._on_reconnect = on_reconnect or (lambda: None)
        self.state = SubscriptionState()
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()  # set while subscribed (tests and status wait on it)

    def _client(self) -> aiomqtt.Client:
        b = self.broker
        client = aiomqtt.Client(
            b.host, b.port, identifier=b.client_id, clean_session=False, username=b.username or None,
            password=b.password or None, tls_context=_tls_context(b), keepalive=30, timeout=10,
        )
        # aiomqtt has no switch for it: ask its paho client to leave acknowledging to us, before
        # connecting, so that messages the broker held for our session are not acknowledged early.
        client._client.manual_ack_set(True)
        return client

    async def _session(self) -> None:
        client = self._client()
        async with client:
            for topic in self.broker.topics:
                await client.subscribe(topic, qos=self.broker.qos)
            self.state.connected = True
            self.state.connections += 1
            self.subscribed.set()
            log.info("subscribed", extra={"subscription": self.broker.name, "topics": list(self.broker.topics)})
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                await self._handler(str(message.topic), payload)
                self.state.messages += 1
                if message.qos > 0:
                    client._client.ack(message.mid, message.qos)

    async def run(self) -> None:
        delay = self.broker.backoff_initial_seconds
        while True:
            try:
                await self._session()
                delay = self.broker.backoff_initial_seconds
            except aiomqtt.MqttError as exc:
                self.state.last_error = str(exc)
                if self.state.connected:
                    delay = self.broker.backoff_initial_seconds  # it worked until now: retry soon
                log.warning("broker connection lost", extra={"subscription": self.broker.name, "error": str(exc), "retry_in_s": delay})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a handler failed: the message stays unacknowledged and comes again
                self.state.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("message handling failed; reconnecting so the broker delivers it again",
                              extra={"subscription": self.broker.name})
            self.state.connected = False
            self.subscribed.clear()
            self._on_reconnect()
            await self._clock.sleep(delay)
            delay = min(delay * 2, self.broker.backoff_max_seconds)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"mqtt:{self.broker.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.state.connected = False
