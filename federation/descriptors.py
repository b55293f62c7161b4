"""Node descriptors: what a hub says about itself, signed by its identity key.

A descriptor is valid for DESCRIPTOR_LIFETIME and re-signed whenever it is served with less
than half of that left, so peers always fetch a fresh one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from node import catalog, register
from node import identity as identity_mod
from node.api.v1 import federation_pb2
from node.keychain import ChainError, KeyChain
from node.signing import Domain, sign, verify

DESCRIPTOR_LIFETIME_MS = 7 * 24 * 3600 * 1000


class DescriptorError(ValueError):
    pass


def cert_sha256(cert_pem: bytes) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def offers(datasets: catalog.Catalog) -> list[federation_pb2.DatasetOffer]:
    """The catalog as a descriptor carries it (names, units, classifications; no data)."""
    return [
        federation_pb2.DatasetOffer(
            name=d.name, classification=d.classification.value, fiware_type=d.fiware_type, description=d.description,
            retention_days=d.retention_days,
            metrics=[federation_pb2.MetricOffer(name=m.name, unit=m.unit, description=m.description) for m in d.metrics.values()],
        )
        for d in datasets.datasets.values()
    ]


def issue(identity: identity_mod.HubIdentity, municipality: str, grpc_address: str, http_url: str,
          now_ms: int, datasets: catalog.Catalog | None = None) -> federation_pb2.SignedDescriptor:
    descriptor = federation_pb2.NodeDescriptor(
        hub_id=identity.hub_id_text,
        municipality_number=municipality,
        municipality_name=register.lookup(municipality).name,
        identity_public_key=identity.public_key_raw,
        key_history=identity.key_history,
        tls_certificate_sha256=cert_sha256(identity.tls_cert_pem),
        grpc_addresses=[grpc_address] if grpc_address else [],
        http_url=http_url,
        issued_at_ms=now_ms,
        valid_until_ms=now_ms + DESCRIPTOR_LIFETIME_MS,
        datasets=offers(datasets) if datasets is not None else [],
    )
    payload = descriptor.SerializeToString()
    return federation_pb2.SignedDescriptor(descriptor=payload, signature=sign(identity.identity_key, Domain.DESCRIPTOR, payload))


def verify_signature(signed: federation_pb2.SignedDescriptor) -> federation_pb2.NodeDescriptor:
    """A descriptor signed by the hub it names (its key hashes to its hub id); for a relayed
    descriptor, whose TLS certificate the reader never saw. Raise DescriptorError otherwise."""
    try:
        d: federation_pb2.NodeDescriptor = federation_pb2.NodeDescriptor.FromString(signed.descriptor)
    except Exception as exc:  # protobuf raises DecodeError, a plain Exception subclass
        raise DescriptorError(f"the descriptor does not parse: {exc}") from None
    try:
        key_chain(d)
    except DescriptorError:
        raise DescriptorError(f"the descriptor of {d.hub_id!r} does not carry that hub's key") from None
    if not verify(d.identity_public_key, Domain.DESCRIPTOR, signed.descriptor, signed.signature):
        raise DescriptorError(f"the descriptor of hub {d.hub_id} is not signed by it")
    return d


def key_chain(d: federation_pb2.NodeDescriptor) -> KeyChain:
    """The descriptor's key history, verified: from the key hashing to its hub id to the key it
    is signed with. Raise DescriptorError naming the break."""
    try:
        return KeyChain.verify(d.hub_id, d.key_history, current_key=bytes(d.identity_public_key))
    except ChainError as exc:
        raise DescriptorError(f"the key history is broken: {exc}") from None
    except ValueError:
        raise DescriptorError(f"the descriptor names no valid hub id ({d.hub_id!r})") from None


def needs_refresh(signed: federation_pb2.SignedDescriptor, now_ms: int) -> bool:
    d = federation_pb2.NodeDescriptor.FromString(signed.descriptor)
    return d.valid_until_ms - now_ms < DESCRIPTOR_LIFETIME_MS // 2


@dataclass(frozen=True)
class VerifiedDescriptor:
    descriptor: federation_pb2.NodeDescriptor
    signed: federation_pb2.SignedDescriptor
    chain: KeyChain


def stored_chain(descriptor_bytes: bytes) -> KeyChain | None:
    """The key history of a descriptor this hub verified and stored earlier (None if none)."""
    if not descriptor_bytes:
        return None
    signed = federation_pb2.SignedDescriptor.FromString(descriptor_bytes)
    return key_chain(federation_pb2.NodeDescriptor.FromString(signed.descriptor))


def verify_descriptor(signed: federation_pb2.SignedDescriptor, expected_hub_id: str, served_cert_pem: bytes,
                      now_ms: int, known: KeyChain | None = None) -> VerifiedDescriptor:
    """Check a descriptor against the pinned hub id and the certificate the hub really served.
    `known`: the key history followed so far; the new one must be it or continue it (a
    replayed older history or a fork is refused, and the caller keeps what it had)."""
    try:
        d = federation_pb2.NodeDescriptor.FromString(signed.descriptor)
    except Exception as exc:  # protobuf raises DecodeError, a plain Exception subclass
        raise DescriptorError(f"the descriptor does not parse: {exc}") from None
    key = d.identity_public_key
    if not d.key_history and (len(key) != 32 or KeyChain.genesis_only(bytes(key)).hub_id_text != expected_hub_id):
        raise DescriptorError(f"the descriptor's key is not the key of hub {expected_hub_id}")
    if d.hub_id != expected_hub_id:
        raise DescriptorError(f"the descriptor names hub {d.hub_id}, not {expected_hub_id}")
    chain = key_chain(d)
    if known is not None:
        try:
            known.check_successor(chain)
        except ChainError as exc:
            raise DescriptorError(f"the key history is refused: {exc}") from None
    if not verify(key, Domain.DESCRIPTOR, signed.descriptor, signed.signature):
        raise DescriptorError("the descriptor's signature does not verify")
    if d.valid_until_ms <= now_ms:
        raise DescriptorError("the descriptor has expired")
    if d.tls_certificate_sha256 != cert_sha256(served_cert_pem):
        raise DescriptorError("the hub served a TLS certificate other than the one its descriptor names (impostor?)")
    cert = x509.load_pem_x509_certificate(served_cert_pem)
    try:
        bound_key = identity_mod.verify_tls_binding(cert, list(d.key_history))
    except identity_mod.IdentityError as exc:
        raise DescriptorError(str(exc)) from None
    if bound_key != key:
        raise DescriptorError("the served TLS certificate is bound to another identity key")
    if not re.fullmatch(r"[0-9]{4}", d.municipality_number):  # lookup() would also accept a name
        raise DescriptorError(f"{d.municipality_number!r} is not a kommunenummer (four digits)")
    try:
        register.lookup(d.municipality_number)
    except register.UnknownMunicipality as exc:
        raise DescriptorError(str(exc)) from None
    return VerifiedDescriptor(d, signed, chain)
