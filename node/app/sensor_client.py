"""A sensor (or a replay of one): seal readings with the sensor's key and deliver them.

The counter is kept in `<credential>.counter`. Counters are reserved and persisted *before*
frames are sent, and never start below the current time in microseconds, so a crash or a
lost counter file cannot make the sensor reuse a nonce.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import http.client
import json
import math
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc

from node import frames, ids, senml
from node.api.v1 import ingest_pb2, ingest_pb2_grpc
from node.client import open_channel
from node.fileio import write_private_file
from node.sensors import CREDENTIAL_FORMAT
from node.tlsfiles import pinned_client_ssl_context

T = TypeVar("T")

# Column names in the station CSVs that differ from metric names.
CSV_COLUMN_FOR_METRIC = {"wind_speed": "windSpeed"}


class CredentialError(Exception):
    pass


@dataclass(frozen=True)
class SensorCredential:
    path: Path
    sensor_id: str
    hub_id: str
    dataset: str
    metrics: list[str]
    units: dict[str, str]
    grpc_address: str
    http_url: str
    tls: bool
    hub_cert_pem: bytes  # the only root the sensor trusts: the hub's TLS issuer (or, enrolled before it, the hub's certificate)
    key: bytes
    label: str = ""

    @classmethod
    def load(cls, path: Path) -> SensorCredential:
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CredentialError(f"no credential file at {path}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CredentialError(f"{path} is not a sensor credential (not JSON: {exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != CREDENTIAL_FORMAT or doc.get("version") != 1:
            raise CredentialError(f"{path} is not a smartregion sensor credential (version 1)")
        try:
            key = base64.b64decode(doc["key"], validate=True)
            ids.from_text(doc["sensor_id"], "sensor_id")
            ids.from_text(doc["hub_id"], "hub_id")
            credential = cls(
                path=path,
                sensor_id=doc["sensor_id"],
                hub_id=doc["hub_id"],
                dataset=doc["dataset"],
                metrics=list(doc["metrics"]),
                units=dict(doc.get("units", {})),
                grpc_address=doc["hub_grpc_address"],
                http_url=doc.get("hub_http_url", ""),
                tls=bool(doc["tls"]),
                hub_cert_pem=doc.get("hub_tls_certificate", "").encode(),
                key=key,
                label=doc.get("label", ""),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CredentialError(f"{path} is damaged: {exc}") from None
        if len(key) != frames.KEY_SIZE:
            raise CredentialError(f"{path}: the key must be {frames.KEY_SIZE} bytes")
        return credential


class CounterStore:
    """Strictly increasing frame counters that survive restarts."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def last(self) -> int:
        try:
            return int(self.path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            raise CredentialError(f"{self.path} does not hold a counter; refusing to guess one") from None

    def reserve(self, count: int) -> range:
        start = max(self.last() + 1, time.time_ns() // 1000)
        end = start + count  # exclusive
        if end - 1 > frames.MAX_COUNTER:
            raise CredentialError("the sensor's counter is exhausted; enrol it again")
        write_private_file(self.path, f"{end - 1}\n".encode())
        return range(start, end)


def counter_store_for(credential: SensorCredential) -> CounterStore:
    return CounterStore(credential.path.with_name(credential.path.name + ".counter"))


def read_station_csv(
    path: Path, metrics: Iterable[str], since: dt.date | None = None, until: dt.date | None = None,
) -> Iterator[senml.Reading]:
    """Readings from a CSV shaped like the station files (date,time,<metric columns>...).
    Empty cells are missing values and are skipped; times are UTC."""
    metrics = list(metrics)
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "date" not in reader.fieldnames or "time" not in reader.fieldnames:
            raise CredentialError(f"{path} has no 'date' and 'time' columns")
        columns = {m: CSV_COLUMN_FOR_METRIC.get(m, m) for m in metrics}
        present = {m: c for m, c in columns.items() if c in reader.fieldnames}
        if not present:
            raise CredentialError(f"{path} has none of the sensor's metrics ({', '.join(columns.values())})")
        for line, row in enumerate(reader, start=2):
            try:
                when = dt.datetime.fromisoformat(f"{row['date']}T{row['time']}").replace(tzinfo=dt.UTC)
            except (ValueError, TypeError):
                raise CredentialError(f"{path}:{line}: cannot read the date and time {row.get('date')!r} {row.get('time')!r}") from None
            if (since and when.date() < since) or (until and when.date() >= until):
                continue
            time_ms = int(when.timestamp() * 1000)
            for metric, column in present.items():
                cell = (row.get(column) or "").strip()
                if not cell:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    raise CredentialError(f"{path}:{line}: {column} = {cell!r} is not a number") from None
                if math.isfinite(value):
                    yield senml.Reading(metric, time_ms, value)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Sensor:
    """Seals readings as one sensor and delivers them to its hub over gRPC or HTTP."""

    def __init__(self, credential: SensorCredential, counters: CounterStore | None = None) -> None:
        self.credential = credential
        self.counters = counters or counter_store_for(credential)
        self._hub_id = bytes.fromhex(credential.hub_id)
        self._sensor_id = bytes.fromhex(credential.sensor_id)

    def seal(self, batches: list[list[senml.Reading]]) -> list[bytes]:
        counters = self.counters.reserve(len(batches))
        return [
            frames.seal(
                self.credential.key,
                frames.FrameHeader(self._hub_id, self._sensor_id, counter),
                senml.encode(batch, self.credential.units),
            )
            for counter, batch in zip(counters, batches, strict=True)
        ]

    def channel(self):
        c = self.credential
        return open_channel(c.grpc_address, hub_id=c.hub_id, cert_pem=c.hub_cert_pem, tls=c.tls)

    def send_stream(self, stub: ingest_pb2_grpc.IngestStub, sealed: list[bytes], timeout: float = 60.0):
        return stub.StreamFrames((ingest_pb2.SealedFrame(frame=f) for f in sealed), timeout=timeout)

    def send_http(self, sealed: bytes, timeout: float = 30.0) -> dict:
        """POST one frame to the hub's HTTP endpoint (stdlib only, pinned TLS)."""
        url = urlsplit(self.credential.http_url)
        if not url.hostname:
            raise ValueError(f"the credential's http_url {self.credential.http_url!r} names no host")
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            context = pinned_client_ssl_context(self.credential.hub_cert_pem)
            conn = PinnedHTTPSConnection(url.hostname, url.port, context=context, server_name=self.credential.hub_id, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        try:
            conn.request("POST", "/v1/frames", body=sealed, headers={"Content-Type": "application/vnd.smartregion.frame"})
            response = conn.getresponse()
            body = json.loads(response.read() or b"{}")
            body["status"] = response.status
            return body
        finally:
            conn.close()


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose TLS server name is the hub id (the certificate's name), not the host."""

    def __init__(self, host: str, port: int | None, *, context: ssl.SSLContext, server_name: str, **kwargs: Any) -> None:
        super().__init__(host, port, context=context, **kwargs)
        self._server_name = server_name
        self._tls_context = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls_context.wrap_socket(sock, server_hostname=self._server_name)


@dataclass
class ReplaySummary:
    frames: int = 0
    readings_sent: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    retries: int = 0
    seconds: float = 0.0


RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# Refusals that are about the hub's state, not the frames: the same readings, resealed, may
# be accepted later (docs/protocol.md 10.1).
RETRYABLE_REASONS = {"rate_limited", "storage_full"}


def retryable(exc: grpc.RpcError) -> bool:
    reason = dict(exc.trailing_metadata() or ()).get("smartregion-reason")
    return exc.code() in RETRYABLE or reason in RETRYABLE_REASONS


def replay(
    sensor: Sensor,
    readings: Iterable[senml.Reading],
    *,
    readings_per_frame: int = 500,
    frames_per_call: int = 40,
    max_retries: int = 5,
    progress: Callable[[int], None] = lambda n: None,
) -> ReplaySummary:
    """Send readings in streams of sealed frames. A stream whose acknowledgement is lost is
    re-sent under new counters: the hub stores each (metric, time) reading once."""
    summary = ReplaySummary()
    started = time.monotonic()
    with sensor.channel() as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        for call_batches in chunked(chunked(readings, readings_per_frame), frames_per_call):
            attempt = 0
            while True:
                sealed = sensor.seal(call_batches)
                try:
                    response = sensor.send_stream(stub, sealed)
                    break
                except grpc.RpcError as exc:
                    if not retryable(exc) or attempt >= max_retries:
                        raise
                    attempt += 1
                    summary.retries += 1
                    time.sleep(min(0.2 * 2**attempt, 5.0))
            sent = sum(len(b) for b in call_batches)
            summary.frames += response.frames_accepted
            summary.readings_sent += sent
            summary.readings_stored += response.readings_stored
            summary.readings_duplicate += response.readings_duplicate
            progress(sent)
    summary.seconds = time.monotonic() - started
    return summary

