from node.api.v1 import agreement_pb2 as _agreement_pb2
from node.api.v1 import query_pb2 as _query_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedRequest(_message.Message):
    __slots__ = ("payload", "signature")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("caller_id", "audience_hub_id", "method", "issued_at_ms", "nonce", "agreement_exchange", "query", "relayed")
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_HUB_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RELAYED_FIELD_NUMBER: _ClassVar[int]
    caller_id: str
    audience_hub_id: str
    method: str
    issued_at_ms: int
    nonce: bytes
    agreement_exchange: _agreement_pb2.AgreementExchange
    query: _query_pb2.QuerySpec
    relayed: SignedRequest
    def __init__(self, caller_id: _Optional[str] = ..., audience_hub_id: _Optional[str] = ..., method: _Optional[str] = ..., issued_at_ms: _Optional[int] = ..., nonce: _Optional[bytes] = ..., agreement_exchange: _Optional[_Union[_agreement_pb2.AgreementExchange, _Mapping]] = ..., query: _Optional[_Union[_query_pb2.QuerySpec, _Mapping]] = ..., relayed: _Optional[_Union[SignedRequest, _Mapping]] = ...) -> None: ...
