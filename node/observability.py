"""Prometheus metrics of one hub (a registry per hub, so several hubs can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from node.errors import Reason


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.readings_ingested = Counter(
            "smartregion_readings_ingested", "Readings durably stored", registry=self.registry
        )
        self.frames_accepted = Counter("smartregion_frames_accepted", "Sealed frames accepted", registry=self.registry)
        self.frames_rejected = Counter(
            "smartregion_frames_rejected", "Requests refused, by reason", ["reason"], registry=self.registry
        )

    def accepted(self, readings: int) -> None:
        self.frames_accepted.inc()
        self.readings_ingested.inc(readings)

    def rejected(self, reason: Reason) -> None:
        self.frames_rejected.labels(reason.label).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
