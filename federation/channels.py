"""One gRPC channel per peer, pinned to its certificate, and a circuit breaker per peer.

Two facts from running hubs shape this module (issue 11):
- gRPC's default reconnect backoff grows to 120 s, so a peer that restarted stayed
  "unavailable" for up to two minutes. Channels here back off between RECONNECT_BACKOFF_MS
  bounds (1-5 s), and `heard_from` replaces the channel of a peer that just called us, so the
  next call to it connects at once instead of waiting out the old channel's backoff.
- A peer that failed a moment ago should not make every query wait the full deadline. The
  breaker (`is_failing`) opens on a failure, lets one call through again after a bounded
  delay (doubling from BREAKER_RETRY_S up to BREAKER_MAX_RETRY_S), and closes on any contact.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from node.client import channel_options
from node.clock import Clock

# Reconnect backoff of a peer channel, in milliseconds (gRPC's default grows to 120 s).
RECONNECT_BACKOFF_MS = {"initial": 1000, "min": 1000, "max": 5000}
BREAKER_RETRY_S = 2.0
BREAKER_MAX_RETRY_S = 30.0
RETIRE_GRACE_S = 10.0  # a replaced channel stays open this long for calls still under way


def peer_channel_options(hub_id: str) -> list[tuple[str, object]]:
    return [
        *channel_options(hub_id),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS["initial"]),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS["min"]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS["max"]),
    ]


def open_peer_channel(address: str, hub_id: str, cert_pem: bytes) -> grpc.aio.Channel:
    """A channel that trusts exactly `cert_pem` for `hub_id`, with bounded reconnect backoff."""
    credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
    return grpc.aio.secure_channel(address, credentials, options=peer_channel_options(hub_id))


@dataclass
class _Breaker:
    failures: int = 0
    retry_at: float = 0.0  # monotonic seconds; calls are let through from then on


@dataclass(frozen=True)
class _Pinned:
    address: str
    cert_pem: str
    channel: grpc.aio.Channel


class ChannelPool:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._channels: dict[str, _Pinned] = {}
        self._breakers: dict[str, _Breaker] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    # -- channels ------------------------------------------------------------------------
    def channel(self, hub_id: str, address: str, cert_pem: str) -> grpc.aio.Channel:
        """The channel to this peer at this address and certificate (a new one if either changed)."""
        cached = self._channels.get(hub_id)
        if cached and (cached.address, cached.cert_pem) == (address, cert_pem):
            return cached.channel
        if cached:
            self._retire(cached.channel)
        channel = open_peer_channel(address, hub_id, cert_pem.encode())
        self._channels[hub_id] = _Pinned(address, cert_pem, channel)
        return channel

    def drop(self, hub_id: str) -> None:
        """Forget the peer's channel and breaker (the peer was removed)."""
        cached = self._channels.pop(hub_id, None)
        self._breakers.pop(hub_id, None)
        if cached:
            self._retire(cached.channel)

    def heard_from(self, hub_id: str) -> None:
        """The peer just reached us, so it is up: close its breaker, and if its channel is
        failing, replace it so the next call connects now rather than after the backoff."""
        was_failing = hub_id in self._breakers
        self.record_success(hub_id)
        cached = self._channels.get(hub_id)
        if cached is None:
            return
        state = cached.channel.get_state(try_to_connect=False)
        if was_failing or state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            del self._channels[hub_id]
            self._retire(cached.channel)

    def _retire(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(grace=RETIRE_GRACE_S))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for pinned in self._channels.values():
            await pinned.channel.close()
        self._channels.clear()
        for task in list(self._retiring):
            task.cancel()

    # -- circuit breaker -----------------------------------------------------------------
    def is_failing(self, hub_id: str) -> bool:
        """True while the peer failed recently and its retry delay has not passed: callers
        should report it absent at once instead of waiting for a deadline."""
        breaker = self._breakers.get(hub_id)
        return breaker is not None and self._clock.monotonic() < breaker.retry_at

    def record_failure(self, hub_id: str) -> None:
        breaker = self._breakers.setdefault(hub_id, _Breaker())
        delay = min(BREAKER_RETRY_S * 2**breaker.failures, BREAKER_MAX_RETRY_S)
        breaker.failures += 1
        breaker.retry_at = self._clock.monotonic() + delay

    def record_success(self, hub_id: str) -> None:
        self._breakers.pop(hub_id, None)
