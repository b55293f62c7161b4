"""Registration of services whose every method is authenticated before its handler runs.

The handlers are built from the service's descriptor in the generated code, not from a list
written by hand: a method added to the .proto is authenticated unless it is named in
`public`, and the hub refuses to start if the servicer lacks a handler for it. Each
authenticated method takes a `SignedRequest`; the wrapper parses it (garbage is
UNAUTHENTICATED, not a decoding error), passes it to the `Authenticator` with the method's
full name and the caller's network address, and calls the handler with the `Authenticated`
call. A handler never sees an unauthenticated request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from federation.auth import Authenticated, Authenticator, source_address
from node.api.v1 import envelope_pb2
from node.app.servicers.common import abort, log
from node.errors import Rejected

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
SIGNED_REQUEST = envelope_pb2.SignedRequest.DESCRIPTOR.full_name


def _identity(data: bytes) -> bytes:
    return data


def _translated(method: str, handler: Handler) -> Handler:
    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(request, context)
        except Rejected as rejected:
            log.info("rejected", extra={"method": method, "reason": rejected.reason.label, "detail": rejected.message})
            await abort(context, rejected)

    return behaviour


def _authenticated(method: str, handler: Callable[[Authenticated, grpc.aio.ServicerContext], Awaitable[Any]],
                   authenticator: Authenticator) -> Handler:
    async def behaviour(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        source = source_address(context.peer() or "unknown")
        try:
            signed = envelope_pb2.SignedRequest.FromString(raw)
        except DecodeError:
            signed = envelope_pb2.SignedRequest(payload=b"\xff")  # refused (and counted) as unparseable below
        call = await authenticator.authenticate(signed, method, source)
        return await handler(call, context)

    return _translated(method, behaviour)


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object, authenticator: Authenticator,
                public: frozenset[str] = frozenset()) -> None:
    """Serve every method of `service` from `servicer`; all but those in `public` authenticated."""
    unknown = public - {m.name for m in service.methods}
    if unknown:
        raise ValueError(f"{service.full_name} has no methods {sorted(unknown)}")
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{service.full_name}/{method.name}: streaming methods cannot be authenticated by envelope")
        full_name = f"/{service.full_name}/{method.name}"
        handler = getattr(servicer, method.name, None)
        if handler is None:
            raise TypeError(f"{type(servicer).__name__} has no handler for {full_name}")
        response = GetMessageClass(method.output_type)
        if method.name in public:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _translated(full_name, handler), request_deserializer=GetMessageClass(method.input_type).FromString,
                response_serializer=response.SerializeToString)
            continue
        if method.input_type.full_name != SIGNED_REQUEST:
            raise TypeError(f"{full_name} must take a SignedRequest to be authenticated (or be listed as public)")
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _authenticated(full_name, handler, authenticator), request_deserializer=_identity,
            response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
