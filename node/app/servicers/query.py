"""gRPC Query service: translation only; federation/query_service.py decides."""

from __future__ import annotations

from federation.query_service import QueryService
from node.api.v1 import query_service_pb2_grpc
from node.app.servicers.common import translate_rejections


class QueryServicer(query_service_pb2_grpc.QueryServicer):
    def __init__(self, queries: QueryService) -> None:
        self.queries = queries

    @translate_rejections
    async def Run(self, request, context):
        return await self.queries.run(request)

    @translate_rejections
    async def Partial(self, request, context):
        return await self.queries.partial(request)
