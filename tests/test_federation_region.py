"""Issue 3 acceptance: three hubs as separate processes on loopback, peered; agreements between
two hubs and between a hub and a partner; a revocation while the counterparty is down reaches
it after a restart; impostors are refused."""

from __future__ import annotations

import json

import grpc
import pytest

from federation import envelope, partners
from federation.partner_client import PartnerSession
from federation.service import EXCHANGE_METHOD
from node import identity
from node.api.v1 import admin_pb2, agreement_pb2, federation_pb2, federation_pb2_grpc
from node.client import open_channel
from tests.conftest import PASSPHRASE
from tests.region_helpers import ProcessHub, eventually

State = agreement_pb2.AgreementState
TERMS = """
[purpose]
code = "environmental_monitoring"
description = "Regional overview of fine particulate matter"
[data]
datasets = ["air_quality"]
metrics = ["pm25"]
aggregates = ["mean", "count", "min", "max"]
group_by = ["municipality", "time_bucket"]
smallest_bucket = "month"
longest_window_days = 366
min_group_size = 1
queries_per_day = 100
[validity]
from = "now"
until = 2030-01-01T00:00:00Z
"""


@pytest.fixture
async def region(tmp_path):
    hubs = [ProcessHub(tmp_path / name, number) for name, number in (("stavanger", "1103"), ("bergen", "4601"), ("porsgrunn", "4001"))]
    for hub in hubs:
        hub.start()
    try:
        for a in hubs:
            for b in hubs:
                if a is not b:
                    await a.admin("AddPeer", admin_pb2.AddPeerRequest(address=b.address, hub_id=b.hub_id))
        yield hubs
    finally:
        for hub in hubs:
            await hub.stop()


async def test_region_negotiates_revokes_while_down_and_converges(region, tmp_path, monkeypatch):
    stavanger, bergen, porsgrunn = region

    # Hub to hub: Stavanger proposes, Bergen receives it and countersigns.
    proposal = await stavanger.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=TERMS, to=bergen.hub_id))
    agreement_id = proposal.terms.agreement_id
    assert proposal.state == State.AGREEMENT_STATE_PROPOSED
    await eventually(lambda: _awaiting(bergen, agreement_id))
    await bergen.admin("AcceptAgreement", admin_pb2.AgreementRef(agreement_id=agreement_id))
    await eventually(lambda: _is(stavanger, agreement_id, State.AGREEMENT_STATE_ACTIVE))

    # Hub to partner: the partner keeps its key; Porsgrunn only registers the public half.
    monkeypatch.setenv("SMARTREGION_PASSPHRASE", PASSPHRASE)
    partner = partners.keygen(tmp_path / "uis.key", "Universitetet i Stavanger", PASSPHRASE.encode())
    await porsgrunn.admin("AddPartner", admin_pb2.AddPartnerRequest(
        name="Universitetet i Stavanger", org_number="971564679",
        public_key_file=partners.public_file_path(tmp_path / "uis.key").read_bytes()))
    offered = await porsgrunn.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(
        terms_toml=TERMS.replace("environmental_monitoring", "research"), to=partner.partner_id))
    async with PartnerSession(partner, porsgrunn.address, porsgrunn.hub_id) as session:
        [held] = await session.agreements()
        assert held.awaiting_partner and held.evidence.agreement_id == offered.terms.agreement_id
        outcome = await session.accept(offered.terms.agreement_id)
    assert outcome.state == State.AGREEMENT_STATE_ACTIVE
    assert await porsgrunn.state_of(offered.terms.agreement_id) == State.AGREEMENT_STATE_ACTIVE

    # Bergen goes down; Stavanger revokes: effective at once on Stavanger, pending for Bergen.
    await bergen.stop()
    await stavanger.admin("RevokeAgreement", admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason="test: hub down"))
    assert await stavanger.state_of(agreement_id) == State.AGREEMENT_STATE_REVOKED
    peers = await stavanger.admin("ListPeers", admin_pb2.ListPeersRequest())
    bergen_peer = next(p for p in peers.peers if p.hub_id == bergen.hub_id)
    assert bergen_peer.pending_deliveries == 1

    # Bergen comes back on the same address: it receives the revocation, and both agree.
    bergen.start()
    await eventually(lambda: _is(bergen, agreement_id, State.AGREEMENT_STATE_REVOKED))
    await eventually(lambda: _no_pending(stavanger, bergen.hub_id))
    exports = [await hub.admin("ExportAgreement", admin_pb2.AgreementRef(agreement_id=agreement_id)) for hub in (stavanger, bergen)]
    documents = [json.loads(e.document_json)["document"] for e in exports]
    assert documents[0] == documents[1], "both parties hold byte-identical evidence"
    # Porsgrunn was never a party: it holds nothing of it.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await porsgrunn.state_of(agreement_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def _awaiting(hub: ProcessHub, agreement_id: str) -> bool:
    view = await hub.admin("GetAgreement", admin_pb2.AgreementRef(agreement_id=agreement_id))
    return view.awaiting_my_signature


async def _is(hub: ProcessHub, agreement_id: str, state: int) -> bool:
    return await hub.state_of(agreement_id) == state


async def _no_pending(hub: ProcessHub, peer_id: str) -> bool:
    peers = await hub.admin("ListPeers", admin_pb2.ListPeersRequest())
    return next(p for p in peers.peers if p.hub_id == peer_id).pending_deliveries == 0


class CopiedDescriptor(federation_pb2_grpc.FederationServicer):
    """An impostor: serves another hub's signed descriptor, but holds a different key."""

    def __init__(self, descriptor) -> None:
        self.descriptor = descriptor

    async def GetDescriptor(self, request, context):
        return self.descriptor


async def test_impostor_with_copied_descriptor_is_refused(region):
    stavanger, bergen, _ = region
    async with open_channel(bergen.address, hub_id=bergen.hub_id, cert_pem=bergen.hub_dir.tls_cert_pem(), aio=True) as channel:
        copied = await federation_pb2_grpc.FederationStub(channel).GetDescriptor(federation_pb2.GetDescriptorRequest())

    impostor_identity = identity.generate()
    server = grpc.aio.server()
    federation_pb2_grpc.add_FederationServicer_to_server(CopiedDescriptor(copied), server)
    credentials = grpc.ssl_server_credentials([(impostor_identity.tls_key_pem, impostor_identity.tls_cert_pem)])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        # Pinning Bergen's id while dialling the impostor: refused.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stavanger.admin("AddPeer", admin_pb2.AddPeerRequest(address=f"127.0.0.1:{port}", hub_id=bergen.hub_id))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"not hub {bergen.hub_id}" in err.value.details()

        # The impostor calling Stavanger as "Bergen", signing with its own key: refused.
        forged = envelope.make(impostor_identity.identity_key, bergen.hub_id, stavanger.hub_id, EXCHANGE_METHOD,
                               agreement_exchange=agreement_pb2.AgreementExchange())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await federation_pb2_grpc.FederationStub(stavanger.channel).ExchangeAgreements(forged, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(0)
    peers = await stavanger.admin("ListPeers", admin_pb2.ListPeersRequest())
    assert {p.hub_id: p.identity_public_key for p in peers.peers}[bergen.hub_id] == bytes(
        federation_pb2.NodeDescriptor.FromString(copied.descriptor).identity_public_key).hex()
