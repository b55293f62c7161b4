"""Prometheus metrics of one hub (a registry per hub, so several hubs can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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

        self.query_peer_seconds = Histogram(
            "smartregion_query_peer_seconds", "Time for a peer hub to answer a relayed query, by peer and outcome",
            ["peer", "status"], registry=self.registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.agreements = Gauge("smartregion_agreements", "Agreements this hub is party to, by state", ["state"], registry=self.registry)
        self.peers = Gauge("smartregion_peers", "Peer hubs, by state", ["state"], registry=self.registry)
        self.certificate_expiry = Gauge("smartregion_tls_certificate_expiry_timestamp_seconds",
                                        "When the TLS certificate the hub serves expires (UNIX seconds)", registry=self.registry)
        self.issuer_expiry = Gauge("smartregion_tls_issuer_expiry_timestamp_seconds",
                                   "When the hub's TLS issuer (the root sensors trust) expires (UNIX seconds; 0: none yet)",
                                   registry=self.registry)

    def set_states(self, gauge: Gauge, counts: dict[str, int], known: tuple[str, ...]) -> None:
        for state in set(known) | set(counts):
            gauge.labels(state).set(counts.get(state, 0))

    def accepted(self, readings: int) -> None:
        self.frames_accepted.inc()
        self.readings_ingested.inc(readings)

    def rejected(self, reason: Reason) -> None:
        self.frames_rejected.labels(reason.label).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
