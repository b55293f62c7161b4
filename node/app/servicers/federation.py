"""gRPC Federation service: translation only; federation/agreement_book.py decides.

Registered with node/app/servicers/authenticated.py: every method but GetDescriptor receives
an already authenticated call."""

from __future__ import annotations

import grpc

from federation.auth import Authenticated
from federation.service import Federation
from node.api.v1 import agreement_pb2, federation_pb2
from node.errors import Reason, Rejected

PUBLIC_METHODS = frozenset({"GetDescriptor", "RegionCatalog"})  # signed descriptors: how others check who a hub is and what it offers


class FederationServicer:
    def __init__(self, federation: Federation) -> None:
        self.federation = federation

    async def GetDescriptor(self, request: federation_pb2.GetDescriptorRequest,
                            context: grpc.aio.ServicerContext) -> federation_pb2.SignedDescriptor:
        return self.federation.descriptor()

    async def RegionCatalog(self, request: federation_pb2.GetDescriptorRequest,
                            context: grpc.aio.ServicerContext) -> federation_pb2.RegionDescriptors:
        return federation_pb2.RegionDescriptors(descriptors=await self.federation.region_descriptors())

    async def ExchangeAgreements(self, call: Authenticated, context: grpc.aio.ServicerContext) -> federation_pb2.ExchangeAgreementsResponse:
        if call.request.WhichOneof("body") != "agreement_exchange":
            raise Rejected(Reason.INVALID_REQUEST, "ExchangeAgreements takes a request whose body is agreement_exchange")
        merged, held = await self.federation.book.receive(call.caller, list(call.request.agreement_exchange.documents))
        return federation_pb2.ExchangeAgreementsResponse(
            outcomes=[
                federation_pb2.DocumentOutcome(agreement_id=m.evidence.agreement_id, changed=m.changed,
                                               state=agreement_pb2.AgreementState.Name(m.state))
                for m in merged
            ],
            documents=agreement_pb2.AgreementExchange(documents=[e.to_document() for e in held]),
        )
