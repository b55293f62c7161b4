"""gRPC Federation service: translation only; federation/service.py decides."""

from __future__ import annotations

import grpc

from federation.service import EXCHANGE_METHOD, Federation
from node.api.v1 import agreement_pb2, federation_pb2, federation_pb2_grpc
from node.app.servicers.common import translate_rejections
from node.errors import Reason, Rejected


class FederationServicer(federation_pb2_grpc.FederationServicer):
    def __init__(self, federation: Federation) -> None:
        self.federation = federation

    async def GetDescriptor(self, request, context: grpc.aio.ServicerContext):
        return self.federation.descriptor()

    async def RegionCatalog(self, request, context: grpc.aio.ServicerContext):
        return federation_pb2.RegionDescriptors(descriptors=await self.federation.region_descriptors())

    @translate_rejections
    async def ExchangeAgreements(self, request, context: grpc.aio.ServicerContext):
        caller, signed_request = await self.federation.authenticate(request, EXCHANGE_METHOD)
        if signed_request.WhichOneof("body") != "agreement_exchange":
            raise Rejected(Reason.INVALID_REQUEST, "ExchangeAgreements takes a request whose body is agreement_exchange")
        merged, held = await self.federation.exchange(caller, list(signed_request.agreement_exchange.documents))
        return federation_pb2.ExchangeAgreementsResponse(
            outcomes=[
                federation_pb2.DocumentOutcome(agreement_id=m.evidence.agreement_id, changed=m.changed, state=m.state)
                for m in merged
            ],
            documents=agreement_pb2.AgreementExchange(documents=[e.to_document() for e in held]),
        )
