"""networks.toml in the hub's data directory: the brokers the hub subscribes to, the HTTP
endpoints it serves for network servers, and the payload codecs of its devices.
docs/integrations.md shows a complete file for each network. No file: no network doors."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from node.networks.codecs import BUILTIN_CODECS, Codec, CodecError, codec_from_config

NETWORKS_FILE = "networks.toml"
FORMATS = ("chirpstack", "tts", "span", "frames")
MARSHALERS = ("json", "protobuf")
DEFAULT_QOS = {"chirpstack": 1, "tts": 0, "span": 1, "frames": 1}  # TTS publishes with QoS 0 only
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_SECRET_BYTES = 4096


class NetworksConfigError(ValueError):
    pass


@dataclass(frozen=True)
class BrokerConfig:
    """One MQTT subscription of the hub."""

    name: str
    format: str
    host: str
    port: int
    topics: tuple[str, ...]
    qos: int
    tls: bool = True
    marshaler: str = "json"  # ChirpStack's integration marshaler
    ca_file: str = ""  # the broker's CA certificate (PEM); default: the system's CAs
    cert_file: str = ""  # client certificate (PEM), with key_file
    key_file: str = ""
    username: str = ""
    password: str = field(default="", repr=False)  # read from password_file
    client_id: str = ""  # a fixed id: the broker keeps the session (and QoS 1 messages) across reconnects
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0


@dataclass(frozen=True)
class HttpEndpoint:
    format: str  # chirpstack | tts
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class NetworksConfig:
    brokers: tuple[BrokerConfig, ...] = ()
    http: dict[str, HttpEndpoint] = field(default_factory=dict)
    codecs: dict[str, Codec] = field(default_factory=lambda: dict(BUILTIN_CODECS))


def _secret(base: Path, value: object, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise NetworksConfigError(f"{where}: give secret_file, a file holding the shared secret")
    path = (base / value) if not Path(value).is_absolute() else Path(value)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise NetworksConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if not 16 <= len(secret) <= MAX_SECRET_BYTES:
        raise NetworksConfigError(f"{where}: the secret in {path} must be 16 to {MAX_SECRET_BYTES} bytes")
    return secret


def _broker(base: Path, raw: object, hub_id: str) -> BrokerConfig:
    if not isinstance(raw, dict):
        raise NetworksConfigError("each [[mqtt]] is a table")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise NetworksConfigError(f"[[mqtt]] name {name!r}: letters, digits, . _ - (at most 63)")
    where = f"[[mqtt]] {name!r}"
    allowed = {f for f in BrokerConfig.__dataclass_fields__ if f != "password"} | {"password_file"}
    extra = sorted(set(raw) - allowed)
    if extra:
        raise NetworksConfigError(f"{where}: unknown field {', '.join(map(repr, extra))}")
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise NetworksConfigError(f"{where}: format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    topics = raw.get("topics")
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) and t for t in topics):
        raise NetworksConfigError(f"{where}: give topics = [\"...\"] (docs/integrations.md has each network's)")
    qos = raw.get("qos", DEFAULT_QOS[str(fmt)])
    if qos not in (0, 1):
        raise NetworksConfigError(f"{where}: qos is 0 or 1")
    port = raw.get("port", 8883 if raw.get("tls", True) else 1883)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise NetworksConfigError(f"{where}: port must be 1..65535")
    marshaler = raw.get("marshaler", "json")
    if marshaler not in MARSHALERS:
        raise NetworksConfigError(f"{where}: marshaler is json or protobuf")
    password = ""
    if "password_file" in raw:
        password = _secret(base, raw["password_file"], where).decode()
    values = {k: v for k, v in raw.items() if k not in ("password_file", "topics")}
    values.update(name=name, format=fmt, port=port, qos=qos, marshaler=marshaler, password=password, topics=tuple(topics))
    values.setdefault("client_id", f"smartregion-{hub_id[:12]}-{name}")
    try:
        broker = BrokerConfig(**values)
    except TypeError as exc:
        raise NetworksConfigError(f"{where}: {exc}") from None
    if not isinstance(broker.host, str) or not broker.host:
        raise NetworksConfigError(f"{where}: give host")
    if bool(broker.cert_file) != bool(broker.key_file):
        raise NetworksConfigError(f"{where}: a client certificate needs both cert_file and key_file")
    if not 0 < broker.backoff_initial_seconds <= broker.backoff_max_seconds <= 3600:
        raise NetworksConfigError(f"{where}: need 0 < backoff_initial_seconds <= backoff_max_seconds <= 3600")
    return broker


def parse(text: str, base: Path, hub_id: str, source: str = NETWORKS_FILE) -> NetworksConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NetworksConfigError(f"{source} is not valid TOML: {exc}") from None
    extra = sorted(set(doc) - {"mqtt", "http", "codecs"})
    if extra:
        raise NetworksConfigError(f"{source}: unknown section {', '.join(map(repr, extra))}; known: mqtt, http, codecs")
    try:
        brokers = tuple(_broker(base, raw, hub_id) for raw in doc.get("mqtt", []))
        if len({b.name for b in brokers}) != len(brokers):
            raise NetworksConfigError("two [[mqtt]] have the same name")
        http: dict[str, HttpEndpoint] = {}
        for fmt, raw in doc.get("http", {}).items():
            if fmt not in ("chirpstack", "tts") or not isinstance(raw, dict):
                raise NetworksConfigError(f"[http.{fmt}]: the HTTP endpoints are [http.chirpstack] and [http.tts]")
            http[fmt] = HttpEndpoint(fmt, _secret(base, raw.get("secret_file"), f"[http.{fmt}]"))
        codecs = dict(BUILTIN_CODECS)
        for name, raw in doc.get("codecs", {}).items():
            if not NAME.match(name) or not isinstance(raw, dict):
                raise NetworksConfigError(f"[codecs.{name}]: a codec is a named table")
            codecs[name] = codec_from_config(name, raw)
    except CodecError as exc:
        raise NetworksConfigError(f"{source}: {exc}") from None
    except NetworksConfigError as exc:
        raise NetworksConfigError(f"{source}: {exc}") from None
    return NetworksConfig(brokers, http, codecs)


def for_data_dir(data_dir: Path, hub_id: str) -> NetworksConfig:
    path = Path(data_dir) / NETWORKS_FILE
    if not path.exists():
        return NetworksConfig()
    return parse(path.read_text(encoding="utf-8"), Path(data_dir), hub_id, str(path))
