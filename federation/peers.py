"""Reaching other hubs: fetch a hub's certificate and descriptor and check them against the
hub id an admin pinned; open channels pinned to that certificate."""

from __future__ import annotations

import asyncio
import ssl

import grpc
from cryptography import x509

from federation import descriptors
from federation.channels import open_peer_channel
from node import identity as identity_mod
from node.api.v1 import federation_pb2, federation_pb2_grpc
from node.keychain import KeyChain
from node.storage.base import PeerRecord

CALL_TIMEOUT_S = 10.0


class PeerError(Exception):
    """`impostor`: the hub at the address is not the pinned one (as opposed to unreachable)."""

    def __init__(self, message: str, impostor: bool = False) -> None:
        super().__init__(message)
        self.impostor = impostor


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise PeerError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def fetch_certificate(address: str) -> bytes:
    """The certificate the server at `address` presents. Not trusted yet: the caller checks
    it against the pinned hub id."""
    host, port = split_address(address)
    try:
        pem = await asyncio.wait_for(asyncio.to_thread(ssl.get_server_certificate, (host, port)), CALL_TIMEOUT_S)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        raise PeerError(f"cannot reach {address} over TLS: {exc or type(exc).__name__}") from None
    return pem.encode()


def hub_id_of_certificate(cert_pem: bytes) -> str:
    """The hub id a certificate names, if it carries a valid identity binding. That alone does
    not prove the hub: a rotated hub's bound key is linked to the id only by its key history,
    which `fetch_descriptor` checks."""
    try:
        hub_id, _ = identity_mod.read_tls_binding(x509.load_pem_x509_certificate(cert_pem))
    except (identity_mod.IdentityError, ValueError) as exc:
        raise PeerError(f"the server's certificate is not a smartregion hub's: {exc}", impostor=True) from None
    return hub_id


def channel_to(address: str, hub_id: str, cert_pem: bytes) -> grpc.aio.Channel:
    return open_peer_channel(address, hub_id, cert_pem)


async def fetch_descriptor(address: str, expected_hub_id: str, now_ms: int,
                           known: KeyChain | None = None) -> tuple[descriptors.VerifiedDescriptor, bytes]:
    """Fetch and verify the descriptor of hub `expected_hub_id` at `address`; return it with
    the certificate to pin. The certificate is trusted by its BINDING: it must be bound to the
    current key of the hub's verified key history (which must continue `known`, the history
    followed so far), whatever its fingerprint. Raises PeerError if anything does not match."""
    cert_pem = await fetch_certificate(address)
    actual = hub_id_of_certificate(cert_pem)
    if actual != expected_hub_id:
        raise PeerError(f"the server at {address} is hub {actual}, not hub {expected_hub_id}", impostor=True)
    async with channel_to(address, expected_hub_id, cert_pem) as channel:
        try:
            signed = await federation_pb2_grpc.FederationStub(channel).GetDescriptor(
                federation_pb2.GetDescriptorRequest(), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise PeerError(f"hub {expected_hub_id} at {address} did not give its descriptor: {exc.code().name} {exc.details()}") from None
    try:
        return descriptors.verify_descriptor(signed, expected_hub_id, cert_pem, now_ms, known), cert_pem
    except descriptors.DescriptorError as exc:
        raise PeerError(f"hub {expected_hub_id} at {address}: {exc}", impostor=True) from None


def peer_record(verified: descriptors.VerifiedDescriptor, address: str, cert_pem: bytes, added_at_ms: int, now_ms: int) -> PeerRecord:
    d = verified.descriptor
    return PeerRecord(
        hub_id=d.hub_id,
        municipality=d.municipality_number,
        public_key=verified.chain.genesis,  # the pinned identity; the current key is in the descriptor
        tls_cert_pem=cert_pem.decode(),
        grpc_address=address,
        http_url=d.http_url,
        descriptor=verified.signed.SerializeToString(),
        descriptor_valid_until_ms=d.valid_until_ms,
        added_at_ms=added_at_ms,
        last_contact_ms=now_ms,
    )


def municipality_conflict(record: PeerRecord, own_municipality: str, current: list[PeerRecord]) -> str | None:
    """Why `record` may not be pinned, if it claims a municipality this hub or another active
    peer already stands for (its cells would merge with the real one's in every answer)."""
    if record.municipality == own_municipality:
        return f"hub {record.hub_id} claims municipality {record.municipality}, which is this hub's own"
    for peer in current:
        if peer.hub_id != record.hub_id and not peer.removed_at_ms and peer.municipality == record.municipality:
            return (f"hub {record.hub_id} claims municipality {record.municipality}, which peer {peer.hub_id} already "
                    f"stands for; remove that peer first if it was replaced")
    return None


def peer_state(peer: PeerRecord, now_ms: int) -> str:
    if peer.removed_at_ms:
        return "removed"
    if peer.descriptor_valid_until_ms <= now_ms:
        return "descriptor-expired"
    if peer.last_error:
        return "unreachable"
    return "reachable"
