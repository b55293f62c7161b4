"""A running hub's state: configuration, identity, storage and domain services."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from node import __version__, catalog
from node.clock import SYSTEM_CLOCK, Clock
from node.hubdir import DB_FILE, HubConfig, HubDir, HubDirError
from node.identity import HubIdentity
from node.ingest import IngestService, SensorRateLimit
from node.networks.config import NetworksConfig, NetworksConfigError
from node.networks.config import for_data_dir as networks_for_data_dir
from node.observability import HubMetrics
from node.storage import Storage


@dataclass
class Endpoint:
    grpc_address: str = ""
    http_url: str = ""
    tls: bool = True


@dataclass
class Hub:
    hub_dir: HubDir
    config: HubConfig
    identity: HubIdentity
    storage: Storage
    ingest: IngestService
    metrics: HubMetrics
    catalog: catalog.Catalog = field(default=catalog.DEFAULT)  # DATA_DIR/catalog.toml or the shipped default
    networks: NetworksConfig = field(default_factory=NetworksConfig)  # DATA_DIR/networks.toml (node/networks)
    endpoint: Endpoint = field(default_factory=Endpoint)
    clock: Clock = field(default=SYSTEM_CLOCK)
    started_at_ms: int = 0
    version: str = __version__
    serve_lock: TextIO | None = field(default=None, repr=False)  # held while serving (HubDir.lock_for_serving)
    # Kept to re-encrypt keys.json when the hub renews its own certificate (node/app/certificates.py).
    passphrase: bytes = field(default=b"", repr=False)

    @classmethod
    def open(cls, path: Path, passphrase: bytes, clock: Clock = SYSTEM_CLOCK) -> Hub:
        hub_dir = HubDir(Path(path))
        config = hub_dir.config()
        datasets = hub_dir.catalog()  # validated here: a hub does not start with a broken catalog
        try:
            networks = networks_for_data_dir(hub_dir.path, config.hub_id)
        except NetworksConfigError as exc:
            raise HubDirError(f"the network configuration is invalid: {exc}") from None
        serve_lock = hub_dir.lock_for_serving()
        identity = hub_dir.identity(passphrase)
        storage = Storage(hub_dir.file(DB_FILE))
        metrics = HubMetrics()
        ingest = IngestService(
            identity.hub_id,
            identity.key_encryption_key,
            storage,
            on_rejection=metrics.rejected,
            on_accepted=metrics.accepted,
            clock=clock,
            datasets=datasets,
            rate_limit=SensorRateLimit(config.ingest.readings_per_second, config.ingest.burst_readings, clock),
        )
        return cls(hub_dir, config, identity, storage, ingest, metrics, catalog=datasets, networks=networks, clock=clock,
                   started_at_ms=clock.now_ms(), serve_lock=serve_lock, passphrase=passphrase)

    def close(self) -> None:
        self.storage.close()
        if self.serve_lock is not None:
            self.serve_lock.close()  # releases the lock
            self.serve_lock = None
