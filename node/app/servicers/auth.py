"""Authentication of admin calls: `authorization: Bearer <admin token>`, checked in constant time.

Deny by default: every method needs the admin token unless its service is one that
authenticates its callers another way (named in OTHERWISE_AUTHENTICATED) or is public by
nature (health, reflection). A service added to the server later is admin-only until it is
listed here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from node.hubdir import token_matches

OTHERWISE_AUTHENTICATED = frozenset({
    "smartregion.v1.Ingest",      # each frame is sealed with its sensor's key
    "smartregion.v1.Federation",  # signed envelopes (node/app/servicers/authenticated.py)
    "smartregion.v1.Query",       # signed envelopes (node/app/servicers/authenticated.py)
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
})


def service_of(method: str) -> str:
    """"/pkg.Service/Method" -> "pkg.Service" ("" for anything else)."""
    parts = method.split("/")
    return parts[1] if len(parts) == 3 and not parts[0] else ""


def _deny(message: str) -> grpc.RpcMethodHandler:
    async def handler(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(handler)


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admin_token_sha256: Callable[[], str]) -> None:
        self._expected = admin_token_sha256  # read at every call: a rotated token takes effect at once

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if service_of(handler_call_details.method) in OTHERWISE_AUTHENTICATED:
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _deny("admin calls need 'authorization: Bearer <token>' (the token is in DATA_DIR/admin.token)")
        if not token_matches(token.strip(), self._expected()):
            return _deny("the admin credential is not this hub's")
        return await continuation(handler_call_details)
