"""Why the hub refuses something, in one table shared by gRPC, HTTP, metrics and docs.

Domain code raises `Rejected(Reason.X, "message")`; the gRPC servicers and the HTTP app map the
reason to their own status with `grpc_code` / `http_status`. Codes are names of gRPC status
codes so the domain layer does not import grpc.
"""

from __future__ import annotations

from enum import Enum


class Reason(Enum):
    #                      (gRPC status code,     HTTP, meaning)
    MALFORMED_FRAME = ("INVALID_ARGUMENT", 400, "the bytes are not a sealed frame of a known version")
    FRAME_TOO_LARGE = ("RESOURCE_EXHAUSTED", 413, "a frame or batch exceeds the size limits")
    WRONG_HUB = ("FAILED_PRECONDITION", 421, "the frame is addressed to another hub")
    UNKNOWN_SENSOR = ("UNAUTHENTICATED", 401, "no sensor with this id is enrolled at this hub")
    REVOKED_SENSOR = ("PERMISSION_DENIED", 403, "the sensor was revoked")
    AUTHENTICATION_FAILED = ("UNAUTHENTICATED", 401, "the frame does not authenticate under the sensor's key")
    RETIRED_KEY = ("PERMISSION_DENIED", 403, "the frame is sealed under a key the sensor's rekey retired")
    REPLAYED = ("FAILED_PRECONDITION", 409, "the counter is not above the last one accepted (replay or reordering)")
    MALFORMED_SENML = ("INVALID_ARGUMENT", 422, "the plaintext is not valid SenML JSON (RFC 8428)")
    UNKNOWN_METRIC = ("INVALID_ARGUMENT", 422, "a record names a metric the sensor is not enrolled for")
    NON_FINITE_VALUE = ("INVALID_ARGUMENT", 422, "a value or time is NaN or infinite")
    INVALID_READING = ("INVALID_ARGUMENT", 422, "a value is out of range, has the wrong unit or an impossible time")
    # Network doors (node/networks): uplinks from LoRaWAN network servers, NB-IoT and MQTT gateways
    MALFORMED_UPLINK = ("INVALID_ARGUMENT", 400, "a network server's event is not valid JSON or Protobuf of the expected shape")
    UNKNOWN_DEVICE = ("UNAUTHENTICATED", 401, "no sensor is enrolled for this LoRaWAN DevEUI")
    UNKNOWN_KEK = ("FAILED_PRECONDITION", 412, "the uplink's key envelope is under a KEK label this hub does not hold, or does not unwrap")
    UNDECODABLE_PAYLOAD = ("INVALID_ARGUMENT", 422, "the uplink's payload does not decode with the device's codec")
    RATE_LIMITED = ("RESOURCE_EXHAUSTED", 429, "the sensor sends more readings than its rate limit allows; retry later")
    STORAGE_FULL = ("UNAVAILABLE", 507, "the hub cannot write (disk full); nothing was stored; retry later")
    # Admin and general requests
    REQUEST_TOO_LARGE = ("RESOURCE_EXHAUSTED", 413, "the request exceeds the size limit of its method")
    TIMED_OUT = ("DEADLINE_EXCEEDED", 408, "the client sent nothing for longer than the idle limit")
    INVALID_REQUEST = ("INVALID_ARGUMENT", 400, "the request is malformed or names something invalid")
    NOT_FOUND = ("NOT_FOUND", 404, "the named object does not exist")
    ALREADY_EXISTS = ("ALREADY_EXISTS", 409, "the object exists already")
    UNAUTHENTICATED = ("UNAUTHENTICATED", 401, "missing or wrong credentials")
    PERMISSION_DENIED = ("PERMISSION_DENIED", 403, "the caller is not allowed to do this")
    PROMISED_BY_AGREEMENT = ("FAILED_PRECONDITION", 409, "an active agreement promises more history than the change would keep")
    QUOTA_EXHAUSTED = ("RESOURCE_EXHAUSTED", 429, "the agreement's query quota for today is used up")
    TOO_MANY_PROPOSALS = ("RESOURCE_EXHAUSTED", 429, "the counterparty has the most open agreement proposals allowed")
    TOO_MANY_REFUSALS = ("RESOURCE_EXHAUSTED", 429, "the source sent more refused uplinks than its limit allows; retry later")
    TOO_MANY_CALLS = ("RESOURCE_EXHAUSTED", 429, "the caller's address has the most concurrent calls allowed; retry later")
    UNAVAILABLE = ("UNAVAILABLE", 503, "another hub could not be reached")
    INTERNAL = ("INTERNAL", 500, "the hub cannot process this; its operator must look into it")

    def __init__(self, grpc_code: str, http_status: int, meaning: str) -> None:
        self.grpc_code = grpc_code
        self.http_status = http_status
        self.meaning = meaning

    @property
    def label(self) -> str:
        return self.name.lower()


class Rejected(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason.label}: {self.message}"
