from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QuerySpec(_message.Message):
    __slots__ = ("dataset", "metric", "aggregate", "quantile", "start_ms", "end_ms", "bucket", "group_by", "municipalities", "hub_ids", "purpose_code", "deadline_ms", "epsilon", "answer_key")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITIES_FIELD_NUMBER: _ClassVar[int]
    HUB_IDS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    ANSWER_KEY_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    metric: str
    aggregate: str
    quantile: float
    start_ms: int
    end_ms: int
    bucket: str
    group_by: str
    municipalities: _containers.RepeatedScalarFieldContainer[str]
    hub_ids: _containers.RepeatedScalarFieldContainer[str]
    purpose_code: str
    deadline_ms: int
    epsilon: float
    answer_key: bytes
    def __init__(self, dataset: _Optional[str] = ..., metric: _Optional[str] = ..., aggregate: _Optional[str] = ..., quantile: _Optional[float] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., bucket: _Optional[str] = ..., group_by: _Optional[str] = ..., municipalities: _Optional[_Iterable[str]] = ..., hub_ids: _Optional[_Iterable[str]] = ..., purpose_code: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., epsilon: _Optional[float] = ..., answer_key: _Optional[bytes] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("group", "bucket_start_ms", "count", "sum", "sum_squares", "min", "max", "contributors", "suppressed", "noisy", "value", "coarse", "subcells")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    BUCKET_START_MS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    SUM_SQUARES_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    NOISY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COARSE_FIELD_NUMBER: _ClassVar[int]
    SUBCELLS_FIELD_NUMBER: _ClassVar[int]
    group: str
    bucket_start_ms: int
    count: int
    sum: float
    sum_squares: float
    min: float
    max: float
    contributors: int
    suppressed: bool
    noisy: bool
    value: float
    coarse: CoarseSketch
    subcells: _containers.RepeatedCompositeFieldContainer[CoarseSketch]
    def __init__(self, group: _Optional[str] = ..., bucket_start_ms: _Optional[int] = ..., count: _Optional[int] = ..., sum: _Optional[float] = ..., sum_squares: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., contributors: _Optional[int] = ..., suppressed: _Optional[bool] = ..., noisy: _Optional[bool] = ..., value: _Optional[float] = ..., coarse: _Optional[_Union[CoarseSketch, _Mapping]] = ..., subcells: _Optional[_Iterable[_Union[CoarseSketch, _Mapping]]] = ...) -> None: ...

class CoarseSketch(_message.Message):
    __slots__ = ("level", "bins", "intervals")
    class BinsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    INTERVALS_FIELD_NUMBER: _ClassVar[int]
    level: int
    bins: _containers.ScalarMap[int, int]
    intervals: _containers.RepeatedCompositeFieldContainer[CoarseBin]
    def __init__(self, level: _Optional[int] = ..., bins: _Optional[_Mapping[int, int]] = ..., intervals: _Optional[_Iterable[_Union[CoarseBin, _Mapping]]] = ...) -> None: ...

class CoarseBin(_message.Message):
    __slots__ = ("level", "index", "count")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    level: int
    index: int
    count: int
    def __init__(self, level: _Optional[int] = ..., index: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class PartialResult(_message.Message):
    __slots__ = ("query_digest", "provider_hub_id", "municipality", "agreement_id", "computed_at_ms", "min_group_size", "cells", "dp_budget_micro", "dp_spent_micro")
    QUERY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_HUB_ID_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    DP_BUDGET_MICRO_FIELD_NUMBER: _ClassVar[int]
    DP_SPENT_MICRO_FIELD_NUMBER: _ClassVar[int]
    query_digest: bytes
    provider_hub_id: str
    municipality: str
    agreement_id: str
    computed_at_ms: int
    min_group_size: int
    cells: _containers.RepeatedCompositeFieldContainer[Cell]
    dp_budget_micro: int
    dp_spent_micro: int
    def __init__(self, query_digest: _Optional[bytes] = ..., provider_hub_id: _Optional[str] = ..., municipality: _Optional[str] = ..., agreement_id: _Optional[str] = ..., computed_at_ms: _Optional[int] = ..., min_group_size: _Optional[int] = ..., cells: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ..., dp_budget_micro: _Optional[int] = ..., dp_spent_micro: _Optional[int] = ...) -> None: ...

class SignedPartial(_message.Message):
    __slots__ = ("partial", "signature", "provider_public_key", "provider_key_history")
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_KEY_HISTORY_FIELD_NUMBER: _ClassVar[int]
    partial: bytes
    signature: bytes
    provider_public_key: bytes
    provider_key_history: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, partial: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., provider_public_key: _Optional[bytes] = ..., provider_key_history: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("group", "bucket_start_ms", "bucket_label", "value", "readings", "contributors", "suppressed", "noisy")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    BUCKET_START_MS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_LABEL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    READINGS_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    NOISY_FIELD_NUMBER: _ClassVar[int]
    group: str
    bucket_start_ms: int
    bucket_label: str
    value: float
    readings: int
    contributors: int
    suppressed: bool
    noisy: bool
    def __init__(self, group: _Optional[str] = ..., bucket_start_ms: _Optional[int] = ..., bucket_label: _Optional[str] = ..., value: _Optional[float] = ..., readings: _Optional[int] = ..., contributors: _Optional[int] = ..., suppressed: _Optional[bool] = ..., noisy: _Optional[bool] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("hub_id", "municipality", "agreement_id", "status", "reason", "partial", "latency_ms", "sealed_partial", "agreement", "key_check")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SEALED_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    KEY_CHECK_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    municipality: str
    agreement_id: str
    status: str
    reason: str
    partial: SignedPartial
    latency_ms: float
    sealed_partial: bytes
    agreement: bytes
    key_check: str
    def __init__(self, hub_id: _Optional[str] = ..., municipality: _Optional[str] = ..., agreement_id: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., partial: _Optional[_Union[SignedPartial, _Mapping]] = ..., latency_ms: _Optional[float] = ..., sealed_partial: _Optional[bytes] = ..., agreement: _Optional[bytes] = ..., key_check: _Optional[str] = ...) -> None: ...

class AnswerSummary(_message.Message):
    __slots__ = ("query_digest", "answered_by", "rows", "provenance", "partial", "missing_hubs", "merged_at_ms")
    QUERY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_HUBS_FIELD_NUMBER: _ClassVar[int]
    MERGED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    query_digest: bytes
    answered_by: str
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    provenance: _containers.RepeatedCompositeFieldContainer[ProvenanceSummary]
    partial: bool
    missing_hubs: _containers.RepeatedScalarFieldContainer[str]
    merged_at_ms: int
    def __init__(self, query_digest: _Optional[bytes] = ..., answered_by: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., provenance: _Optional[_Iterable[_Union[ProvenanceSummary, _Mapping]]] = ..., partial: _Optional[bool] = ..., missing_hubs: _Optional[_Iterable[str]] = ..., merged_at_ms: _Optional[int] = ...) -> None: ...

class ProvenanceSummary(_message.Message):
    __slots__ = ("hub_id", "status", "reason", "agreement_id", "partial_digest", "municipality", "agreement_digest")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MUNICIPALITY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    status: str
    reason: str
    agreement_id: str
    partial_digest: bytes
    municipality: str
    agreement_digest: bytes
    def __init__(self, hub_id: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., agreement_id: _Optional[str] = ..., partial_digest: _Optional[bytes] = ..., municipality: _Optional[str] = ..., agreement_digest: _Optional[bytes] = ...) -> None: ...
