from node.api.v1 import agreement_pb2 as _agreement_pb2
from node.api.v1 import query_pb2 as _query_pb2
from node.api.v1 import query_service_pb2 as _query_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MetricCount(_message.Message):
    __slots__ = ("dataset", "metric", "readings", "first_time_ms", "last_time_ms")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    READINGS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    metric: str
    readings: int
    first_time_ms: int
    last_time_ms: int
    def __init__(self, dataset: _Optional[str] = ..., metric: _Optional[str] = ..., readings: _Optional[int] = ..., first_time_ms: _Optional[int] = ..., last_time_ms: _Optional[int] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("grpc_address", "http_url", "tls")
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HTTP_URL_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    grpc_address: str
    http_url: str
    tls: bool
    def __init__(self, grpc_address: _Optional[str] = ..., http_url: _Optional[str] = ..., tls: _Optional[bool] = ...) -> None: ...

class HubStatus(_message.Message):
    __slots__ = ("hub_id", "municipality_number", "municipality_name", "identity_public_key", "tls_certificate_pem", "endpoint", "sensors_active", "sensors_revoked", "counts", "rejections_by_reason", "version", "started_at_ms", "sensors_network_decrypted")
    class RejectionsByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITY_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITY_NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TLS_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SENSORS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SENSORS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SENSORS_NETWORK_DECRYPTED_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    municipality_number: str
    municipality_name: str
    identity_public_key: str
    tls_certificate_pem: str
    endpoint: Endpoint
    sensors_active: int
    sensors_revoked: int
    counts: _containers.RepeatedCompositeFieldContainer[MetricCount]
    rejections_by_reason: _containers.ScalarMap[str, int]
    version: str
    started_at_ms: int
    sensors_network_decrypted: int
    def __init__(self, hub_id: _Optional[str] = ..., municipality_number: _Optional[str] = ..., municipality_name: _Optional[str] = ..., identity_public_key: _Optional[str] = ..., tls_certificate_pem: _Optional[str] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., sensors_active: _Optional[int] = ..., sensors_revoked: _Optional[int] = ..., counts: _Optional[_Iterable[_Union[MetricCount, _Mapping]]] = ..., rejections_by_reason: _Optional[_Mapping[str, int]] = ..., version: _Optional[str] = ..., started_at_ms: _Optional[int] = ..., sensors_network_decrypted: _Optional[int] = ...) -> None: ...

class AddSensorRequest(_message.Message):
    __slots__ = ("dataset", "metrics", "latitude", "longitude", "subject_id", "label", "lorawan_dev_eui", "lorawan_app_s_key", "confidentiality", "codec", "request_id")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LORAWAN_DEV_EUI_FIELD_NUMBER: _ClassVar[int]
    LORAWAN_APP_S_KEY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENTIALITY_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    latitude: float
    longitude: float
    subject_id: str
    label: str
    lorawan_dev_eui: str
    lorawan_app_s_key: str
    confidentiality: str
    codec: str
    request_id: str
    def __init__(self, dataset: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., subject_id: _Optional[str] = ..., label: _Optional[str] = ..., lorawan_dev_eui: _Optional[str] = ..., lorawan_app_s_key: _Optional[str] = ..., confidentiality: _Optional[str] = ..., codec: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class Sensor(_message.Message):
    __slots__ = ("sensor_id", "dataset", "metrics", "latitude", "longitude", "subject_id", "label", "enrolled_at_ms", "revoked_at_ms", "last_counter", "last_seen_ms", "frames_accepted", "frames_rejected", "readings", "confidentiality", "lorawan_dev_eui", "rekeyed_at_ms", "old_key_until_ms")
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    READINGS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENTIALITY_FIELD_NUMBER: _ClassVar[int]
    LORAWAN_DEV_EUI_FIELD_NUMBER: _ClassVar[int]
    REKEYED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    OLD_KEY_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    dataset: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    latitude: float
    longitude: float
    subject_id: str
    label: str
    enrolled_at_ms: int
    revoked_at_ms: int
    last_counter: int
    last_seen_ms: int
    frames_accepted: int
    frames_rejected: int
    readings: int
    confidentiality: str
    lorawan_dev_eui: str
    rekeyed_at_ms: int
    old_key_until_ms: int
    def __init__(self, sensor_id: _Optional[str] = ..., dataset: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., subject_id: _Optional[str] = ..., label: _Optional[str] = ..., enrolled_at_ms: _Optional[int] = ..., revoked_at_ms: _Optional[int] = ..., last_counter: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., frames_accepted: _Optional[int] = ..., frames_rejected: _Optional[int] = ..., readings: _Optional[int] = ..., confidentiality: _Optional[str] = ..., lorawan_dev_eui: _Optional[str] = ..., rekeyed_at_ms: _Optional[int] = ..., old_key_until_ms: _Optional[int] = ...) -> None: ...

class AddLorawanKekRequest(_message.Message):
    __slots__ = ("label", "kek")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    KEK_FIELD_NUMBER: _ClassVar[int]
    label: str
    kek: bytes
    def __init__(self, label: _Optional[str] = ..., kek: _Optional[bytes] = ...) -> None: ...

class LorawanKek(_message.Message):
    __slots__ = ("label",)
    LABEL_FIELD_NUMBER: _ClassVar[int]
    label: str
    def __init__(self, label: _Optional[str] = ...) -> None: ...

class AddSensorResponse(_message.Message):
    __slots__ = ("sensor", "credential_json")
    SENSOR_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_JSON_FIELD_NUMBER: _ClassVar[int]
    sensor: Sensor
    credential_json: bytes
    def __init__(self, sensor: _Optional[_Union[Sensor, _Mapping]] = ..., credential_json: _Optional[bytes] = ...) -> None: ...

class ListSensorsRequest(_message.Message):
    __slots__ = ("include_revoked",)
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    include_revoked: bool
    def __init__(self, include_revoked: _Optional[bool] = ...) -> None: ...

class ListSensorsResponse(_message.Message):
    __slots__ = ("sensors",)
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    sensors: _containers.RepeatedCompositeFieldContainer[Sensor]
    def __init__(self, sensors: _Optional[_Iterable[_Union[Sensor, _Mapping]]] = ...) -> None: ...

class RevokeSensorRequest(_message.Message):
    __slots__ = ("sensor_id",)
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    def __init__(self, sensor_id: _Optional[str] = ...) -> None: ...

class AddPeerRequest(_message.Message):
    __slots__ = ("address", "hub_id")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    address: str
    hub_id: str
    def __init__(self, address: _Optional[str] = ..., hub_id: _Optional[str] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("hub_id", "municipality_number", "municipality_name", "grpc_address", "state", "added_at_ms", "last_contact_ms", "latency_ms", "last_error", "descriptor_valid_until_ms", "identity_public_key", "pending_deliveries")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITY_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITY_NAME_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_VALID_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PENDING_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    municipality_number: str
    municipality_name: str
    grpc_address: str
    state: str
    added_at_ms: int
    last_contact_ms: int
    latency_ms: float
    last_error: str
    descriptor_valid_until_ms: int
    identity_public_key: str
    pending_deliveries: int
    def __init__(self, hub_id: _Optional[str] = ..., municipality_number: _Optional[str] = ..., municipality_name: _Optional[str] = ..., grpc_address: _Optional[str] = ..., state: _Optional[str] = ..., added_at_ms: _Optional[int] = ..., last_contact_ms: _Optional[int] = ..., latency_ms: _Optional[float] = ..., last_error: _Optional[str] = ..., descriptor_valid_until_ms: _Optional[int] = ..., identity_public_key: _Optional[str] = ..., pending_deliveries: _Optional[int] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ("include_removed",)
    INCLUDE_REMOVED_FIELD_NUMBER: _ClassVar[int]
    include_removed: bool
    def __init__(self, include_removed: _Optional[bool] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class RemovePeerRequest(_message.Message):
    __slots__ = ("hub_id",)
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    def __init__(self, hub_id: _Optional[str] = ...) -> None: ...

class AddPartnerRequest(_message.Message):
    __slots__ = ("name", "org_number", "public_key_file")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORG_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    org_number: str
    public_key_file: bytes
    def __init__(self, name: _Optional[str] = ..., org_number: _Optional[str] = ..., public_key_file: _Optional[bytes] = ...) -> None: ...

class Partner(_message.Message):
    __slots__ = ("partner_id", "name", "org_number", "public_key", "added_at_ms", "last_contact_ms", "removed_at_ms")
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORG_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ADDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_MS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    partner_id: str
    name: str
    org_number: str
    public_key: str
    added_at_ms: int
    last_contact_ms: int
    removed_at_ms: int
    def __init__(self, partner_id: _Optional[str] = ..., name: _Optional[str] = ..., org_number: _Optional[str] = ..., public_key: _Optional[str] = ..., added_at_ms: _Optional[int] = ..., last_contact_ms: _Optional[int] = ..., removed_at_ms: _Optional[int] = ...) -> None: ...

class ListPartnersRequest(_message.Message):
    __slots__ = ("include_removed",)
    INCLUDE_REMOVED_FIELD_NUMBER: _ClassVar[int]
    include_removed: bool
    def __init__(self, include_removed: _Optional[bool] = ...) -> None: ...

class ListPartnersResponse(_message.Message):
    __slots__ = ("partners",)
    PARTNERS_FIELD_NUMBER: _ClassVar[int]
    partners: _containers.RepeatedCompositeFieldContainer[Partner]
    def __init__(self, partners: _Optional[_Iterable[_Union[Partner, _Mapping]]] = ...) -> None: ...

class ProposeAgreementRequest(_message.Message):
    __slots__ = ("terms_toml", "to")
    TERMS_TOML_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    terms_toml: str
    to: str
    def __init__(self, terms_toml: _Optional[str] = ..., to: _Optional[str] = ...) -> None: ...

class AgreementRef(_message.Message):
    __slots__ = ("agreement_id",)
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    def __init__(self, agreement_id: _Optional[str] = ...) -> None: ...

class RevokeAgreementRequest(_message.Message):
    __slots__ = ("agreement_id", "reason")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    reason: str
    def __init__(self, agreement_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListAgreementsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SignatureCheck(_message.Message):
    __slots__ = ("signer_id", "role", "valid")
    SIGNER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    signer_id: str
    role: str
    valid: bool
    def __init__(self, signer_id: _Optional[str] = ..., role: _Optional[str] = ..., valid: _Optional[bool] = ...) -> None: ...

class AgreementEvent(_message.Message):
    __slots__ = ("at_ms", "event", "actor", "detail")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    event: str
    actor: str
    detail: str
    def __init__(self, at_ms: _Optional[int] = ..., event: _Optional[str] = ..., actor: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class AgreementView(_message.Message):
    __slots__ = ("terms", "state", "signatures", "revocations", "history", "role", "counterparty_id", "counterparty_name", "awaiting_my_signature")
    TERMS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTY_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTY_NAME_FIELD_NUMBER: _ClassVar[int]
    AWAITING_MY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    terms: _agreement_pb2.AgreementTerms
    state: _agreement_pb2.AgreementState
    signatures: _containers.RepeatedCompositeFieldContainer[SignatureCheck]
    revocations: _containers.RepeatedCompositeFieldContainer[_agreement_pb2.Revocation]
    history: _containers.RepeatedCompositeFieldContainer[AgreementEvent]
    role: str
    counterparty_id: str
    counterparty_name: str
    awaiting_my_signature: bool
    def __init__(self, terms: _Optional[_Union[_agreement_pb2.AgreementTerms, _Mapping]] = ..., state: _Optional[_Union[_agreement_pb2.AgreementState, str]] = ..., signatures: _Optional[_Iterable[_Union[SignatureCheck, _Mapping]]] = ..., revocations: _Optional[_Iterable[_Union[_agreement_pb2.Revocation, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[AgreementEvent, _Mapping]]] = ..., role: _Optional[str] = ..., counterparty_id: _Optional[str] = ..., counterparty_name: _Optional[str] = ..., awaiting_my_signature: _Optional[bool] = ...) -> None: ...

class AgreementBudget(_message.Message):
    __slots__ = ("agreement_id", "budget_micro", "spent_micro", "remaining_micro", "role", "max_contributions")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MICRO_FIELD_NUMBER: _ClassVar[int]
    SPENT_MICRO_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MICRO_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    budget_micro: int
    spent_micro: int
    remaining_micro: int
    role: str
    max_contributions: int
    def __init__(self, agreement_id: _Optional[str] = ..., budget_micro: _Optional[int] = ..., spent_micro: _Optional[int] = ..., remaining_micro: _Optional[int] = ..., role: _Optional[str] = ..., max_contributions: _Optional[int] = ...) -> None: ...

class ListAgreementsResponse(_message.Message):
    __slots__ = ("agreements",)
    AGREEMENTS_FIELD_NUMBER: _ClassVar[int]
    agreements: _containers.RepeatedCompositeFieldContainer[AgreementView]
    def __init__(self, agreements: _Optional[_Iterable[_Union[AgreementView, _Mapping]]] = ...) -> None: ...

class ExportedAgreement(_message.Message):
    __slots__ = ("document_json",)
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    document_json: bytes
    def __init__(self, document_json: _Optional[bytes] = ...) -> None: ...

class ConsentRequest(_message.Message):
    __slots__ = ("subject_id", "purpose_code")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    purpose_code: str
    def __init__(self, subject_id: _Optional[str] = ..., purpose_code: _Optional[str] = ...) -> None: ...

class Consent(_message.Message):
    __slots__ = ("subject_id", "purpose_code", "granted_at_ms", "withdrawn_at_ms")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    purpose_code: str
    granted_at_ms: int
    withdrawn_at_ms: int
    def __init__(self, subject_id: _Optional[str] = ..., purpose_code: _Optional[str] = ..., granted_at_ms: _Optional[int] = ..., withdrawn_at_ms: _Optional[int] = ...) -> None: ...

class ListConsentsRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class ListConsentsResponse(_message.Message):
    __slots__ = ("consents",)
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    consents: _containers.RepeatedCompositeFieldContainer[Consent]
    def __init__(self, consents: _Optional[_Iterable[_Union[Consent, _Mapping]]] = ...) -> None: ...

class ExportAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditExport(_message.Message):
    __slots__ = ("jsonl",)
    JSONL_FIELD_NUMBER: _ClassVar[int]
    jsonl: bytes
    def __init__(self, jsonl: _Optional[bytes] = ...) -> None: ...

class RotateAdminTokenRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateAdminTokenResponse(_message.Message):
    __slots__ = ("token_file", "token_sha256", "rotated_at_ms")
    TOKEN_FILE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SHA256_FIELD_NUMBER: _ClassVar[int]
    ROTATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    token_file: str
    token_sha256: str
    rotated_at_ms: int
    def __init__(self, token_file: _Optional[str] = ..., token_sha256: _Optional[str] = ..., rotated_at_ms: _Optional[int] = ...) -> None: ...

class EraseSubjectRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class ErasureReport(_message.Message):
    __slots__ = ("subject_id", "readings_deleted", "consents_deleted", "sensors_revoked", "erased_at_ms")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    READINGS_DELETED_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    SENSORS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    ERASED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    readings_deleted: int
    consents_deleted: int
    sensors_revoked: _containers.RepeatedScalarFieldContainer[str]
    erased_at_ms: int
    def __init__(self, subject_id: _Optional[str] = ..., readings_deleted: _Optional[int] = ..., consents_deleted: _Optional[int] = ..., sensors_revoked: _Optional[_Iterable[str]] = ..., erased_at_ms: _Optional[int] = ...) -> None: ...

class RunRetentionRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class DatasetRetention(_message.Message):
    __slots__ = ("dataset", "retention_days", "promised_days", "readings_deleted", "cutoff_ms")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    PROMISED_DAYS_FIELD_NUMBER: _ClassVar[int]
    READINGS_DELETED_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_MS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    retention_days: int
    promised_days: int
    readings_deleted: int
    cutoff_ms: int
    def __init__(self, dataset: _Optional[str] = ..., retention_days: _Optional[int] = ..., promised_days: _Optional[int] = ..., readings_deleted: _Optional[int] = ..., cutoff_ms: _Optional[int] = ...) -> None: ...

class RetentionReport(_message.Message):
    __slots__ = ("datasets", "ran_at_ms")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    RAN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetRetention]
    ran_at_ms: int
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetRetention, _Mapping]]] = ..., ran_at_ms: _Optional[int] = ...) -> None: ...

class SetRetentionRequest(_message.Message):
    __slots__ = ("dataset", "retention_days")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    retention_days: int
    def __init__(self, dataset: _Optional[str] = ..., retention_days: _Optional[int] = ...) -> None: ...

class RekeySensorRequest(_message.Message):
    __slots__ = ("sensor_id", "request_id", "old_key_grace_seconds")
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_KEY_GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    request_id: str
    old_key_grace_seconds: int
    def __init__(self, sensor_id: _Optional[str] = ..., request_id: _Optional[str] = ..., old_key_grace_seconds: _Optional[int] = ...) -> None: ...

class RemovePartnerRequest(_message.Message):
    __slots__ = ("partner_id", "reason")
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    partner_id: str
    reason: str
    def __init__(self, partner_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RemovePartnerResponse(_message.Message):
    __slots__ = ("partner", "agreements_revoked")
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    AGREEMENTS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    partner: Partner
    agreements_revoked: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, partner: _Optional[_Union[Partner, _Mapping]] = ..., agreements_revoked: _Optional[_Iterable[str]] = ...) -> None: ...

class RenewCertificateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCertificateStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CertificateStatus(_message.Message):
    __slots__ = ("certificate_sha256", "not_after_ms", "days_left", "renewal_due", "message", "key_rotations", "issuer_not_after_ms", "issuer_sha256", "issuer_created")
    CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    DAYS_LEFT_FIELD_NUMBER: _ClassVar[int]
    RENEWAL_DUE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_ROTATIONS_FIELD_NUMBER: _ClassVar[int]
    ISSUER_NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    ISSUER_SHA256_FIELD_NUMBER: _ClassVar[int]
    ISSUER_CREATED_FIELD_NUMBER: _ClassVar[int]
    certificate_sha256: str
    not_after_ms: int
    days_left: float
    renewal_due: bool
    message: str
    key_rotations: int
    issuer_not_after_ms: int
    issuer_sha256: str
    issuer_created: bool
    def __init__(self, certificate_sha256: _Optional[str] = ..., not_after_ms: _Optional[int] = ..., days_left: _Optional[float] = ..., renewal_due: _Optional[bool] = ..., message: _Optional[str] = ..., key_rotations: _Optional[int] = ..., issuer_not_after_ms: _Optional[int] = ..., issuer_sha256: _Optional[str] = ..., issuer_created: _Optional[bool] = ...) -> None: ...

class ReissueCredentialRequest(_message.Message):
    __slots__ = ("sensor_id",)
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    def __init__(self, sensor_id: _Optional[str] = ...) -> None: ...

class RotateIdentityKeyRequest(_message.Message):
    __slots__ = ("new_tls_issuer",)
    NEW_TLS_ISSUER_FIELD_NUMBER: _ClassVar[int]
    new_tls_issuer: bool
    def __init__(self, new_tls_issuer: _Optional[bool] = ...) -> None: ...

class KeyRotation(_message.Message):
    __slots__ = ("hub_id", "rotation", "old_public_key", "new_public_key", "key_history", "certificate_sha256", "rotated_at_ms", "issuer_created", "issuer_replaced")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    OLD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NEW_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_HISTORY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ROTATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ISSUER_CREATED_FIELD_NUMBER: _ClassVar[int]
    ISSUER_REPLACED_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    rotation: int
    old_public_key: bytes
    new_public_key: bytes
    key_history: _containers.RepeatedScalarFieldContainer[bytes]
    certificate_sha256: str
    rotated_at_ms: int
    issuer_created: bool
    issuer_replaced: bool
    def __init__(self, hub_id: _Optional[str] = ..., rotation: _Optional[int] = ..., old_public_key: _Optional[bytes] = ..., new_public_key: _Optional[bytes] = ..., key_history: _Optional[_Iterable[bytes]] = ..., certificate_sha256: _Optional[str] = ..., rotated_at_ms: _Optional[int] = ..., issuer_created: _Optional[bool] = ..., issuer_replaced: _Optional[bool] = ...) -> None: ...
