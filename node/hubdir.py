"""A hub's data directory: what `smartregion init` creates and every command opens.

    DATA_DIR/             0700
      hub.toml            configuration, no secrets
      catalog.toml        the datasets this hub accepts (optional; else the shipped default)
      keys.json           identity key, TLS key and issuer key, key-encryption key: encrypted (node.keystore)
      tls-cert.pem        the hub's TLS certificate (public, pinned by peers and partners by its binding)
      tls-issuer.pem      the hub's TLS issuer certificate (public, the root sensors trust; absent in
                          a hub made before the issuer, until its first renewal or rotation)
      admin.token         the admin credential (bearer token); the hub keeps only its hash
      hub.db              SQLite storage
      run/endpoint.json   written by `serve`: the addresses it really listens on
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import socket
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import tomli_w

from node import catalog as catalog_mod
from node import identity as identity_mod
from node import keystore, register
from node.clock import SYSTEM_CLOCK, Clock
from node.fileio import make_private_dir, write_private_file

CONFIG_FILE = "hub.toml"
KEYS_FILE = "keys.json"
CERT_FILE = "tls-cert.pem"
ISSUER_FILE = "tls-issuer.pem"
ADMIN_TOKEN_FILE = "admin.token"
DB_FILE = "hub.db"
ENDPOINT_FILE = Path("run") / "endpoint.json"
DEFAULT_GRPC_PORT = 50051
DEFAULT_HTTP_PORT = 8080
ADMIN_TOKEN_PREFIX = "sra_"


class HubDirError(Exception):
    pass


@dataclass
class NetworkConfig:
    listen_host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"  # the host sensors and peers are told to dial
    grpc_port: int = DEFAULT_GRPC_PORT
    http_port: int = DEFAULT_HTTP_PORT


@dataclass
class FederationConfig:
    refresh_seconds: float = 30.0      # how often peers' descriptors are fetched
    retry_base_seconds: float = 1.0    # first retry of an undelivered agreement update
    retry_max_seconds: float = 60.0    # retries back off up to this


@dataclass
class RetentionConfig:
    """How long readings are kept (node/retention.py): days per dataset, overriding the catalog."""

    days: dict[str, int] = field(default_factory=dict)  # dataset -> days; 0 keeps for ever
    interval_seconds: float = 86400.0                   # how often the hub deletes expired readings


@dataclass
class IngestConfig:
    # Per sensor (a token bucket on readings, node/ingest.py SensorRateLimit): a sensor may
    # send `burst_readings` at once (a replay of history) and `readings_per_second` sustained.
    readings_per_second: float = 20_000.0
    burst_readings: int = 1_000_000


@dataclass
class HubConfig:
    hub_id: str
    municipality: str
    created_at: str
    admin_token_sha256: str
    network: NetworkConfig = field(default_factory=NetworkConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)

    @property
    def municipality_name(self) -> str:
        return register.lookup(self.municipality).name

    def to_toml(self) -> bytes:
        doc = {
            "hub": {
                "id": self.hub_id,
                "municipality": self.municipality,
                "created_at": self.created_at,
                "admin_token_sha256": self.admin_token_sha256,
            },
            "network": asdict(self.network),
            "federation": asdict(self.federation),
            "retention": asdict(self.retention),
            "ingest": asdict(self.ingest),
        }
        return tomli_w.dumps(doc).encode()

    @classmethod
    def from_toml(cls, text: str) -> HubConfig:
        doc = tomllib.loads(text)
        hub = doc["hub"]
        return cls(
            hub_id=hub["id"],
            municipality=hub["municipality"],
            created_at=hub["created_at"],
            admin_token_sha256=hub["admin_token_sha256"],
            network=NetworkConfig(**doc.get("network", {})),
            federation=FederationConfig(**doc.get("federation", {})),
            retention=RetentionConfig(**doc.get("retention", {})),
            ingest=IngestConfig(**doc.get("ingest", {})),
        )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(presented: str, expected_sha256: str) -> bool:
    return hmac.compare_digest(hash_token(presented), expected_sha256)


@dataclass
class HubDir:
    path: Path

    def file(self, name: str | Path) -> Path:
        return self.path / name

    @property
    def exists(self) -> bool:
        return self.file(CONFIG_FILE).exists() or self.file(KEYS_FILE).exists()

    def config(self) -> HubConfig:
        """Read hub.toml (raises HubDirError if missing or damaged)."""
        try:
            return HubConfig.from_toml(self.file(CONFIG_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HubDirError(f"{self.path} is not a hub data directory (no {CONFIG_FILE}); run `smartregion init`") from None
        except (KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
            raise HubDirError(f"{self.file(CONFIG_FILE)} is damaged: {exc}") from exc

    def identity(self, passphrase: bytes) -> identity_mod.HubIdentity:
        try:
            values = keystore.read(self.file(KEYS_FILE), passphrase)
        except FileNotFoundError:
            raise HubDirError(f"{self.file(KEYS_FILE)} is missing") from None
        except keystore.KeystoreError as exc:
            raise HubDirError(f"cannot open {self.file(KEYS_FILE)}: {exc}") from exc
        ident = identity_mod.HubIdentity.from_secrets(values)
        if ident.hub_id_text != self.config().hub_id:
            raise HubDirError("the keystore's identity does not match the hub id in hub.toml")
        return ident

    def write_identity(self, ident: identity_mod.HubIdentity, passphrase: bytes) -> None:
        """Replace the keystore (encrypted as at init) and the public certificate file, after a
        rotation or a certificate renewal. The keystore goes first: it is what the hub loads."""
        keystore.write(self.file(KEYS_FILE), ident.to_secrets(), passphrase)
        write_public_certificates(self, ident)

    def catalog(self) -> catalog_mod.Catalog:
        """The hub's catalog (catalog.toml here, else the shipped default); raises HubDirError if broken."""
        try:
            return catalog_mod.for_data_dir(self.path)
        except catalog_mod.CatalogError as exc:
            raise HubDirError(f"the catalog is invalid: {exc}") from None

    def admin_token(self) -> str:
        try:
            return self.file(ADMIN_TOKEN_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise HubDirError(f"no admin credential at {self.file(ADMIN_TOKEN_FILE)}") from None

    def write_config(self, config: HubConfig) -> None:
        write_private_file(self.file(CONFIG_FILE), config.to_toml())

    def tls_cert_pem(self) -> bytes:
        return self.file(CERT_FILE).read_bytes()

    def tls_issuer_pem(self) -> bytes | None:
        """The issuer certificate (tls-issuer.pem), or None for a hub made before the issuer."""
        try:
            return self.file(ISSUER_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def endpoint(self) -> dict:
        """Where the running hub listens, as written by `serve`; raise if it is not running."""
        path = self.file(ENDPOINT_FILE)
        if not self.file(CONFIG_FILE).exists():
            raise HubDirError(f"{self.path} holds no hub (no {CONFIG_FILE}); check the path, or create one with `smartregion init`")
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HubDirError(
                f"the hub in {self.path} is not running (no {ENDPOINT_FILE}); start it with `smartregion serve --data-dir {self.path}`"
            ) from None
        pid = info.get("pid")
        # A process id means something only on the host that wrote it (not across containers).
        if pid and info.get("host", socket.gethostname()) == socket.gethostname() and not _process_alive(pid):
            raise HubDirError(f"the hub in {self.path} is not running (process {pid} is gone); start it with `smartregion serve`")
        return info

    def running(self) -> bool:
        """Whether a hub serves from this directory now (its endpoint file names a live process)."""
        try:
            self.endpoint()
        except HubDirError:
            return False
        return True

    def write_endpoint(self, info: dict) -> None:
        make_private_dir(self.file("run"))
        write_private_file(self.file(ENDPOINT_FILE), json.dumps(info, indent=2).encode())

    def clear_endpoint(self) -> None:
        """Remove the endpoint file if this process wrote it (never another hub's)."""
        try:
            info = json.loads(self.file(ENDPOINT_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return
        if info.get("pid") in (None, os.getpid()):
            self.file(ENDPOINT_FILE).unlink(missing_ok=True)

    def lock_for_serving(self) -> TextIO:
        """Hold an exclusive lock on the data directory while serving: two hubs with one
        identity and one database would fork the agreement state. Returns the open lock file
        (keep it open); raises HubDirError if another process holds it."""
        make_private_dir(self.file("run"))
        handle = open(self.file(Path("run") / "serve.lock"), "a+")  # noqa: SIM115 -- the lock lives as long as the open file
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise HubDirError(f"the hub in {self.path} is already being served by another process") from None
        return handle


def write_public_certificates(hub_dir: HubDir, ident: identity_mod.HubIdentity) -> None:
    """The public copies of the certificates in keys.json: tls-cert.pem and tls-issuer.pem."""
    write_private_file(hub_dir.file(CERT_FILE), ident.tls_cert_pem)
    if ident.tls_issuer is not None:
        write_private_file(hub_dir.file(ISSUER_FILE), ident.tls_issuer.cert_pem)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def init_hub(
    path: Path,
    municipality: str,
    passphrase: bytes,
    *,
    hostnames: tuple[str, ...] = (),
    network: NetworkConfig | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[HubConfig, identity_mod.HubIdentity]:
    """Create a new hub in `path`. Refuses to touch an existing hub."""
    hub_dir = HubDir(Path(path))
    if hub_dir.exists:
        raise HubDirError(f"{path} already holds a hub; refusing to overwrite it")
    found = register.lookup(municipality)  # raises UnknownMunicipality
    if len(passphrase) < keystore.MIN_PASSPHRASE_LENGTH:
        raise HubDirError(f"the passphrase must be at least {keystore.MIN_PASSPHRASE_LENGTH} characters")
    make_private_dir(hub_dir.path)
    ident = identity_mod.generate(hostnames, clock)
    token = new_admin_token()
    config = HubConfig(
        hub_id=ident.hub_id_text,
        municipality=found.number,
        created_at=dt.datetime.fromtimestamp(clock.now_ms() / 1000, dt.UTC).isoformat(timespec="seconds"),
        admin_token_sha256=hash_token(token),
        network=network or NetworkConfig(),
    )
    keystore.write(hub_dir.file(KEYS_FILE), ident.to_secrets(), passphrase)
    write_public_certificates(hub_dir, ident)
    write_private_file(hub_dir.file(ADMIN_TOKEN_FILE), (token + "\n").encode())
    from node.storage.sqlite import SqliteStore

    SqliteStore(hub_dir.file(DB_FILE)).close()
    for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
        if hub_dir.file(name).exists():
            os.chmod(hub_dir.file(name), 0o600)
    # The config goes last: its presence marks a complete hub.
    write_private_file(hub_dir.file(CONFIG_FILE), config.to_toml(), exclusive=True)
    return config, ident


def new_admin_token() -> str:
    """A fresh admin bearer token: the prefix and 256 random bits (node/credentials.py rotates it)."""
    return ADMIN_TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
