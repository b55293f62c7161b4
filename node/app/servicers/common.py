"""Shared servicer plumbing: domain rejections become gRPC statuses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc

from node.errors import Reason, Rejected
from node.storage.base import StorageFull

log = logging.getLogger("smartregion.grpc")
Method = TypeVar("Method", bound=Callable[..., Any])


def grpc_code(rejected: Rejected) -> grpc.StatusCode:
    return grpc.StatusCode[rejected.reason.grpc_code]


async def abort(context: grpc.aio.ServicerContext, rejected: Rejected):
    context.set_trailing_metadata((("smartregion-reason", rejected.reason.label),))
    await context.abort(grpc_code(rejected), rejected.message)


def translate_rejections(method: Method) -> Method:
    """Turn a domain `Rejected` raised by a servicer method into its gRPC status."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except Rejected as rejected:
            log.info("rejected", extra={"method": method.__name__, "reason": rejected.reason.label, "detail": rejected.message})
            await abort(context, rejected)
        except StorageFull as full:  # an admin or federation write on a full disk
            log.warning("storage full", extra={"method": method.__name__, "detail": str(full)})
            await abort(context, Rejected(Reason.STORAGE_FULL, f"{full}; nothing was stored, retry later"))

    return cast(Method, wrapper)
