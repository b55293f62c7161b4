"""The storage interface the hub's domain code uses; SQLite (sqlite.py) is the default."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class LorawanDeviceRecord:
    dev_eui: str
    sensor_id: str
    confidentiality: str  # "end-to-end" | "network-decrypted"
    wrapped_app_s_key: bytes | None
    codec: str


@dataclass
class SensorRecord:
    sensor_id: str
    dataset: str
    metrics: list[str]
    latitude: float
    longitude: float
    wrapped_key: bytes
    enrolled_at_ms: int
    subject_id: str = ""
    label: str = ""
    revoked_at_ms: int | None = None
    last_counter: int = 0
    last_seen_ms: int | None = None
    frames_accepted: int = 0
    frames_rejected: int = 0
    readings: int = 0
    request_id: str | None = None  # the client-chosen id of the AddSensor call, if any
    # After a rekey (node/admin.py rekey_sensor): the key it replaced, accepted for frames
    # received before previous_key_until_ms; the request id and time of the rekey.
    previous_wrapped_key: bytes | None = None
    previous_key_until_ms: int | None = None
    key_request_id: str | None = None
    rekeyed_at_ms: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at_ms is None

    def previous_key_accepted(self, at_ms: int) -> bool:
        """Whether a frame under the previous key, received at `at_ms`, is still accepted."""
        return self.previous_key_until_ms is not None and at_ms < self.previous_key_until_ms


@dataclass
class FrameToCommit:
    """An authenticated, validated frame: its readings as (metric, time_ms, value)."""

    sensor_id: str
    counter: int
    readings: Sequence[tuple[str, int, float]]
    received_at_ms: int
    under_previous_key: bool = False  # sealed under the key a rekey replaced (still accepted)


@dataclass
class FrameOutcome:
    stored: int
    duplicate: int


class CounterConflict(Exception):
    """A frame's counter was no longer above the sensor's last one when committing
    (another request for the same sensor committed first), or the sensor was revoked."""

    def __init__(self, index: int, sensor_id: str, counter: int, last_counter: int, revoked: bool,
                 key_retired: bool = False) -> None:
        if key_retired:
            message = (f"frame {index}: sensor {sensor_id} switched to its new key before this frame under its previous key "
                       "was committed")
        else:
            message = f"frame {index}: counter {counter} of sensor {sensor_id} is not above {last_counter}"
        super().__init__(message)
        self.index, self.sensor_id, self.counter = index, sensor_id, counter
        self.last_counter, self.revoked, self.key_retired = last_counter, revoked, key_retired


class StorageError(Exception):
    """The database cannot be opened or written; the message names the file."""


class StorageFull(StorageError):
    """A write failed because the database's filesystem is full; nothing of it was stored."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"cannot write {path}: the disk is full ({detail})")
        self.path = path


@dataclass
class MetricSummary:
    dataset: str
    metric: str
    readings: int
    first_time_ms: int
    last_time_ms: int


@dataclass
class ReadingRow:
    sensor_id: str
    metric: str
    time_ms: int
    value: float


@dataclass
class ReadingFilter:
    dataset: str | None = None
    metric: str | None = None
    sensor_id: str | None = None
    start_ms: int | None = None  # inclusive
    end_ms: int | None = None  # exclusive
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PeerRecord:
    hub_id: str
    municipality: str
    public_key: bytes
    tls_cert_pem: str
    grpc_address: str
    http_url: str
    descriptor: bytes
    descriptor_valid_until_ms: int
    added_at_ms: int
    removed_at_ms: int | None = None
    last_contact_ms: int | None = None
    last_error: str = ""
    latency_ms: float | None = None


@dataclass
class PartnerRecord:
    partner_id: str
    name: str
    org_number: str
    public_key: bytes
    added_at_ms: int
    removed_at_ms: int | None = None
    last_contact_ms: int | None = None


@dataclass
class AgreementRow:
    agreement_id: str
    provider_id: str
    consumer_id: str
    version: int
    supersedes: str
    valid_from_ms: int
    valid_until_ms: int
    document: bytes
    created_at_ms: int
    updated_at_ms: int


@dataclass
class AgreementEventRow:
    agreement_id: str
    at_ms: int
    event: str
    actor: str
    detail: str = ""


@dataclass
class Delivery:
    peer_id: str
    generation: int
    attempts: int
    next_attempt_ms: int
    last_error: str


@dataclass
class AuditRow:
    seq: int
    entry: bytes
    prev_hash: bytes
    hash: bytes


@dataclass
class CellRow:
    """A partial aggregate over one time bucket of one hub's readings."""

    bucket_start_ms: int
    count: int
    sum: float
    sum_squares: float
    min: float
    max: float
    contributors: int


@dataclass(frozen=True)
class Contribution:
    """What one contributor added to one cell, for the release log (stays in the hub). Times
    are summed as whole hours and the milliseconds within them, so the sums stay exact."""
    contributor: str
    readings: int
    sum: float
    sum_squares: float
    min: float
    max: float
    hour_sum: int
    ms_in_hour_sum: int


@dataclass(frozen=True)
class ReleaseLine:
    """Whose release history a cell joins: every agreement between this hub and the asker over
    the dataset (at most one is live at a time), so a renewal or new version continues it."""
    asker_id: str
    dataset: str
    metric: str


@dataclass(frozen=True)
class ReleasedSubcell:
    """One row of the release log: a sub-cell released to a line, with a fingerprint of what
    its contributors added then (federation/query/releases.py)."""
    start_ms: int
    end_ms: int
    scheme: int        # 2: a sub-cell at the agreement's finest grain; 1: a whole cell of the old log
    grain: str         # hour, day, week, month, year ("window" for scheme 1)
    fingerprint: bytes
    contributors: int
    agreement_id: str
    released_at_ms: int


@dataclass(frozen=True)
class ReleasedRun:
    """The release log's high-water mark: a window released whole to a line (every cell of it,
    nothing withheld), with a digest of its sub-cells' fingerprints in order. The same window
    asked again with the same digest holds only content released before (releases.run_digest)."""
    scheme: int
    grain: str
    start_ms: int
    end_ms: int
    digest: bytes
    released_at_ms: int


@dataclass
class AggregateRequest:
    dataset: str
    metric: str
    start_ms: int
    end_ms: int
    bucket: str                   # hour, day, week, month, year, window
    consent_purpose: str | None   # only subjects with active consent for this purpose count
    clamp: tuple[float, float] | None = None  # values clamped to [low, high] before summing (DP)
    max_contributions: int | None = None  # at most this many readings per contributor and cell (DP)


@dataclass
class ConsentRow:
    subject_id: str
    purpose_code: str
    granted_at_ms: int
    withdrawn_at_ms: int | None = None


@dataclass
class Erasure:
    """What erasing a data subject removed (node/erasure.py)."""

    subject_id: str
    readings_deleted: int
    consents_deleted: int
    sensors_revoked: list[str]


class Store(Protocol):
    """Synchronous store: everything domain code asks of storage. One instance per thread;
    exactly one instance writes. SqliteStore is the implementation."""

    # -- sensors and ingest
    def schema_version(self) -> int: ...
    def add_sensor(self, sensor: SensorRecord) -> bool: ...
    def get_sensor_by_request(self, request_id: str) -> SensorRecord | None: ...
    def get_sensor(self, sensor_id: str) -> SensorRecord | None: ...
    def list_sensors(self, include_revoked: bool = True) -> list[SensorRecord]: ...
    def revoke_sensor(self, sensor_id: str, at_ms: int) -> SensorRecord | None: ...
    def rekey_sensor(self, sensor_id: str, wrapped_key: bytes, request_id: str | None, at_ms: int,
                     previous_until_ms: int) -> tuple[SensorRecord | None, bool]: ...
    def get_sensor_by_key_request(self, request_id: str) -> SensorRecord | None: ...
    def commit_frames(
        self, frames: Sequence[FrameToCommit], rejections: tuple[Mapping[str, int], Mapping[str, int]] | None = None
    ) -> list[FrameOutcome]: ...
    def record_rejections(self, by_reason: Mapping[str, int], by_sensor: Mapping[str, int]) -> None: ...
    def rejection_counts(self) -> dict[str, int]: ...
    def metric_summaries(self) -> list[MetricSummary]: ...
    def readings(self, where: ReadingFilter) -> list[ReadingRow]: ...

    # -- federation: peers, partners, agreements, outbox, audit, request nonces
    def upsert_peer(self, peer: PeerRecord) -> None: ...
    def get_peer(self, hub_id: str) -> PeerRecord | None: ...
    def list_peers(self, include_removed: bool = False) -> list[PeerRecord]: ...
    def remove_peer(self, hub_id: str, at_ms: int) -> None: ...
    def refresh_peer(self, hub_id: str, descriptor: bytes, valid_until_ms: int, http_url: str, at_ms: int, latency_ms: float,
                     *, tls_cert_pem: str = "") -> None: ...
    def record_peer_contact(self, hub_id: str, at_ms: int, latency_ms: float | None, error: str) -> None: ...
    def add_partner(self, partner: PartnerRecord) -> None: ...
    def get_partner(self, partner_id: str) -> PartnerRecord | None: ...
    def list_partners(self, include_removed: bool = False) -> list[PartnerRecord]: ...
    def remove_partner(self, partner_id: str, at_ms: int) -> None: ...
    def touch_partner(self, partner_id: str, at_ms: int) -> None: ...
    def get_agreement(self, agreement_id: str) -> AgreementRow | None: ...
    def list_agreements(self, party_id: str | None = None) -> list[AgreementRow]: ...
    def save_agreements(
        self, rows: Sequence[AgreementRow], events: Sequence[AgreementEventRow], notify_peers: Sequence[str], now_ms: int,
    ) -> None: ...
    def agreement_events(self, agreement_id: str) -> list[AgreementEventRow]: ...
    def schedule_delivery(self, peer_id: str, now_ms: int) -> None: ...
    def due_deliveries(self, now_ms: int) -> list[Delivery]: ...
    def pending_deliveries(self) -> dict[str, Delivery]: ...
    def delivery_done(self, peer_id: str, generation: int) -> None: ...
    def delivery_failed(self, peer_id: str, error: str, next_attempt_ms: int) -> None: ...
    def reset_backoff(self, peer_id: str, now_ms: int) -> bool: ...
    def append_audit(self, entries: Sequence[bytes]) -> list[AuditRow]: ...
    def audit_rows(self, after_seq: int = 0, limit: int | None = None, newest_first: bool = False) -> list[AuditRow]: ...
    def remember_nonce(self, caller_id: str, nonce: bytes, expires_at_ms: int, now_ms: int) -> bool: ...

    # -- queries: aggregates, consent, quotas
    def aggregate(self, req: AggregateRequest) -> list[CellRow]: ...
    def contributions(self, req: AggregateRequest) -> dict[int, list[Contribution]]: ...
    def readings_by_hour(self, req: AggregateRequest, each: Callable[[int, list[str], list[str]], None]) -> None: ...
    def sketch_bins_by_contributor(self, req: AggregateRequest) -> list[tuple[int, int, int, str, int]]: ...
    def released_overlapping(self, line: ReleaseLine, start_ms: int, end_ms: int) -> list[ReleasedSubcell]: ...
    def log_releases_checked(self, line: ReleaseLine, start_ms: int, end_ms: int,
                             decide: Callable[[list[ReleasedSubcell]], list[ReleasedSubcell]]) -> None: ...
    def released_run(self, line: ReleaseLine, scheme: int, grain: str, start_ms: int, end_ms: int) -> ReleasedRun | None: ...
    def log_release_run(self, line: ReleaseLine, run: ReleasedRun) -> None: ...
    def kept_answer(self, asker_id: str, query_digest: bytes, now_ms: int) -> tuple[str, bytes] | None: ...
    def keep_answer(self, asker_id: str, query_digest: bytes, agreement_id: str, sealed: bytes, expires_at_ms: int,
                    now_ms: int) -> None: ...
    def grant_consent(self, subject_id: str, purpose_code: str, at_ms: int) -> bool: ...
    def withdraw_consent(self, subject_id: str, purpose_code: str, at_ms: int) -> bool: ...
    def list_consents(self, subject_id: str | None = None) -> list[ConsentRow]: ...
    def use_quota(self, agreement_id: str, day: str, limit: int, epsilon: float = 0.0, budget: float = 0.0) -> str: ...
    def quota_used(self, agreement_id: str, day: str) -> tuple[int, float]: ...
    def spend_budget(self, agreement_id: str, micro: int, budget_micro: int, pooled: Sequence[str] = ()) -> bool: ...
    def refund_budget(self, agreement_id: str, micro: int) -> None: ...
    def budget_spent(self, agreement_id: str, pooled: Sequence[str] = ()) -> int: ...

    # -- data lifecycle: retention and erasure (node/retention.py, node/erasure.py)
    def delete_readings_before(self, dataset: str, before_ms: int) -> int: ...
    def erase_subject(self, subject_id: str, at_ms: int) -> Erasure | None: ...
    # Network doors (node/storage/network_tables.py)
    def add_lorawan_sensor(self, sensor: SensorRecord, device: LorawanDeviceRecord) -> bool: ...
    def get_lorawan_device(self, dev_eui: str) -> LorawanDeviceRecord | None: ...
    def list_lorawan_devices(self) -> list[LorawanDeviceRecord]: ...
    def add_lorawan_kek(self, label: str, wrapped_kek: bytes, at_ms: int) -> bool: ...
    def get_lorawan_kek(self, label: str) -> bytes | None: ...
    def list_lorawan_kek_labels(self) -> list[str]: ...
    def lorawan_session_no(self, dev_eui: str, session_key_id: str) -> int: ...
    def catalog_classifications(self) -> dict[str, str]: ...
    def record_catalog_classifications(self, classifications: dict[str, str]) -> None: ...

    def close(self) -> None: ...
