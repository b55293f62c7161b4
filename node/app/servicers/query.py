"""gRPC Query service: translation only; federation/query/ decides.

Every call is authenticated here before the domain sees it (federation.auth.Authenticated);
the health branch replaces this with the one shared authentication wrapper."""

from __future__ import annotations

import grpc

from federation.auth import Authenticated
from federation.query.fanout import QueryService
from federation.query.provider import PARTIAL_METHOD, RUN_METHOD
from node.api.v1 import envelope_pb2, query_service_pb2, query_service_pb2_grpc
from node.app.servicers.common import translate_rejections


class QueryServicer(query_service_pb2_grpc.QueryServicer):
    def __init__(self, queries: QueryService) -> None:
        self.queries = queries

    async def _authenticated(self, signed: envelope_pb2.SignedRequest, method: str) -> Authenticated:
        caller, request = await self.queries.federation.authenticate(signed, method)
        return Authenticated(caller, request, signed)

    @translate_rejections
    async def Run(self, request: envelope_pb2.SignedRequest, context: grpc.aio.ServicerContext) -> query_service_pb2.QueryAnswer:
        return await self.queries.run(await self._authenticated(request, RUN_METHOD))

    @translate_rejections
    async def Partial(self, request: envelope_pb2.SignedRequest, context: grpc.aio.ServicerContext) -> query_service_pb2.SealedPartial:
        return await self.queries.partial(await self._authenticated(request, PARTIAL_METHOD))
