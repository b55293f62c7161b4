"""A hub's identity: an Ed25519 identity key, and a TLS key whose certificate it vouches for.

The TLS certificate (ECDSA P-256, self-signed, CN and DNS name = hub id) carries an extension
with the identity public key and the identity key's signature over
`TLS_BINDING_DOMAIN || SubjectPublicKeyInfo(DER)`. Anyone holding only the certificate can
therefore check which identity it belongs to and derive the hub id; clients pin the certificate
and check the server name equals the hub id.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from node import ids

TLS_BINDING_DOMAIN = b"smartregion/v1/tls-binding\x00"
# An OID under the UUID arc (ITU-T X.667), so no registration is needed.
TLS_BINDING_OID = x509.ObjectIdentifier("2.25.203920180945178712633153802452796473511")
CERT_VALIDITY = dt.timedelta(days=3 * 365)


class IdentityError(Exception):
    pass


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _der_octet_string(payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([0x04, len(payload)]) + payload


@dataclass(frozen=True)
class HubIdentity:
    identity_key: Ed25519PrivateKey
    tls_key: ec.EllipticCurvePrivateKey
    tls_cert: x509.Certificate
    key_encryption_key: bytes  # wraps sensor keys at rest

    @property
    def public_key_raw(self) -> bytes:
        return raw_public(self.identity_key.public_key())

    @property
    def hub_id(self) -> bytes:
        return ids.hub_id_from_public_key(self.public_key_raw)

    @property
    def hub_id_text(self) -> str:
        return ids.to_text(self.hub_id)

    @property
    def tls_cert_pem(self) -> bytes:
        return self.tls_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def tls_key_pem(self) -> bytes:
        return self.tls_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, domain: bytes, message: bytes) -> bytes:
        """Sign exact bytes under a domain-separation prefix (which must end in NUL)."""
        if not domain.endswith(b"\x00"):
            raise ValueError("a signing domain ends with a NUL byte")
        return self.identity_key.sign(domain + message)

    def to_secrets(self) -> dict[str, bytes]:
        return {
            "identity_key": self.identity_key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            ),
            "tls_key": self.tls_key_pem,
            "tls_cert": self.tls_cert_pem,
            "key_encryption_key": self.key_encryption_key,
        }

    @classmethod
    def from_secrets(cls, values: dict[str, bytes]) -> HubIdentity:
        try:
            tls_key = serialization.load_pem_private_key(values["tls_key"], password=None)
            if not isinstance(tls_key, ec.EllipticCurvePrivateKey):
                raise ValueError("the TLS key is not an elliptic-curve key")
            identity = cls(
                identity_key=Ed25519PrivateKey.from_private_bytes(values["identity_key"]),
                tls_key=tls_key,
                tls_cert=x509.load_pem_x509_certificate(values["tls_cert"]),
                key_encryption_key=values["key_encryption_key"],
            )
        except (KeyError, ValueError) as exc:
            raise IdentityError(f"the keystore does not hold a complete hub identity: {exc}") from exc
        if verify_tls_binding(identity.tls_cert) != identity.public_key_raw:
            raise IdentityError("the TLS certificate is not bound to this identity key")
        return identity


def generate(hostnames: tuple[str, ...] = ()) -> HubIdentity:
    identity_key = Ed25519PrivateKey.generate()
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_tls_certificate(identity_key, tls_key, hostnames)
    return HubIdentity(identity_key, tls_key, cert, secrets.token_bytes(32))


def issue_tls_certificate(
    identity_key: Ed25519PrivateKey, tls_key: ec.EllipticCurvePrivateKey, hostnames: tuple[str, ...] = ()
) -> x509.Certificate:
    public_raw = raw_public(identity_key.public_key())
    hub_id_text = ids.to_text(ids.hub_id_from_public_key(public_raw))
    binding = identity_key.sign(TLS_BINDING_DOMAIN + _spki(tls_key.public_key()))
    names: list[x509.GeneralName] = [x509.DNSName(hub_id_text), x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, hub_id_text),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smartregion hub"),
    ])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(TLS_BINDING_OID, _der_octet_string(public_raw + binding)), critical=False
        )
        .sign(tls_key, hashes.SHA256())
    )


def verify_tls_binding(cert: x509.Certificate) -> bytes:
    """Return the identity public key the certificate is bound to; raise IdentityError if none."""
    try:
        ext = cert.extensions.get_extension_for_oid(TLS_BINDING_OID).value
    except x509.ExtensionNotFound:
        raise IdentityError("the certificate carries no smartregion identity binding") from None
    if not isinstance(ext, x509.UnrecognizedExtension):  # an OID cryptography knows is not ours
        raise IdentityError("malformed identity binding in the certificate")
    value = ext.value
    if len(value) != 2 + 32 + 64 or value[:2] != b"\x04\x60":
        raise IdentityError("malformed identity binding in the certificate")
    public_raw, signature = value[2:34], value[34:]
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(
            signature, TLS_BINDING_DOMAIN + _spki(cert.public_key())
        )
    except InvalidSignature:
        raise IdentityError("the certificate's identity binding signature is invalid") from None
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    expected = ids.to_text(ids.hub_id_from_public_key(public_raw))
    if not common_names or common_names[0].value != expected:
        raise IdentityError("the certificate's common name is not the hub id of its identity key")
    return public_raw
