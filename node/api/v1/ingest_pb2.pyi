from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SealedFrame(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    def __init__(self, frame: _Optional[bytes] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[SealedFrame]
    def __init__(self, frames: _Optional[_Iterable[_Union[SealedFrame, _Mapping]]] = ...) -> None: ...

class FrameReceipt(_message.Message):
    __slots__ = ("sensor_id", "counter", "readings_stored", "readings_duplicate")
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    READINGS_STORED_FIELD_NUMBER: _ClassVar[int]
    READINGS_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    counter: int
    readings_stored: int
    readings_duplicate: int
    def __init__(self, sensor_id: _Optional[str] = ..., counter: _Optional[int] = ..., readings_stored: _Optional[int] = ..., readings_duplicate: _Optional[int] = ...) -> None: ...

class SubmitBatchResponse(_message.Message):
    __slots__ = ("receipts",)
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    receipts: _containers.RepeatedCompositeFieldContainer[FrameReceipt]
    def __init__(self, receipts: _Optional[_Iterable[_Union[FrameReceipt, _Mapping]]] = ...) -> None: ...

class StreamFramesResponse(_message.Message):
    __slots__ = ("frames_accepted", "readings_stored", "readings_duplicate", "last_counter")
    class LastCounterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FRAMES_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    READINGS_STORED_FIELD_NUMBER: _ClassVar[int]
    READINGS_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LAST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    frames_accepted: int
    readings_stored: int
    readings_duplicate: int
    last_counter: _containers.ScalarMap[str, int]
    def __init__(self, frames_accepted: _Optional[int] = ..., readings_stored: _Optional[int] = ..., readings_duplicate: _Optional[int] = ..., last_counter: _Optional[_Mapping[str, int]] = ...) -> None: ...
