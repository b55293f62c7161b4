"""Admin RPCs for peers, partners and agreements (mixed into AdminServicer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from federation.agreement_book import AgreementInfo
from federation.query_service import QueryService
from federation.service import Federation
from node import consent
from node.api.v1 import admin_pb2, agreement_pb2
from node.app.servicers.common import translate_rejections
from node.register import lookup
from node.storage.base import PartnerRecord, PeerRecord

if TYPE_CHECKING:
    from node.hub import Hub


def peer_message(peer: PeerRecord, state: str, pending: int) -> admin_pb2.Peer:
    return admin_pb2.Peer(
        hub_id=peer.hub_id, municipality_number=peer.municipality, municipality_name=lookup(peer.municipality).name,
        grpc_address=peer.grpc_address, state=state, added_at_ms=peer.added_at_ms,
        last_contact_ms=peer.last_contact_ms or 0, latency_ms=peer.latency_ms or 0.0, last_error=peer.last_error,
        descriptor_valid_until_ms=peer.descriptor_valid_until_ms, identity_public_key=peer.public_key.hex(),
        pending_deliveries=pending,
    )


def partner_message(p: PartnerRecord) -> admin_pb2.Partner:
    return admin_pb2.Partner(partner_id=p.partner_id, name=p.name, org_number=p.org_number, public_key=p.public_key.hex(),
                             added_at_ms=p.added_at_ms, last_contact_ms=p.last_contact_ms or 0, removed_at_ms=p.removed_at_ms or 0)


def agreement_view(info: AgreementInfo) -> admin_pb2.AgreementView:
    e = info.evidence
    return admin_pb2.AgreementView(
        terms=e.terms,
        state=cast("agreement_pb2.AgreementState", info.state),
        signatures=[admin_pb2.SignatureCheck(signer_id=s, role=e.role_of(s), valid=True) for s in sorted(e.signatures)],
        revocations=[r.revocation for _, r in sorted(e.revocations.items())],
        history=[admin_pb2.AgreementEvent(at_ms=h.at_ms, event=h.event, actor=h.actor, detail=h.detail) for h in info.history],
        role=info.role,
        counterparty_id=info.counterparty.id,
        counterparty_name=info.counterparty.name,
        awaiting_my_signature=info.awaiting_my_signature,
    )


class FederationAdmin:
    federation: Federation

    @translate_rejections
    async def AddPeer(self, request, context):
        record = await self.federation.registry.add_peer(request.address.strip(), request.hub_id)
        return peer_message(record, await self.federation.first_contact(record), 0)

    @translate_rejections
    async def ListPeers(self, request, context):
        found = await self.federation.registry.list_peers(request.include_removed)
        return admin_pb2.ListPeersResponse(peers=[peer_message(*item) for item in found])

    @translate_rejections
    async def RemovePeer(self, request, context):
        return peer_message(await self.federation.registry.remove_peer(request.hub_id), "removed", 0)

    @translate_rejections
    async def AddPartner(self, request, context):
        record = await self.federation.registry.add_partner(request.name, request.org_number.strip(), request.public_key_file)
        return partner_message(record)

    @translate_rejections
    async def ListPartners(self, request, context):
        found = await self.federation.registry.list_partners(request.include_removed)
        return admin_pb2.ListPartnersResponse(partners=[partner_message(p) for p in found])

    @translate_rejections
    async def RemovePartner(self, request, context):
        partner, revoked = await self.federation.remove_partner(request.partner_id, request.reason)
        return admin_pb2.RemovePartnerResponse(partner=partner_message(partner), agreements_revoked=revoked)

    @translate_rejections
    async def ProposeAgreement(self, request, context):
        return agreement_view(await self.federation.book.propose(request.terms_toml, request.to))

    @translate_rejections
    async def ListAgreements(self, request, context):
        return admin_pb2.ListAgreementsResponse(agreements=[agreement_view(i) for i in await self.federation.book.list()])

    @translate_rejections
    async def GetAgreement(self, request, context):
        return agreement_view(await self.federation.book.info(request.agreement_id))

    @translate_rejections
    async def AcceptAgreement(self, request, context):
        return agreement_view(await self.federation.book.accept(request.agreement_id))

    @translate_rejections
    async def RevokeAgreement(self, request, context):
        return agreement_view(await self.federation.book.revoke(request.agreement_id, request.reason))

    @translate_rejections
    async def ExportAgreement(self, request, context):
        return admin_pb2.ExportedAgreement(document_json=await self.federation.book.export(request.agreement_id))


def consent_message(row) -> admin_pb2.Consent:
    return admin_pb2.Consent(subject_id=row.subject_id, purpose_code=row.purpose_code,
                             granted_at_ms=row.granted_at_ms, withdrawn_at_ms=row.withdrawn_at_ms or 0)


class QueryAdmin:
    """Admin RPCs for queries and consent (mixed into AdminServicer)."""

    hub: Hub
    queries: QueryService

    @translate_rejections
    async def RunQuery(self, request, context):
        return await self.queries.run_as_hub(request)

    @translate_rejections
    async def GetAgreementBudget(self, request, context):
        return await self.queries.provider.budget(request.agreement_id)

    @translate_rejections
    async def GrantConsent(self, request, context):
        return consent_message(await consent.grant(self.hub.storage, self.hub.clock, request.subject_id, request.purpose_code))

    @translate_rejections
    async def WithdrawConsent(self, request, context):
        return consent_message(await consent.withdraw(self.hub.storage, self.hub.clock, request.subject_id, request.purpose_code))

    @translate_rejections
    async def ListConsents(self, request, context):
        rows = await consent.list_consents(self.hub.storage, request.subject_id)
        return admin_pb2.ListConsentsResponse(consents=[consent_message(r) for r in rows])


class AuditAdmin:
    """Admin RPC for the audit log (mixed into AdminServicer)."""

    federation: Federation

    @translate_rejections
    async def ExportAudit(self, request, context):
        return admin_pb2.AuditExport(jsonl=await self.federation.export_audit())
