"""Time for the hub, injected rather than read from the module `time` directly.

Every time read in domain code goes through a `Clock` that the `Hub` owns (`hub.clock`), like
Synapse's `hs.get_clock()`. Production uses `SystemClock`; tests pass a `ManualClock` and move
it forward, so expiry, quotas, budgets, descriptor lifetimes and backoff are tested without
sleeping for wall-clock time to pass, and a run across UTC midnight cannot flake.

Two readings, for two jobs:
- `now_ms()`: wall-clock UTC milliseconds since the epoch — timestamps that are stored, signed
  or compared with other hubs' (agreement windows, request freshness, audit entries).
- `monotonic()`: seconds that never go backwards — durations and deadlines inside one process
  (latencies, timeouts, backoff), immune to the wall clock being set.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


def utc_day(now_ms: int) -> str:
    """The UTC calendar day of a wall-clock reading, as YYYY-MM-DD."""
    return dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).strftime("%Y-%m-%d")


class SystemClock:
    """The machine's clocks."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to (tests). `sleep` returns once the clock has been
    advanced past its deadline, so code waiting on it can be driven step by step."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = now_ms
        self._monotonic = 1000.0
        self._advanced: asyncio.Event | None = None  # made by the first sleep, in its loop

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now_ms += round(seconds * 1000)
        self._monotonic += seconds
        if self._advanced is not None:
            self._advanced.set()
            self._advanced = None

    def set_now_ms(self, now_ms: int) -> None:
        """Jump the wall clock (as an operator or NTP would); monotonic time is unaffected."""
        self._now_ms = now_ms

    async def sleep(self, seconds: float) -> None:
        deadline = self._monotonic + seconds
        while self._monotonic < deadline:
            if self._advanced is None:
                self._advanced = asyncio.Event()
            await self._advanced.wait()


SYSTEM_CLOCK = SystemClock()
