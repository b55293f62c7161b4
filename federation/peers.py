"""Reaching other hubs: fetch a hub's certificate and descriptor and check them against the
hub id an admin pinned; open channels pinned to that certificate."""

from __future__ import annotations

import asyncio
import socket
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
    it against the pinned hub id. A server that is not gRPC (a hub's HTTP port, which has the
    same certificate, or a plain HTTP server) is refused here, saying so."""
    host, port = split_address(address)
    try:
        pem, protocol = await asyncio.wait_for(asyncio.to_thread(_tls_handshake, host, port), CALL_TIMEOUT_S)
    except ssl.SSLError as exc:
        if await asyncio.to_thread(_answers_plain_http, host, port):
            raise PeerError(f"{address} answers plain HTTP, without TLS: that is no hub's gRPC port. {WRONG_PORT_HINT}") from None
        raise PeerError(f"cannot reach {address} over TLS: {exc or type(exc).__name__}") from None
    except (TimeoutError, OSError) as exc:
        raise PeerError(f"cannot reach {address} over TLS: {exc or type(exc).__name__}") from None
    if protocol != "h2":
        raise PeerError(f"{address} answers HTTP/1.1, not gRPC (HTTP/2): it is probably the hub's HTTP port (dashboard, "
                        f"/v1/frames). {WRONG_PORT_HINT}")
    return pem.encode()


WRONG_PORT_HINT = "Give the hub's gRPC port (50051 unless its admin chose another; `smartregion status` shows it)."


def _tls_handshake(host: str, port: int) -> tuple[str, str | None]:
    """(the server's certificate as PEM, the application protocol it chose: "h2" for gRPC)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # not trusted here: checked against the pinned hub id next
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, port), timeout=CALL_TIMEOUT_S) as sock, \
            context.wrap_socket(sock, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        if der is None:
            raise ssl.SSLError("the server presented no certificate")
        return ssl.DER_cert_to_PEM_cert(der), tls.selected_alpn_protocol()


def _answers_plain_http(host: str, port: int) -> bool:
    """Whether the server answers an HTTP/1.0 request in plaintext (after a failed TLS handshake)."""
    try:
        with socket.create_connection((host, port), timeout=CALL_TIMEOUT_S) as sock:
            sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


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


# Our signed calls reached the peer, which refused them because it does not know us (yet), or
# no longer: told apart from a network failure by the refusal the Authenticator sends.
WAITING_FOR_PIN = "waiting-for-pin"
REMOVED_BY_THEM = "removed-by-them"
STATE_TEXT = {WAITING_FOR_PIN: "waiting for them to pin us", REMOVED_BY_THEM: "they removed us"}


def refusal_state(error: str) -> str | None:
    """WAITING_FOR_PIN or REMOVED_BY_THEM if `error` (as the outbox records it) is the peer
    refusing us as an unknown caller; None for anything else."""
    if not error.startswith("UNAUTHENTICATED:"):
        return None
    if "was removed as a peer of this hub" in error:
        return REMOVED_BY_THEM
    if "is not a peer or partner of this hub" in error:
        return WAITING_FOR_PIN
    return None


def peer_state(peer: PeerRecord, now_ms: int, delivery_error: str = "") -> str:
    """`delivery_error`: why the pending delivery of agreements to the peer last failed."""
    if peer.removed_at_ms:
        return "removed"
    if peer.descriptor_valid_until_ms <= now_ms:
        return "descriptor-expired"
    refused = refusal_state(delivery_error) or refusal_state(peer.last_error)
    if refused:
        return refused
    if peer.last_error:
        return "unreachable"
    return "reachable"
