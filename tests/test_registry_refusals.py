"""Every refusal of peer and partner input (federation/registry.py), through the admin API of a
real hub: the status and message docs/federation.md 7.2 names, nothing stored, and the
refusals it says are audited written to the audit log."""

from __future__ import annotations

import json
import secrets
import socket

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import partners
from node.api.v1 import admin_pb2

pytestmark = pytest.mark.asyncio(loop_scope="module")


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def partner_file() -> bytes:
    return partners.public_document(partners.PartnerKey(Ed25519PrivateKey.generate(), "p"))


def mismatched_partner_file() -> bytes:
    doc = json.loads(partner_file())
    doc["partner_id"] = json.loads(partner_file())["partner_id"]  # another key's id
    return json.dumps(doc).encode()


# case -> (method, request builder taking the hub, status, part of the message, audited outcome or None)
CASES = {
    "peer: malformed hub id": ("AddPeer", lambda h: admin_pb2.AddPeerRequest(address=free_address(), hub_id="xyz"),
                               grpc.StatusCode.INVALID_ARGUMENT, "hub id", None),
    "peer: the hub's own id": ("AddPeer", lambda h: admin_pb2.AddPeerRequest(address=free_address(), hub_id=h.hub.config.hub_id),
                               grpc.StatusCode.INVALID_ARGUMENT, "a hub cannot be its own peer", None),
    "peer: address not HOST:PORT": ("AddPeer", lambda h: admin_pb2.AddPeerRequest(address="no-port", hub_id=secrets.token_hex(16)),
                                    grpc.StatusCode.INVALID_ARGUMENT, "is not HOST:PORT", None),
    "peer: unreachable": ("AddPeer", lambda h: admin_pb2.AddPeerRequest(address=free_address(), hub_id=secrets.token_hex(16)),
                          grpc.StatusCode.UNAVAILABLE, "cannot reach", "refused"),
    "peer: another hub at the address": ("AddPeer", lambda h: admin_pb2.AddPeerRequest(address=h.hub.endpoint.grpc_address,
                                                                                      hub_id=secrets.token_hex(16)),
                                         grpc.StatusCode.PERMISSION_DENIED, "is hub ", "refused"),
    "peer remove: not a peer": ("RemovePeer", lambda h: admin_pb2.RemovePeerRequest(hub_id=secrets.token_hex(16)),
                                grpc.StatusCode.NOT_FOUND, "is not a peer", None),
    "partner: empty name": ("AddPartner", lambda h: admin_pb2.AddPartnerRequest(name=" ", org_number="971564679",
                                                                              public_key_file=partner_file()),
                            grpc.StatusCode.INVALID_ARGUMENT, "a partner needs a name", None),
    "partner: organisation number": ("AddPartner", lambda h: admin_pb2.AddPartnerRequest(name="p", org_number="12345",
                                                                                       public_key_file=partner_file()),
                                     grpc.StatusCode.INVALID_ARGUMENT, "is not 9 digits", None),
    "partner: damaged key file": ("AddPartner", lambda h: admin_pb2.AddPartnerRequest(name="p", org_number="971564679",
                                                                                    public_key_file=b"not a key file"),
                                  grpc.StatusCode.INVALID_ARGUMENT, "the partner public key file is damaged", None),
    "partner: id not matching the key": ("AddPartner", lambda h: admin_pb2.AddPartnerRequest(
        name="p", org_number="971564679", public_key_file=mismatched_partner_file()),
        grpc.StatusCode.INVALID_ARGUMENT, "does not match its public key", None),
}


async def registered(hub) -> tuple:
    peers = await hub.admin.ListPeers(admin_pb2.ListPeersRequest(include_removed=True), metadata=hub.admin_metadata)
    partners_ = await hub.admin.ListPartners(admin_pb2.ListPartnersRequest(), metadata=hub.admin_metadata)
    return list(peers.peers), list(partners_.partners)


async def audit_after(hub, seq: int) -> list[dict]:
    return [json.loads(r.entry) for r in await hub.hub.storage.read(lambda s: s.audit_rows(after_seq=seq))]


async def audit_seq(hub) -> int:
    rows = await hub.hub.storage.read(lambda s: s.audit_rows(newest_first=True, limit=1))
    return rows[0].seq if rows else 0


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_peer_and_partner_input_is_refused_and_stores_nothing(module_hub, case):
    method, build, code, message, audited = CASES[case]
    request = build(module_hub)
    before, seq = await registered(module_hub), await audit_seq(module_hub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(module_hub.admin, method)(request, metadata=module_hub.admin_metadata, timeout=30)
    assert err.value.code() == code and message in err.value.details(), err.value.details()
    assert await registered(module_hub) == before
    entries = await audit_after(module_hub, seq)
    if audited:
        assert any(e["action"] == "peer.add" and e["outcome"] == audited and e["subject"] == request.hub_id for e in entries), entries
    else:
        assert not entries, entries


async def test_a_partner_registered_twice_is_refused_the_second_time(module_hub):
    request = admin_pb2.AddPartnerRequest(name="twice", org_number="971564679", public_key_file=partner_file())
    await module_hub.admin.AddPartner(request, metadata=module_hub.admin_metadata)
    before = await registered(module_hub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await module_hub.admin.AddPartner(request, metadata=module_hub.admin_metadata)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "is already registered" in err.value.details()
    assert await registered(module_hub) == before
