"""gRPC Query service: translation only; federation/query/ decides.

Registered with node/app/servicers/authenticated.py: both methods receive an already
authenticated call."""

from __future__ import annotations

import grpc

from federation.auth import Authenticated
from federation.query.fanout import QueryService
from node.api.v1 import query_service_pb2

PUBLIC_METHODS: frozenset[str] = frozenset()


class QueryServicer:
    def __init__(self, queries: QueryService) -> None:
        self.queries = queries

    async def Run(self, call: Authenticated, context: grpc.aio.ServicerContext) -> query_service_pb2.QueryAnswer:
        return await self.queries.run(call)

    async def Partial(self, call: Authenticated, context: grpc.aio.ServicerContext) -> query_service_pb2.SealedPartial:
        return await self.queries.partial(call)
