from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PartyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARTY_KIND_UNSPECIFIED: _ClassVar[PartyKind]
    PARTY_KIND_HUB: _ClassVar[PartyKind]
    PARTY_KIND_PARTNER: _ClassVar[PartyKind]

class AgreementState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGREEMENT_STATE_UNSPECIFIED: _ClassVar[AgreementState]
    AGREEMENT_STATE_PROPOSED: _ClassVar[AgreementState]
    AGREEMENT_STATE_PENDING: _ClassVar[AgreementState]
    AGREEMENT_STATE_ACTIVE: _ClassVar[AgreementState]
    AGREEMENT_STATE_EXPIRED: _ClassVar[AgreementState]
    AGREEMENT_STATE_REVOKED: _ClassVar[AgreementState]
    AGREEMENT_STATE_SUPERSEDED: _ClassVar[AgreementState]
PARTY_KIND_UNSPECIFIED: PartyKind
PARTY_KIND_HUB: PartyKind
PARTY_KIND_PARTNER: PartyKind
AGREEMENT_STATE_UNSPECIFIED: AgreementState
AGREEMENT_STATE_PROPOSED: AgreementState
AGREEMENT_STATE_PENDING: AgreementState
AGREEMENT_STATE_ACTIVE: AgreementState
AGREEMENT_STATE_EXPIRED: AgreementState
AGREEMENT_STATE_REVOKED: AgreementState
AGREEMENT_STATE_SUPERSEDED: AgreementState

class Party(_message.Message):
    __slots__ = ("kind", "id", "public_key", "name", "municipality")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITY_FIELD_NUMBER: _ClassVar[int]
    kind: PartyKind
    id: str
    public_key: bytes
    name: str
    municipality: str
    def __init__(self, kind: _Optional[_Union[PartyKind, str]] = ..., id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., name: _Optional[str] = ..., municipality: _Optional[str] = ...) -> None: ...

class AgreementTerms(_message.Message):
    __slots__ = ("agreement_id", "version", "supersedes", "provider", "consumer", "purpose_code", "purpose_description", "datasets", "metrics", "aggregates", "group_by", "smallest_bucket", "longest_window_days", "min_group_size", "consent_required", "queries_per_day", "dp_epsilon", "valid_from_ms", "valid_until_ms", "created_at_ms", "dp_max_contributions")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDES_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    SMALLEST_BUCKET_FIELD_NUMBER: _ClassVar[int]
    LONGEST_WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    MIN_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONSENT_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    QUERIES_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    DP_EPSILON_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_MS_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DP_MAX_CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    version: int
    supersedes: str
    provider: Party
    consumer: Party
    purpose_code: str
    purpose_description: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    aggregates: _containers.RepeatedScalarFieldContainer[str]
    group_by: _containers.RepeatedScalarFieldContainer[str]
    smallest_bucket: str
    longest_window_days: int
    min_group_size: int
    consent_required: bool
    queries_per_day: int
    dp_epsilon: float
    valid_from_ms: int
    valid_until_ms: int
    created_at_ms: int
    dp_max_contributions: int
    def __init__(self, agreement_id: _Optional[str] = ..., version: _Optional[int] = ..., supersedes: _Optional[str] = ..., provider: _Optional[_Union[Party, _Mapping]] = ..., consumer: _Optional[_Union[Party, _Mapping]] = ..., purpose_code: _Optional[str] = ..., purpose_description: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Iterable[str]] = ..., aggregates: _Optional[_Iterable[str]] = ..., group_by: _Optional[_Iterable[str]] = ..., smallest_bucket: _Optional[str] = ..., longest_window_days: _Optional[int] = ..., min_group_size: _Optional[int] = ..., consent_required: _Optional[bool] = ..., queries_per_day: _Optional[int] = ..., dp_epsilon: _Optional[float] = ..., valid_from_ms: _Optional[int] = ..., valid_until_ms: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., dp_max_contributions: _Optional[int] = ...) -> None: ...

class PartySignature(_message.Message):
    __slots__ = ("signer_id", "signature", "key_history")
    SIGNER_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_HISTORY_FIELD_NUMBER: _ClassVar[int]
    signer_id: str
    signature: bytes
    key_history: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, signer_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., key_history: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SignedTerms(_message.Message):
    __slots__ = ("terms", "signatures")
    TERMS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    terms: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[PartySignature]
    def __init__(self, terms: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[PartySignature, _Mapping]]] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("agreement_id", "revoked_by", "revoked_at_ms", "reason")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    revoked_by: str
    revoked_at_ms: int
    reason: str
    def __init__(self, agreement_id: _Optional[str] = ..., revoked_by: _Optional[str] = ..., revoked_at_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SignedRevocation(_message.Message):
    __slots__ = ("revocation", "signature", "key_history")
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_HISTORY_FIELD_NUMBER: _ClassVar[int]
    revocation: bytes
    signature: bytes
    key_history: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, revocation: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_history: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AgreementDocument(_message.Message):
    __slots__ = ("signed_terms", "revocations")
    SIGNED_TERMS_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    signed_terms: SignedTerms
    revocations: _containers.RepeatedCompositeFieldContainer[SignedRevocation]
    def __init__(self, signed_terms: _Optional[_Union[SignedTerms, _Mapping]] = ..., revocations: _Optional[_Iterable[_Union[SignedRevocation, _Mapping]]] = ...) -> None: ...

class AgreementExchange(_message.Message):
    __slots__ = ("documents",)
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[AgreementDocument]
    def __init__(self, documents: _Optional[_Iterable[_Union[AgreementDocument, _Mapping]]] = ...) -> None: ...
