"""Removing a partner, against two real peered hubs (grpc.aio + TLS, SQLite): its agreements at
the removing hub are revoked through the ledger (signed, audited), its next query there is
refused, the other hub's answers show the removing hub's part denied, and an agreement between
the two hubs is untouched. Bad input changes nothing."""

from __future__ import annotations

import json

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from query_helpers import DAY_MS, agree, deliver, ms, refused, spec, start_nodes, stop_nodes, terms_toml

from federation import partners
from federation.partner_client import PartnerSession
from federation.query import asker
from node.api.v1 import admin_pb2, agreement_pb2
from node.senml import Reading
from tests.conftest import PASSPHRASE

State = agreement_pb2.AgreementState


@pytest.fixture
async def region(tmp_path):
    nodes = await start_nodes(tmp_path, (("stavanger", "1103"), ("sandnes", "1108")))
    yield nodes
    await stop_nodes(nodes)


async def register(node, partner: partners.PartnerKey, key_file) -> str:
    await node.admin("AddPartner", admin_pb2.AddPartnerRequest(
        name="Universitetet i Stavanger", org_number="971564679", public_key_file=partners.public_file_path(key_file).read_bytes()))
    offered = await node.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(
        terms_toml=terms_toml(purpose="research"), to=partner.partner_id))
    async with PartnerSession(partner, node.address, node.id) as session:
        assert (await session.accept(offered.terms.agreement_id)).state == State.AGREEMENT_STATE_ACTIVE
    return offered.terms.agreement_id


async def ask(partner: partners.PartnerKey, entry):
    async with PartnerSession(partner, entry.address, entry.id) as session:
        return await asker.ask(session.channel, partner.key, partner.partner_id, entry.id, spec(purpose_code="research"))


async def test_a_removed_partner_loses_its_agreements_and_is_refused(region, tmp_path):
    stavanger, sandnes = region
    key_file = tmp_path / "uis.key"
    partner = partners.keygen(key_file, "UiS", PASSPHRASE.encode())
    for node in region:
        sensor = await node.live.add_sensor(tmp_path, f"station-{node.municipality}", metrics=["pm25"])
        await deliver(node, sensor, [Reading("pm25", ms(2019, 1, 2) + i * DAY_MS, 10.0 + i) for i in range(3)])
    at_stavanger = await register(stavanger, partner, key_file)
    at_sandnes = await register(sandnes, partner, key_file)
    between_hubs = await agree(stavanger, sandnes, terms_toml())
    before = await ask(partner, sandnes)
    assert not before.partial and {p.hub_id for p in before.provenance if p.status == "answered"} == {stavanger.id, sandnes.id}

    removed = await stavanger.admin("RemovePartner", admin_pb2.RemovePartnerRequest(partner_id=partner.partner_id,
                                                                                    reason="the study ended"))
    assert list(removed.agreements_revoked) == [at_stavanger] and removed.partner.removed_at_ms
    view = await stavanger.view(at_stavanger)
    assert view.state == State.AGREEMENT_STATE_REVOKED
    assert [(r.revoked_by, r.reason) for r in view.revocations] == [(stavanger.id, "the study ended")]  # signed by the hub
    assert (await stavanger.view(between_hubs)).state == State.AGREEMENT_STATE_ACTIVE  # only the partner's agreements end
    assert (await sandnes.view(at_sandnes)).state == State.AGREEMENT_STATE_ACTIVE  # the other hub decides for itself

    # its next query at the hub that removed it is refused, and it is told why
    await refused(lambda: ask(partner, stavanger), grpc.StatusCode.UNAUTHENTICATED, "was removed from this hub")
    with pytest.raises(grpc.aio.AioRpcError) as listing:
        async with PartnerSession(partner, stavanger.address, stavanger.id) as session:
            await session.agreements()
    assert listing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # through the other hub: that hub answers, the removing hub's part is denied
    after = await ask(partner, sandnes)
    parts = {p.hub_id: p for p in after.provenance}
    assert after.partial and list(after.missing_hubs) == [stavanger.id]
    assert parts[stavanger.id].status == "denied" and parts[sandnes.id].status == "answered"
    # someone else claiming the partner's id learns nothing of the removal
    impostor = partners.PartnerKey(Ed25519PrivateKey.generate(), "not UiS")
    details = await refused(lambda: _ask_as(impostor, partner.partner_id, stavanger), grpc.StatusCode.UNAUTHENTICATED)
    assert "removed" not in details and "is not a peer or partner" in details

    rows = await stavanger.live.hub.storage.read(lambda s: s.audit_rows())
    entries = [json.loads(r.entry) for r in rows]
    assert [e["subject"] for e in entries if e["action"] == "partner.remove"] == [partner.partner_id]
    assert any(e["action"] == "agreement.revoke" and e["subject"] == at_stavanger and e["detail"] == "the study ended" for e in entries)
    listed = await stavanger.admin("ListPartners", admin_pb2.ListPartnersRequest())
    assert not listed.partners
    listed = await stavanger.admin("ListPartners", admin_pb2.ListPartnersRequest(include_removed=True))
    assert [p.partner_id for p in listed.partners] == [partner.partner_id]

    # removing it again changes nothing; registering its key again is refused, saying why
    again = await stavanger.admin("RemovePartner", admin_pb2.RemovePartnerRequest(partner_id=partner.partner_id))
    assert list(again.agreements_revoked) == [] and again.partner.removed_at_ms == removed.partner.removed_at_ms
    await refused(lambda: stavanger.admin("AddPartner", admin_pb2.AddPartnerRequest(
        name="UiS", org_number="971564679", public_key_file=partners.public_file_path(key_file).read_bytes())),
        grpc.StatusCode.ALREADY_EXISTS, "was removed from this hub")


async def _ask_as(key_holder, claimed_id: str, entry):
    """A query signed with another key than the claimed caller's."""
    async with PartnerSession(key_holder, entry.address, entry.id) as session:
        return await asker.ask(session.channel, key_holder.key, claimed_id, entry.id, spec(purpose_code="research"))


async def test_removing_an_unknown_partner_changes_nothing(region):
    stavanger, _ = region
    audit_before = await stavanger.audit_seq()
    await refused(lambda: stavanger.admin("RemovePartner", admin_pb2.RemovePartnerRequest(partner_id="ab" * 16)),
                  grpc.StatusCode.NOT_FOUND, "is not a partner registered at this hub")
    assert await stavanger.audit_seq() == audit_before
    assert (await stavanger.admin("ListPartners", admin_pb2.ListPartnersRequest(include_removed=True))).partners == []


async def test_a_removed_peer_is_no_longer_asked_nor_answered(region, tmp_path):
    stavanger, sandnes = region
    for node in region:
        sensor = await node.live.add_sensor(tmp_path, f"station-{node.municipality}", metrics=["pm25"])
        await deliver(node, sensor, [Reading("pm25", ms(2019, 1, 2), 10.0)])
    await agree(stavanger, sandnes, terms_toml())
    await agree(sandnes, stavanger, terms_toml())
    asked = await sandnes.run_query(spec())
    assert {p.hub_id for p in asked.provenance if p.status == "answered"} == {stavanger.id, sandnes.id}

    await stavanger.admin("RemovePeer", admin_pb2.RemovePeerRequest(hub_id=sandnes.id))
    # Stavanger no longer asks Sandnes, and refuses what Sandnes asks, telling it why
    own = await stavanger.run_query(spec())
    assert [p.hub_id for p in own.provenance] == [stavanger.id] and not own.partial
    from_sandnes = await sandnes.run_query(spec())
    parts = {p.hub_id: p for p in from_sandnes.provenance}
    assert parts[stavanger.id].status == "denied" and "was removed as a peer of this hub" in parts[stavanger.id].reason
    assert parts[sandnes.id].status == "answered"
    rows = await stavanger.live.hub.storage.read(lambda s: s.audit_rows())
    assert [json.loads(r.entry)["subject"] for r in rows if json.loads(r.entry)["action"] == "peer.remove"] == [sandnes.id]
