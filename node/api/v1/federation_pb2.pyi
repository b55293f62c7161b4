from node.api.v1 import agreement_pb2 as _agreement_pb2
from node.api.v1 import envelope_pb2 as _envelope_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegionDescriptors(_message.Message):
    __slots__ = ("descriptors",)
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    descriptors: _containers.RepeatedCompositeFieldContainer[SignedDescriptor]
    def __init__(self, descriptors: _Optional[_Iterable[_Union[SignedDescriptor, _Mapping]]] = ...) -> None: ...

class DatasetOffer(_message.Message):
    __slots__ = ("name", "classification", "fiware_type", "description", "retention_days", "metrics")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    FIWARE_TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    classification: str
    fiware_type: str
    description: str
    retention_days: int
    metrics: _containers.RepeatedCompositeFieldContainer[MetricOffer]
    def __init__(self, name: _Optional[str] = ..., classification: _Optional[str] = ..., fiware_type: _Optional[str] = ..., description: _Optional[str] = ..., retention_days: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[MetricOffer, _Mapping]]] = ...) -> None: ...

class MetricOffer(_message.Message):
    __slots__ = ("name", "unit", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    unit: str
    description: str
    def __init__(self, name: _Optional[str] = ..., unit: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class GetDescriptorRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeDescriptor(_message.Message):
    __slots__ = ("hub_id", "municipality_number", "municipality_name", "identity_public_key", "tls_certificate_sha256", "grpc_addresses", "http_url", "issued_at_ms", "valid_until_ms", "key_history", "datasets")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITY_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITY_NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TLS_CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    HTTP_URL_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    KEY_HISTORY_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    municipality_number: str
    municipality_name: str
    identity_public_key: bytes
    tls_certificate_sha256: bytes
    grpc_addresses: _containers.RepeatedScalarFieldContainer[str]
    http_url: str
    issued_at_ms: int
    valid_until_ms: int
    key_history: _containers.RepeatedScalarFieldContainer[bytes]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetOffer]
    def __init__(self, hub_id: _Optional[str] = ..., municipality_number: _Optional[str] = ..., municipality_name: _Optional[str] = ..., identity_public_key: _Optional[bytes] = ..., tls_certificate_sha256: _Optional[bytes] = ..., grpc_addresses: _Optional[_Iterable[str]] = ..., http_url: _Optional[str] = ..., issued_at_ms: _Optional[int] = ..., valid_until_ms: _Optional[int] = ..., key_history: _Optional[_Iterable[bytes]] = ..., datasets: _Optional[_Iterable[_Union[DatasetOffer, _Mapping]]] = ...) -> None: ...

class SignedDescriptor(_message.Message):
    __slots__ = ("descriptor", "signature")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    descriptor: bytes
    signature: bytes
    def __init__(self, descriptor: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class DocumentOutcome(_message.Message):
    __slots__ = ("agreement_id", "changed", "state")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    changed: bool
    state: _agreement_pb2.AgreementState
    def __init__(self, agreement_id: _Optional[str] = ..., changed: _Optional[bool] = ..., state: _Optional[_Union[_agreement_pb2.AgreementState, str]] = ...) -> None: ...

class ExchangeAgreementsResponse(_message.Message):
    __slots__ = ("outcomes", "documents")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[DocumentOutcome]
    documents: _agreement_pb2.AgreementExchange
    def __init__(self, outcomes: _Optional[_Iterable[_Union[DocumentOutcome, _Mapping]]] = ..., documents: _Optional[_Union[_agreement_pb2.AgreementExchange, _Mapping]] = ...) -> None: ...
