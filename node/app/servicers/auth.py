"""Authentication of admin calls: `authorization: Bearer <admin token>`, checked in constant time."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from node.hubdir import token_matches

ADMIN_SERVICE_PREFIX = "/smartregion.v1.Admin/"


def _deny(message: str) -> grpc.RpcMethodHandler:
    async def handler(request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(handler)


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admin_token_sha256: Callable[[], str]) -> None:
        self._expected = admin_token_sha256  # read at every call: a rotated token takes effect at once

    async def intercept_service(self, continuation, handler_call_details):
        if not handler_call_details.method.startswith(ADMIN_SERVICE_PREFIX):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _deny("admin calls need 'authorization: Bearer <token>' (the token is in DATA_DIR/admin.token)")
        if not token_matches(token.strip(), self._expected()):
            return _deny("the admin credential is not this hub's")
        return await continuation(handler_call_details)
