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
    __slots__ = ("hub_id", "municipality_number", "municipality_name", "identity_public_key", "tls_certificate_pem", "endpoint", "sensors_active", "sensors_revoked", "counts", "rejections_by_reason", "version", "started_at_ms")
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
    def __init__(self, hub_id: _Optional[str] = ..., municipality_number: _Optional[str] = ..., municipality_name: _Optional[str] = ..., identity_public_key: _Optional[str] = ..., tls_certificate_pem: _Optional[str] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., sensors_active: _Optional[int] = ..., sensors_revoked: _Optional[int] = ..., counts: _Optional[_Iterable[_Union[MetricCount, _Mapping]]] = ..., rejections_by_reason: _Optional[_Mapping[str, int]] = ..., version: _Optional[str] = ..., started_at_ms: _Optional[int] = ...) -> None: ...

class AddSensorRequest(_message.Message):
    __slots__ = ("dataset", "metrics", "latitude", "longitude", "subject_id", "label")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    latitude: float
    longitude: float
    subject_id: str
    label: str
    def __init__(self, dataset: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., subject_id: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class Sensor(_message.Message):
    __slots__ = ("sensor_id", "dataset", "metrics", "latitude", "longitude", "subject_id", "label", "enrolled_at_ms", "revoked_at_ms", "last_counter", "last_seen_ms", "frames_accepted", "frames_rejected", "readings")
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
    def __init__(self, sensor_id: _Optional[str] = ..., dataset: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., subject_id: _Optional[str] = ..., label: _Optional[str] = ..., enrolled_at_ms: _Optional[int] = ..., revoked_at_ms: _Optional[int] = ..., last_counter: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., frames_accepted: _Optional[int] = ..., frames_rejected: _Optional[int] = ..., readings: _Optional[int] = ...) -> None: ...

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
