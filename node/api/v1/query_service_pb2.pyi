from node.api.v1 import envelope_pb2 as _envelope_pb2
from node.api.v1 import query_pb2 as _query_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SealedPartial(_message.Message):
    __slots__ = ("sealed", "agreement_id", "agreement")
    SEALED_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    sealed: bytes
    agreement_id: str
    agreement: bytes
    def __init__(self, sealed: _Optional[bytes] = ..., agreement_id: _Optional[str] = ..., agreement: _Optional[bytes] = ...) -> None: ...

class QueryAnswer(_message.Message):
    __slots__ = ("query", "rows", "provenance", "partial", "missing_hubs", "answered_by", "summary", "summary_signature", "answered_by_public_key", "asker_public_key", "answered_by_key_history", "asker_key_history")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_HUBS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ASKER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_KEY_HISTORY_FIELD_NUMBER: _ClassVar[int]
    ASKER_KEY_HISTORY_FIELD_NUMBER: _ClassVar[int]
    query: _envelope_pb2.SignedRequest
    rows: _containers.RepeatedCompositeFieldContainer[_query_pb2.Row]
    provenance: _containers.RepeatedCompositeFieldContainer[_query_pb2.Provenance]
    partial: bool
    missing_hubs: _containers.RepeatedScalarFieldContainer[str]
    answered_by: str
    summary: bytes
    summary_signature: bytes
    answered_by_public_key: bytes
    asker_public_key: bytes
    answered_by_key_history: _containers.RepeatedScalarFieldContainer[bytes]
    asker_key_history: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, query: _Optional[_Union[_envelope_pb2.SignedRequest, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[_query_pb2.Row, _Mapping]]] = ..., provenance: _Optional[_Iterable[_Union[_query_pb2.Provenance, _Mapping]]] = ..., partial: _Optional[bool] = ..., missing_hubs: _Optional[_Iterable[str]] = ..., answered_by: _Optional[str] = ..., summary: _Optional[bytes] = ..., summary_signature: _Optional[bytes] = ..., answered_by_public_key: _Optional[bytes] = ..., asker_public_key: _Optional[bytes] = ..., answered_by_key_history: _Optional[_Iterable[bytes]] = ..., asker_key_history: _Optional[_Iterable[bytes]] = ...) -> None: ...
