"""Accepting sealed frames: authenticate, check order, validate, commit durably.

A frame is accepted only if it is addressed to this hub, comes from an enrolled, unrevoked
sensor, authenticates under that sensor's key, carries a counter above the last one accepted
for the sensor, and holds valid SenML. Its readings and the new counter are committed in one
transaction; only then is it acknowledged. Anything else raises Rejected and stores nothing
but a rejection count.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node import catalog, frames, ids, senml
from node.clock import SYSTEM_CLOCK, Clock
from node.errors import Reason, Rejected
from node.sensors import unwrap_key
from node.storage import Storage
from node.storage.base import CounterConflict, FrameOutcome, FrameToCommit, SensorRecord, StorageFull, Store

log = logging.getLogger("smartregion.ingest")
MAX_FRAMES_PER_BATCH = 1000
# A stream commits when this many readings or frames are pending (one transaction each).
STREAM_COMMIT_READINGS = 20_000
STREAM_COMMIT_FRAMES = 256
# Rejections are tallied in memory and written with the next commit, or after this long.
REJECTION_FLUSH_SECONDS = 1.0


@dataclass
class _KnownSensor:
    record: SensorRecord
    aead: AESGCM
    metrics: dict[str, catalog.Metric]
    previous_aead: AESGCM | None = None  # the key a rekey replaced (node/admin.py rekey_sensor)


@dataclass(frozen=True)
class Receipt:
    sensor_id: str
    counter: int
    stored: int
    duplicate: int


# Decoding runs on the event loop: a batch yields to other tasks after this many readings.
YIELD_EVERY_READINGS = 5_000


class SensorRateLimit:
    """A token bucket per sensor, counted in readings: `burst` at once, refilled at `rate` per
    second (docs/limits.md). Frames over it are refused as `rate_limited` (retryable)."""

    def __init__(self, rate: float, burst: int, clock: Clock = SYSTEM_CLOCK) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("the ingest rate and burst must be positive")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # sensor -> (tokens, at monotonic time)

    def allow(self, sensor_id: str, readings: int) -> float:
        """Take `readings` tokens and return 0, or take none and return the seconds until
        they would be there."""
        now = self._clock.monotonic()
        tokens, at = self._buckets.get(sensor_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if readings > tokens:
            self._buckets[sensor_id] = (tokens, now)
            return (readings - tokens) / self.rate
        self._buckets[sensor_id] = (tokens - readings, now)
        return 0.0

    def give_back(self, sensor_id: str, readings: int) -> None:
        """Return tokens of readings that were refused after all (the batch was not stored)."""
        tokens, at = self._buckets.get(sensor_id, (float(self.burst), self._clock.monotonic()))
        self._buckets[sensor_id] = (min(float(self.burst), tokens + readings), at)


Tally = tuple[Counter[str], Counter[str]]  # rejections by reason, by sensor


class RejectionTally:
    """Rejection counts not yet written. A refusal costs a counter increment, not a durable
    transaction: the counts go to storage with the next commit, or in one write per
    REJECTION_FLUSH_SECONDS, so a flood of garbage cannot make the single writer fsync per
    input. A crash loses at most that interval's counts (never a reading).

    Counts being written stay "in flight" until the writer thread has committed them, and
    readers merge on the writer thread too, so a reader sees every count exactly once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unwritten: Tally = (Counter(), Counter())
        self._in_flight: list[Tally] = []

    def add(self, reason: Reason, sensor_id: str | None) -> None:
        with self._lock:
            self._unwritten[0][reason.label] += 1
            if sensor_id:
                self._unwritten[1][sensor_id] += 1

    def take(self) -> Tally | None:
        """The counts to write now (in flight until `written` or `failed`), or None."""
        with self._lock:
            if not self._unwritten[0]:
                return None
            taken, self._unwritten = self._unwritten, (Counter(), Counter())
            self._in_flight.append(taken)
            return taken

    def written(self, taken: Tally | None) -> None:
        """Called on the writer thread, in the job that committed them."""
        if taken is not None:
            with self._lock:
                self._in_flight.remove(taken)

    def failed(self, taken: Tally | None) -> None:
        """Their write failed: they are unwritten again."""
        if taken is not None:
            with self._lock:
                if taken in self._in_flight:
                    self._in_flight.remove(taken)
                self._unwritten[0].update(taken[0])
                self._unwritten[1].update(taken[1])

    def pending(self) -> Tally:
        """Every count not committed yet (call on the writer thread for an exact total)."""
        with self._lock:
            by_reason, by_sensor = Counter(self._unwritten[0]), Counter(self._unwritten[1])
            for taken in self._in_flight:
                by_reason.update(taken[0])
                by_sensor.update(taken[1])
            return by_reason, by_sensor


class IngestService:
    def __init__(
        self,
        hub_id: bytes,
        key_encryption_key: bytes,
        storage: Storage,
        on_rejection: Callable[[Reason], None] | None = None,
        on_accepted: Callable[[int], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        datasets: catalog.Catalog = catalog.DEFAULT,
        rate_limit: SensorRateLimit | None = None,
    ) -> None:
        self.hub_id = hub_id
        self._clock = clock
        self._kek = key_encryption_key
        self._storage = storage
        self._sensors: dict[str, _KnownSensor] = {}
        self.catalog = datasets  # the hub's catalog (hub configuration): what a reading is checked against
        self._on_rejection = on_rejection or (lambda reason: None)
        self._on_accepted = on_accepted or (lambda readings: None)
        self._clock = clock
        self.rate_limit = rate_limit or SensorRateLimit(20_000.0, 1_000_000, clock)
        self.unwritten_rejections = RejectionTally()
        self._flush_task: asyncio.Task[None] | None = None
        # False from a write that failed for a full disk until readings are committed again
        # (hysteresis: a small write of refusal counts does not count); health follows it.
        self.writable = True
        self.on_writable: Callable[[bool], None] = lambda writable: None

    def forget(self, sensor_id: str) -> None:
        """Drop a cached sensor (after revocation) so the next frame re-reads it."""
        self._sensors.pop(sensor_id, None)

    async def _sensor(self, sensor_id: str) -> _KnownSensor | None:
        known = self._sensors.get(sensor_id)
        if known is None:
            record = await self._storage.read(lambda s: s.get_sensor(sensor_id))
            if record is None:
                return None
            try:
                key = unwrap_key(self._kek, self.hub_id, bytes.fromhex(sensor_id), record.wrapped_key)
                previous = (unwrap_key(self._kek, self.hub_id, bytes.fromhex(sensor_id), record.previous_wrapped_key)
                            if record.previous_wrapped_key is not None else None)
            except ValueError as exc:  # a damaged or tampered database: the operator must know
                log.error("sensor key does not unwrap", extra={"sensor_id": sensor_id})
                raise await self.reject(Reason.INTERNAL, str(exc), sensor_id) from None
            dataset_metrics = self.catalog.dataset(record.dataset).metrics
            known = _KnownSensor(record, AESGCM(key), {m: dataset_metrics[m] for m in record.metrics},
                                 AESGCM(previous) if previous is not None else None)
            self._sensors[sensor_id] = known
        return known

    def last_counter(self, sensor_id: str) -> int | None:
        """The last counter accepted for a cached sensor (None if not cached)."""
        known = self._sensors.get(sensor_id)
        return known.record.last_counter if known else None

    async def reject(self, reason: Reason, message: str, sensor_id: str | None = None) -> Rejected:
        self.count_refusal(reason, sensor_id)
        return Rejected(reason, message)

    def count_refusal(self, reason: Reason, sensor_id: str | None = None) -> None:
        """Count a refused ingest input (metrics now, storage with the next write)."""
        self._on_rejection(reason)
        self.unwritten_rejections.add(reason, sensor_id)
        if self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_later(), name="rejection-flush")

    async def _flush_later(self) -> None:
        """Write the tally after a pause; while writes fail, try again every pause."""
        try:
            while True:
                await self._clock.sleep(REJECTION_FLUSH_SECONDS)
                try:
                    await self.flush_rejections()
                    return
                except StorageFull:
                    continue  # counted on: the tally is kept, and tried again
                except Exception:
                    log.warning("rejection counts not written yet", exc_info=True)
                    return
        finally:
            self._flush_task = None

    def _set_writable(self, writable: bool) -> None:
        if writable != self.writable:
            self.writable = writable
            log.warning("storage writable again" if writable else "storage full: ingest refused until space returns")
            self.on_writable(writable)

    async def flush_rejections(self) -> None:
        taken = self.unwritten_rejections.take()
        if taken is None:
            return
        tally = self.unwritten_rejections

        def job(store: Store) -> None:
            store.record_rejections(*taken)
            tally.written(taken)

        try:
            await self._storage.write(job)
        except BaseException as failure:
            tally.failed(taken)
            if isinstance(failure, StorageFull):
                self._set_writable(False)
            raise
        # Not evidence that ingest can write again: these few bytes can fit in pages SQLite
        # already holds while no batch does, and taking them as such made health flap.

    async def close(self) -> None:
        """Write the tallied rejections (at shutdown)."""
        if self._flush_task is not None:
            self._flush_task.cancel()
        await self.flush_rejections()

    async def rejection_counts(self) -> dict[str, int]:
        """Rejections by reason: stored plus not yet written (read on the writer thread, so
        each is counted once)."""
        tally = self.unwritten_rejections

        def job(store: Store) -> dict[str, int]:
            merged = Counter(store.rejection_counts())
            merged.update(tally.pending()[0])
            return dict(sorted(merged.items()))

        return await self._storage.write(job)

    async def list_sensors(self, include_revoked: bool) -> list[SensorRecord]:
        """Sensors, with frames_rejected including the counts not yet written."""
        tally = self.unwritten_rejections

        def job(store: Store) -> list[SensorRecord]:
            records = store.list_sensors(include_revoked)
            by_sensor = tally.pending()[1]
            for record in records:
                record.frames_rejected += by_sensor.get(record.sensor_id, 0)
            return records

        return await self._storage.write(job)

    async def open(self, frame: bytes, pending: dict[str, int] | None = None) -> FrameToCommit:
        """Authenticate and validate one frame. `pending` holds counters accepted earlier in
        the same request but not yet committed; it is updated."""
        if len(frame) > frames.MAX_FRAME:
            raise await self.reject(Reason.FRAME_TOO_LARGE, f"the frame is {len(frame)} bytes; the limit is {frames.MAX_FRAME}")
        try:
            header = frames.parse_header(frame)
        except frames.FrameError as exc:
            raise await self.reject(Reason.MALFORMED_FRAME, str(exc)) from None
        if header.hub_id != self.hub_id:
            raise await self.reject(
                Reason.WRONG_HUB, f"the frame is addressed to hub {header.hub_id.hex()}; this is hub {self.hub_id.hex()}"
            )
        sensor_id = ids.to_text(header.sensor_id)
        known = await self._sensor(sensor_id)
        if known is None:
            raise await self.reject(Reason.UNKNOWN_SENSOR, f"no sensor {sensor_id} is enrolled at this hub")
        if not known.record.active:
            raise await self.reject(Reason.REVOKED_SENSOR, f"sensor {sensor_id} was revoked", sensor_id)
        under_previous_key = False
        try:
            _, plaintext = frames.open_frame(known.aead, frame)
        except frames.InvalidTag:
            plaintext = await self._open_under_previous_key(known, frame)
            under_previous_key = True
        return await self._checked(known, header.counter, plaintext, pending, under_previous_key)

    async def _open_under_previous_key(self, known: _KnownSensor, frame: bytes) -> bytes:
        """A frame that does not open under the sensor's key: under the key its rekey replaced,
        accepted during the rekey's grace and refused as `retired_key` after it."""
        record = known.record
        sensor_id = record.sensor_id
        try:
            if known.previous_aead is None:
                raise frames.InvalidTag
            _, plaintext = frames.open_frame(known.previous_aead, frame)
        except frames.InvalidTag:
            raise await self.reject(
                Reason.AUTHENTICATION_FAILED, f"the frame does not authenticate under the key of sensor {sensor_id}", sensor_id
            ) from None
        if not record.previous_key_accepted(self._clock.now_ms()):
            until = record.previous_key_until_ms or 0
            raise await self.reject(
                Reason.RETIRED_KEY,
                f"the frame is sealed under the previous key of sensor {sensor_id}, retired at "
                f"{_utc(until)} when the sensor was rekeyed {_utc(record.rekeyed_at_ms or 0)}: "
                "seal with the key of the new credential",
                sensor_id,
            )
        return plaintext

    async def open_authenticated(self, sensor_id: str, counter: int, plaintext: bytes) -> FrameToCommit:
        """Validate readings that a network door (node/networks) has authenticated itself (a
        LoRaWAN uplink decrypted under the device's AppSKey, or accepted from its network
        server): the same sensor, counter and SenML checks as a sealed frame's."""
        known = await self._sensor(sensor_id)
        if known is None:
            raise await self.reject(Reason.UNKNOWN_SENSOR, f"no sensor {sensor_id} is enrolled at this hub")
        if not known.record.active:
            raise await self.reject(Reason.REVOKED_SENSOR, f"sensor {sensor_id} was revoked", sensor_id)
        return await self._checked(known, counter, plaintext, None)

    async def _checked(self, known: _KnownSensor, counter: int, plaintext: bytes, pending: dict[str, int] | None,
                       under_previous_key: bool = False) -> FrameToCommit:
        sensor_id = known.record.sensor_id
        last = max(known.record.last_counter, (pending or {}).get(sensor_id, 0))
        if counter <= last:
            raise await self.reject(
                Reason.REPLAYED, f"counter {counter} of sensor {sensor_id} is not above the last accepted ({last})", sensor_id
            )
        try:
            now_ms = self._clock.now_ms()  # relative SenML times are relative to now (RFC 8428)
            readings = senml.decode_rows(plaintext, known.metrics, now_ms / 1000)
        except Rejected as exc:
            raise await self.reject(exc.reason, f"sensor {sensor_id}: {exc.message}", sensor_id) from None
        wait = self.rate_limit.allow(sensor_id, len(readings))
        if wait:
            raise await self.reject(
                Reason.RATE_LIMITED,
                f"sensor {sensor_id} is over its limit of {self.rate_limit.rate:g} readings/s "
                f"(burst {self.rate_limit.burst}); retry in {wait:.1f} s",
                sensor_id,
            )
        if pending is not None:
            pending[sensor_id] = counter
        return FrameToCommit(sensor_id, counter, readings, now_ms, under_previous_key)

    async def commit(self, batch: list[FrameToCommit]) -> list[Receipt]:
        tally = self.unwritten_rejections
        rejections = tally.take()

        def job(store: Store) -> list[FrameOutcome]:
            outcomes = store.commit_frames(batch, rejections)
            tally.written(rejections)
            return outcomes

        try:
            outcomes = await self._storage.write(job)
        except BaseException as failure:
            tally.failed(rejections)
            if isinstance(failure, StorageFull):
                self._set_writable(False)
                raise await self.reject(Reason.STORAGE_FULL, f"{failure}; nothing was stored, retry later") from None
            if not isinstance(failure, CounterConflict):
                raise
            conflict = failure
            # Another request for the same sensor committed first; refresh and report.
            self.forget(conflict.sensor_id)
            reason = Reason.REVOKED_SENSOR if conflict.revoked else Reason.RETIRED_KEY if conflict.key_retired else Reason.REPLAYED
            raise await self.reject(reason, str(conflict), conflict.sensor_id) from None
        self._set_writable(True)
        receipts = []
        for frame, outcome in zip(batch, outcomes, strict=True):
            known = self._sensors.get(frame.sensor_id)
            if known is not None:
                known.record.last_counter = max(known.record.last_counter, frame.counter)
                if not frame.under_previous_key and known.record.previous_key_accepted(frame.received_at_ms):
                    known.record.previous_key_until_ms = frame.received_at_ms  # switched: as the commit wrote
            receipts.append(Receipt(frame.sensor_id, frame.counter, outcome.stored, outcome.duplicate))
            self._on_accepted(outcome.stored)
        return receipts

    async def submit_batch(self, frame_list: list[bytes]) -> list[Receipt]:
        """All or nothing: the first bad frame rejects the batch and nothing is stored."""
        if len(frame_list) > MAX_FRAMES_PER_BATCH:
            raise await self.reject(Reason.FRAME_TOO_LARGE, f"{len(frame_list)} frames exceed the batch limit of {MAX_FRAMES_PER_BATCH}")
        if not frame_list:
            raise await self.reject(Reason.MALFORMED_FRAME, "the batch holds no frames")
        pending: dict[str, int] = {}
        opened: list[FrameToCommit] = []
        since_yield = 0
        try:
            for index, frame in enumerate(frame_list):
                try:
                    opened.append(await self.open(frame, pending))
                except Rejected as exc:
                    raise Rejected(exc.reason, f"frame {index}: {exc.message}; nothing of this batch was stored") from None
                since_yield += len(opened[-1].readings)
                if since_yield >= YIELD_EVERY_READINGS:
                    since_yield = 0
                    await asyncio.sleep(0)  # let other requests run while a large batch decodes
            return await self.commit(opened)
        except BaseException:
            for done in opened:  # nothing of the batch was stored: it costs no rate
                self.rate_limit.give_back(done.sensor_id, len(done.readings))
            raise

    def stream(self) -> StreamSession:
        return StreamSession(self)


class StreamSession:
    """Frames of one stream, committed in chunks; a bad frame ends the stream after
    committing every good frame before it.

    One chunk's commit runs while the next chunk is being authenticated and decoded (at most
    one commit in flight), so SQLite's work overlaps the hub's Python work. The stream is
    acknowledged only after every commit, so an acknowledgement still means durable."""

    def __init__(self, service: IngestService) -> None:
        self._service = service
        self._pending: list[FrameToCommit] = []
        # Highest counter accepted per sensor in this stream, committed or not. Kept for the
        # whole stream: counters only grow, and an in-flight chunk must still count.
        self._stream_counters: dict[str, int] = {}
        self._pending_readings = 0
        self._since_yield = 0
        self._frames_seen = 0
        self._in_flight: asyncio.Task[None] | None = None
        self.frames_accepted = 0
        self.readings_stored = 0
        self.readings_duplicate = 0
        self.last_counter: dict[str, int] = {}

    async def add(self, frame: bytes) -> None:
        index = self._frames_seen
        self._frames_seen += 1
        try:
            opened = await self._service.open(frame, self._stream_counters)
        except Rejected as exc:
            await self.flush()
            raise Rejected(
                exc.reason, f"frame {index}: {exc.message}; the {self.frames_accepted} frames before it were committed"
            ) from None
        self._pending.append(opened)
        self._pending_readings += len(opened.readings)
        self._since_yield += len(opened.readings)
        if self._since_yield >= YIELD_EVERY_READINGS:
            self._since_yield = 0
            await asyncio.sleep(0)  # buffered frames must not hold the event loop
        if self._pending_readings >= STREAM_COMMIT_READINGS or len(self._pending) >= STREAM_COMMIT_FRAMES:
            await self._drain()
            self._in_flight = asyncio.ensure_future(self._commit(self._take()))
            self._in_flight.add_done_callback(_retrieve)  # a cancelled stream's error is still retrieved

    async def end_with(self, rejected: Rejected) -> Rejected:
        """The stream ends early (a refused message, an idle client): commit every frame
        accepted so far and return the refusal, saying how many were committed."""
        await self.flush()
        return Rejected(
            rejected.reason, f"after frame {self._frames_seen - 1}: {rejected.message}; "
            f"the {self.frames_accepted} frames before were committed"
        )

    async def flush(self) -> None:
        """Wait for the commit in flight, then commit what is pending."""
        await self._drain()
        if self._pending:
            await self._commit(self._take())

    def _take(self) -> list[FrameToCommit]:
        batch, self._pending, self._pending_readings = self._pending, [], 0
        return batch

    async def _drain(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None:
            await task  # raises the commit's rejection, if any

    async def _commit(self, batch: list[FrameToCommit]) -> None:
        for receipt in await self._service.commit(batch):
            self.frames_accepted += 1
            self.readings_stored += receipt.stored
            self.readings_duplicate += receipt.duplicate
            self.last_counter[receipt.sensor_id] = receipt.counter


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
