"""Every refusal of a peer descriptor, of `peer add` / `peer remove` and of `partner add`.

* federation.descriptors.verify_descriptor: each check, with real identities, certificates and
  signatures, and descriptors an attacker could craft (another key, another hub id, a signature
  under another signing domain, an expired one, another certificate, an unknown municipality).
* Through the admin API of a real hub (grpc.aio, SQLite): AddPeer against a fake hub — a real
  gRPC server with TLS holding a real identity that serves each crafted descriptor — and
  against malformed input, an unreachable address and a server that is no smartregion hub;
  RemovePeer of an unknown hub; AddPartner with each kind of bad input. Each refusal has the
  documented status (docs/federation.md 2.4 and 7.2), stores nothing, and is audited where
  the document says so.
"""

from __future__ import annotations

import datetime as dt
import json
import socket

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from federation import descriptors, partners
from node import identity
from node.api.v1 import admin_pb2, federation_pb2, federation_pb2_grpc
from node.clock import SystemClock
from node.signing import Domain, sign
from tests.conftest import make_hub_dir, start_live_hub

on_the_hubs_loop = pytest.mark.asyncio(loop_scope="module")  # the async tests share one hub (module fixture)

NOW_MS = SystemClock().now_ms()  # the hub under test checks expiry against its own (system) clock
X = identity.generate()  # the hub being pinned
Y = identity.generate()  # someone else


def descriptor_of(ident: identity.HubIdentity, *, signer: Ed25519PrivateKey | None = None, domain: Domain = Domain.DESCRIPTOR,
                  now_ms: int = NOW_MS, **fields) -> federation_pb2.SignedDescriptor:
    """`ident`'s descriptor with `fields` changed, signed (by `signer`, under `domain`) after the change."""
    d = federation_pb2.NodeDescriptor.FromString(descriptors.issue(ident, "1103", "127.0.0.1:1", "", now_ms=now_ms).descriptor)
    for name, value in fields.items():
        setattr(d, name, value)
    payload = d.SerializeToString()
    return federation_pb2.SignedDescriptor(descriptor=payload, signature=sign(signer or ident.identity_key, domain, payload))


def unbound_certificate() -> tuple[bytes, bytes]:
    """A self-signed TLS certificate (and key) with no smartregion identity binding."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def flip_last_byte(signed: federation_pb2.SignedDescriptor) -> federation_pb2.SignedDescriptor:
    altered = signed.signature[:-1] + bytes([signed.signature[-1] ^ 1])
    return federation_pb2.SignedDescriptor(descriptor=signed.descriptor, signature=altered)


# What an attacker serves as hub X, and what the refusal says. Each is reachable through AddPeer.
CRAFTED = {
    "does-not-parse": (lambda: federation_pb2.SignedDescriptor(descriptor=b"\xff\xff\xff", signature=b""), "does not parse"),
    "another-hubs-key": (lambda: descriptor_of(X, identity_public_key=Y.public_key_raw, signer=Y.identity_key),
                         f"is not the key of hub {X.hub_id_text}"),
    "key-of-31-bytes": (lambda: descriptor_of(X, identity_public_key=X.public_key_raw[:31]), f"is not the key of hub {X.hub_id_text}"),
    "names-another-hub": (lambda: descriptor_of(X, hub_id=Y.hub_id_text), f"names hub {Y.hub_id_text}, not {X.hub_id_text}"),
    "signature-altered": (lambda: flip_last_byte(descriptor_of(X)), "signature does not verify"),
    "signed-by-another-key": (lambda: descriptor_of(X, signer=Y.identity_key), "signature does not verify"),
    "signed-in-another-domain": (lambda: descriptor_of(X, domain=Domain.AGREEMENT), "signature does not verify"),
    "expired": (lambda: descriptor_of(X, now_ms=NOW_MS - descriptors.DESCRIPTOR_LIFETIME_MS - 60_000), "has expired"),
    "names-another-certificate": (lambda: descriptor_of(X, tls_certificate_sha256=descriptors.cert_sha256(Y.tls_cert_pem)),
                                  "other than the one its descriptor names"),
    "unknown-municipality": (lambda: descriptor_of(X, municipality_number="9999"), "9999"),
    "municipality-by-name": (lambda: descriptor_of(X, municipality_number="Stavanger"), "'Stavanger' is not a kommunenummer"),
}


# -- verify_descriptor, as a function --------------------------------------------------------------

def test_an_honest_descriptor_verifies_until_its_last_millisecond():
    signed = descriptor_of(X)
    valid_until = federation_pb2.NodeDescriptor.FromString(signed.descriptor).valid_until_ms
    verified = descriptors.verify_descriptor(signed, X.hub_id_text, X.tls_cert_pem, now_ms=valid_until - 1)
    assert verified.descriptor.hub_id == X.hub_id_text and verified.signed == signed
    with pytest.raises(descriptors.DescriptorError, match="has expired"):
        descriptors.verify_descriptor(signed, X.hub_id_text, X.tls_cert_pem, now_ms=valid_until)


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_each_crafted_descriptor_is_refused(case):
    build, message = CRAFTED[case]
    with pytest.raises(descriptors.DescriptorError) as refused:
        descriptors.verify_descriptor(build(), X.hub_id_text, X.tls_cert_pem, now_ms=NOW_MS)
    assert message in str(refused.value)


def test_a_served_certificate_without_an_identity_binding_is_refused():
    cert_pem, _ = unbound_certificate()
    signed = descriptor_of(X, tls_certificate_sha256=descriptors.cert_sha256(cert_pem))
    with pytest.raises(descriptors.DescriptorError, match="no smartregion identity binding"):
        descriptors.verify_descriptor(signed, X.hub_id_text, cert_pem, now_ms=NOW_MS)


def test_a_served_certificate_bound_to_another_key_is_refused():
    """X's descriptor names Y's certificate (say X's admin was tricked into it): the certificate
    is bound to Y's key, not X's."""
    signed = descriptor_of(X, tls_certificate_sha256=descriptors.cert_sha256(Y.tls_cert_pem))
    with pytest.raises(descriptors.DescriptorError, match="bound to another identity key"):
        descriptors.verify_descriptor(signed, X.hub_id_text, Y.tls_cert_pem, now_ms=NOW_MS)


# -- AddPeer, RemovePeer, AddPartner through a real hub's admin API -------------------------------

class FakeHub(federation_pb2_grpc.FederationServicer):
    """A real gRPC server with hub X's TLS certificate, serving whatever descriptor it is given."""

    def __init__(self) -> None:
        self.descriptor: federation_pb2.SignedDescriptor | None = None

    async def GetDescriptor(self, request, context):
        if self.descriptor is None:
            await context.abort(grpc.StatusCode.INTERNAL, "no descriptor today")
        return self.descriptor


async def serve(servicer, cert_pem: bytes, key_pem: bytes) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    federation_pb2_grpc.add_FederationServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    live = await start_live_hub(make_hub_dir(tmp_path_factory.mktemp("refusals") / "hub"))
    fake = FakeHub()
    fake_server, fake_address = await serve(fake, X.tls_cert_pem, X.tls_key_pem)
    plain_cert, plain_key = unbound_certificate()
    plain_server, plain_address = await serve(FakeHub(), plain_cert, plain_key)
    yield live, fake, fake_address, plain_address
    await fake_server.stop(0)
    await plain_server.stop(0)
    await live.stop()


async def admin(live, method: str, request):
    return await getattr(live.admin, method)(request, metadata=live.admin_metadata, timeout=30)


async def refused(live, method: str, request, code: grpc.StatusCode, fragment: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin(live, method, request)
    assert err.value.code() == code, (err.value.code(), err.value.details())
    assert fragment in err.value.details(), err.value.details()
    return err.value.details()


async def audit_tail(live, after_seq: int) -> list[dict]:
    return [json.loads(r.entry) for r in await live.hub.storage.read(lambda s: s.audit_rows(after_seq=after_seq))]


async def audit_seq(live) -> int:
    rows = await live.hub.storage.read(lambda s: s.audit_rows(newest_first=True, limit=1))
    return rows[0].seq if rows else 0


async def assert_no_peers(live) -> None:
    assert not (await admin(live, "ListPeers", admin_pb2.ListPeersRequest(include_removed=True))).peers


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", sorted(CRAFTED))
@on_the_hubs_loop
async def test_add_peer_refuses_each_crafted_descriptor_as_permission_denied_and_audits_it(world, case):
    live, fake, address, _ = world
    build, message = CRAFTED[case]
    fake.descriptor = build()
    seq = await audit_seq(live)
    details = await refused(live, "AddPeer", admin_pb2.AddPeerRequest(address=address, hub_id=X.hub_id_text),
                            grpc.StatusCode.PERMISSION_DENIED, message)
    await assert_no_peers(live)
    [entry] = await audit_tail(live, seq)
    assert (entry["actor"], entry["action"], entry["subject"], entry["outcome"]) == ("admin", "peer.add", X.hub_id_text, "refused")
    assert entry["detail"] == details


@on_the_hubs_loop
async def test_add_peer_refuses_a_server_that_is_not_a_smartregion_hub(world):
    live, _, _, plain_address = world
    seq = await audit_seq(live)
    await refused(live, "AddPeer", admin_pb2.AddPeerRequest(address=plain_address, hub_id=X.hub_id_text),
                  grpc.StatusCode.PERMISSION_DENIED, "not a smartregion hub's")
    await assert_no_peers(live)
    assert [(e["action"], e["outcome"]) for e in await audit_tail(live, seq)] == [("peer.add", "refused")]


@on_the_hubs_loop
async def test_add_peer_refuses_a_hub_other_than_the_pinned_one(world):
    live, _, address, _ = world
    await refused(live, "AddPeer", admin_pb2.AddPeerRequest(address=address, hub_id=Y.hub_id_text),
                  grpc.StatusCode.PERMISSION_DENIED, f"is hub {X.hub_id_text}, not hub {Y.hub_id_text}")
    await assert_no_peers(live)


@on_the_hubs_loop
async def test_add_peer_reports_an_unreachable_hub_or_one_without_a_descriptor_as_unavailable(world):
    live, fake, address, _ = world
    seq = await audit_seq(live)
    await refused(live, "AddPeer", admin_pb2.AddPeerRequest(address=f"127.0.0.1:{closed_port()}", hub_id=X.hub_id_text),
                  grpc.StatusCode.UNAVAILABLE, "cannot reach")
    fake.descriptor = None
    await refused(live, "AddPeer", admin_pb2.AddPeerRequest(address=address, hub_id=X.hub_id_text),
                  grpc.StatusCode.UNAVAILABLE, "did not give its descriptor")
    await assert_no_peers(live)
    assert [(e["action"], e["outcome"]) for e in await audit_tail(live, seq)] == [("peer.add", "refused")] * 2


@pytest.mark.parametrize("address, hub_id, fragment", [
    ("127.0.0.1:1", "", "hub id"),
    ("127.0.0.1:1", "xyz", "hub id"),
    ("127.0.0.1:1", "ab" * 15, "hub id"),
    ("127.0.0.1:1", "ab" * 17, "hub id"),
    ("127.0.0.1:1", "AB" * 15 + "A", "hub id"),
    ("localhost", "3c7b16c11a6c61fd59503d9503796bd2", "is not HOST:PORT"),
    ("localhost:", "3c7b16c11a6c61fd59503d9503796bd2", "is not HOST:PORT"),
    (":8443", "3c7b16c11a6c61fd59503d9503796bd2", "is not HOST:PORT"),
    ("localhost:https", "3c7b16c11a6c61fd59503d9503796bd2", "is not HOST:PORT"),
    ("", "3c7b16c11a6c61fd59503d9503796bd2", "is not HOST:PORT"),
])
@on_the_hubs_loop
async def test_add_peer_refuses_malformed_input_before_fetching_anything(world, address, hub_id, fragment):
    live, *_ = world
    seq = await audit_seq(live)
    await refused(live, "AddPeer", admin_pb2.AddPeerRequest(address=address, hub_id=hub_id), grpc.StatusCode.INVALID_ARGUMENT, fragment)
    await assert_no_peers(live)
    assert await audit_tail(live, seq) == []  # refused before anything was fetched: not audited (7.3)


@on_the_hubs_loop
async def test_add_peer_refuses_the_hubs_own_id(world):
    live, *_ = world
    await refused(live, "AddPeer", admin_pb2.AddPeerRequest(address=live.hub.endpoint.grpc_address, hub_id=live.hub.config.hub_id),
                  grpc.StatusCode.INVALID_ARGUMENT, "cannot be its own peer")
    await assert_no_peers(live)


@pytest.mark.parametrize("hub_id", [X.hub_id_text, "", "   ", "not-a-hub"], ids=["unknown-hub", "empty", "blank", "not-a-hub"])
@on_the_hubs_loop
async def test_remove_peer_refuses_a_hub_that_is_not_a_peer(world, hub_id):
    live, *_ = world
    await refused(live, "RemovePeer", admin_pb2.RemovePeerRequest(hub_id=hub_id), grpc.StatusCode.NOT_FOUND, "is not a peer")
    await assert_no_peers(live)


def public_file(partner: partners.PartnerKey, **changes) -> bytes:
    doc = json.loads(partners.public_document(partner))
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


PARTNER = partners.PartnerKey(Ed25519PrivateKey.generate(), "Universitetet i Stavanger")
OTHER = partners.PartnerKey(Ed25519PrivateKey.generate(), "Someone else")
GOOD_ORG = "971564679"


@pytest.mark.parametrize("name, org_number, key_file, fragment", [
    ("", GOOD_ORG, public_file(PARTNER), "needs a name"),
    ("   ", GOOD_ORG, public_file(PARTNER), "needs a name"),
    ("UiS", "", public_file(PARTNER), "is not 9 digits"),
    ("UiS", "97156467", public_file(PARTNER), "is not 9 digits"),
    ("UiS", "9715646790", public_file(PARTNER), "is not 9 digits"),
    ("UiS", "97156467x", public_file(PARTNER), "is not 9 digits"),
    ("UiS", "971 564 679", public_file(PARTNER), "is not 9 digits"),
    ("UiS", "٩٧١٥٦٤٦٧٩", public_file(PARTNER), "is not 9 digits"),  # Arabic-Indic digits are \d, not digits of an org number
    ("UiS", GOOD_ORG, b"", "damaged"),
    ("UiS", GOOD_ORG, b"not json", "damaged"),
    ("UiS", GOOD_ORG, b"[1, 2]", "damaged"),
    ("UiS", GOOD_ORG, public_file(PARTNER, format="smartregion-hub-descriptor"), "not a smartregion partner public key file"),
    ("UiS", GOOD_ORG, public_file(PARTNER, version=2), "not a smartregion partner public key file"),
    ("UiS", GOOD_ORG, public_file(PARTNER, public_key=None), "damaged"),
    ("UiS", GOOD_ORG, public_file(PARTNER, public_key="zz" * 32), "damaged"),
    ("UiS", GOOD_ORG, public_file(PARTNER, public_key=PARTNER.public_key[:31].hex()), "damaged"),
    ("UiS", GOOD_ORG, public_file(PARTNER, partner_id=OTHER.partner_id), "does not match its public key"),
    ("UiS", GOOD_ORG, public_file(PARTNER, partner_id=None), "does not match its public key"),
])
@on_the_hubs_loop
async def test_add_partner_refuses_bad_input(world, name, org_number, key_file, fragment):
    live, *_ = world
    await refused(live, "AddPartner", admin_pb2.AddPartnerRequest(name=name, org_number=org_number, public_key_file=key_file),
                  grpc.StatusCode.INVALID_ARGUMENT, fragment)
    assert PARTNER.partner_id not in {p.partner_id for p in (await admin(live, "ListPartners", admin_pb2.ListPartnersRequest())).partners}


@on_the_hubs_loop
async def test_add_partner_refuses_a_partner_registered_already(world):
    live, *_ = world
    request = admin_pb2.AddPartnerRequest(name="Statistikk AS", org_number="874789542", public_key_file=public_file(OTHER))
    added = await admin(live, "AddPartner", request)
    assert added.partner_id == OTHER.partner_id
    await refused(live, "AddPartner", request, grpc.StatusCode.ALREADY_EXISTS, "already registered")
    listed = (await admin(live, "ListPartners", admin_pb2.ListPartnersRequest())).partners
    assert [p.partner_id for p in listed].count(OTHER.partner_id) == 1
