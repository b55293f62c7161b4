"""A hub's identity: an Ed25519 identity key, and a TLS key whose certificate it vouches for.

The TLS certificate (ECDSA P-256, CN and DNS name = hub id) carries an extension with the
identity public key and the identity key's signature over
`TLS_BINDING_DOMAIN || SubjectPublicKeyInfo(DER)`. Anyone holding only the certificate can
therefore check which identity key it is bound to; peers and partners pin the certificate by
that binding and check the server name equals the hub id.

The certificate (the "leaf") is signed by the hub's TLS issuer: a CA of its own (ECDSA P-256,
`TlsIssuer`, valid ~25 years) made at `smartregion init`, whose key stays in keys.json. The hub
serves leaf + issuer; renewals and identity rotations re-issue the leaf under the same issuer,
so a sensor that trusts the issuer as its root keeps connecting across them. A hub made before
the issuer existed has a self-signed leaf and no issuer until its first renewal or rotation.

The hub id is the hash of the hub's FIRST (genesis) identity key and never changes. After a
rotation (`rotate`, node/keychain.py) the hub signs with a newer key; its key history links that
key to the genesis key, and its certificate is bound to the current key. Without rotations the
bound key hashes to the hub id, which is all an unrotated hub's certificate needs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from node import ids
from node.clock import SYSTEM_CLOCK, Clock
from node.keychain import MAX_ROTATIONS, STATEMENT_LENGTH, ChainError, KeyChain, RotationStatement, sign_rotation

TLS_BINDING_DOMAIN = b"smartregion/v1/tls-binding\x00"
# An OID under the UUID arc (ITU-T X.667), so no registration is needed.
TLS_BINDING_OID = x509.ObjectIdentifier("2.25.203920180945178712633153802452796473511")
CERT_VALIDITY = dt.timedelta(days=3 * 365)
ISSUER_VALIDITY = dt.timedelta(days=25 * 365 + 6)  # 25 years: longer than a hub is expected to run
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates are valid from 5 minutes before "now"


class IdentityError(Exception):
    pass


# The hub's identity as it is at this moment (`lambda: hub.identity`): what every long-lived
# signer holds instead of an identity, so that a live key rotation reaches it. A signer calls it
# once per document and takes key, public key and history from that one object.
IdentitySource = Callable[[], "HubIdentity"]


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _der_octet_string(payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([0x04, len(payload)]) + payload


def _subject_alt_names(hub_id_text: str, hostnames: tuple[str, ...]) -> list[x509.GeneralName]:
    """The names a hub's certificate carries: the hub id, loopback, and the --host names."""
    names: list[x509.GeneralName] = [x509.DNSName(hub_id_text), x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _name_constraints(hub_id_text: str, hostnames: tuple[str, ...]) -> x509.NameConstraints:
    """The issuer may vouch only for the hub's own host names: whoever trusts it (a browser told
    to, for the dashboard) is not exposed to certificates for other sites if keys.json leaks.
    DNS names only: gRPC's BoringSSL refuses any certificate under an IP-address constraint
    ("unsupported name constraint type"), so IP addresses stay unconstrained."""
    permitted = [n for n in _subject_alt_names(hub_id_text, hostnames) if isinstance(n, x509.DNSName)]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def _utc(clock: Clock) -> dt.datetime:
    return dt.datetime.fromtimestamp(clock.now_ms() / 1000, dt.UTC)


def _expires_ms(cert: x509.Certificate) -> int:
    return int(cert.not_valid_after_utc.timestamp() * 1000)


@dataclass(frozen=True)
class TlsIssuer:
    """The hub's own certificate authority: it signs the hub's TLS certificates and nothing else
    (path length 0). Sensors trust it as their only root (node/sensors.py credential_json)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def generate(cls, hub_id_text: str, hostnames: tuple[str, ...] = (), clock: Clock = SYSTEM_CLOCK,
                 validity: dt.timedelta = ISSUER_VALIDITY) -> TlsIssuer:
        """`hostnames`: the hub's extra names (init --host); the issuer's name constraints
        permit those, the hub id and loopback, and nothing else."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, f"TLS issuer of hub {hub_id_text}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smartregion hub"),
        ])
        now = _utc(clock)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            # Not critical (as the CA/Browser Forum allows): a sensor's TLS stack that does not know
            # name constraints (some mbedTLS builds) must still accept the issuer; those that do enforce them.
            .add_extension(_name_constraints(hub_id_text, hostnames), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def expires_ms(self) -> int:
        return _expires_ms(self.cert)

    def check(self, hub_id_text: str, now_ms: int) -> None:
        """Raise IdentityError unless this is hub `hub_id_text`'s own issuer as `generate` makes
        it: a self-signed CA for this key, that signs leaves only (pathLen 0), names this hub
        (subject CN), may vouch only for names its constraints permit (which include the hub
        id), and has not expired at `now_ms`. Each refusal says which; the hub does not start."""
        try:
            constraints = self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise IdentityError("the TLS issuer certificate in keys.json is not a CA certificate (BasicConstraints ca=False)")
        if constraints.path_length != 0:
            raise IdentityError("the TLS issuer certificate in keys.json may sign other CAs (BasicConstraints pathLen is "
                                f"{constraints.path_length}, must be 0: it signs the hub's own certificates only)")
        try:
            usage = self.cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is None or not usage.key_cert_sign:
            raise IdentityError("the TLS issuer certificate in keys.json may not sign certificates (no keyCertSign)")
        self._check_names(hub_id_text)
        if _spki(self.cert.public_key()) != _spki(self.key.public_key()):
            raise IdentityError("the TLS issuer key in keys.json is not the key of the TLS issuer certificate")
        try:
            self.cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise IdentityError("the TLS issuer certificate in keys.json is not self-signed") from None
        if self.expires_ms <= now_ms:
            raise IdentityError(f"the TLS issuer certificate in keys.json expired at {self.cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z: "
                                "sensors refuse every certificate it signs (renewing the issuer is not built: "
                                "docs/operations.md, \"Compromise\", make a hub anew)")

    def _check_names(self, hub_id_text: str) -> None:
        """The issuer is this hub's (its CN names the hub id) and is name-constrained to it."""
        common_names = [a.value for a in self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if common_names != [f"TLS issuer of hub {hub_id_text}"]:
            raise IdentityError(f"the TLS issuer certificate in keys.json is not hub {hub_id_text}'s: its subject names "
                                f"{', '.join(map(str, common_names)) or 'no common name'}")
        try:
            names = self.cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            raise IdentityError("the TLS issuer certificate in keys.json has no name constraints: it could vouch for "
                                "any site to whoever trusts it (docs/threat-model.md)") from None
        permitted = [str(n.value) for n in names.permitted_subtrees or () if isinstance(n, x509.DNSName)]
        if hub_id_text not in permitted:
            raise IdentityError(f"the TLS issuer certificate in keys.json is not constrained to hub {hub_id_text}: its name "
                                f"constraints permit {', '.join(permitted) or 'no DNS name'}")


def check_leaf_issued(leaf: x509.Certificate, issuer: TlsIssuer | None) -> None:
    """Raise IdentityError unless `leaf` is signed by `issuer` (None: a hub from before the
    issuer, whose certificate must be self-signed)."""
    signer = issuer.cert if issuer is not None else leaf
    try:
        leaf.verify_directly_issued_by(signer)
    except ValueError:  # the issuer name differs
        if issuer is None:
            raise IdentityError("the TLS certificate in keys.json is issued by another certificate, but keys.json "
                                "holds no TLS issuer") from None
        raise IdentityError("the TLS certificate in keys.json names another issuer than the hub's TLS issuer") from None
    except (TypeError, InvalidSignature):
        if issuer is None:
            raise IdentityError("the TLS certificate in keys.json is not validly self-signed") from None
        raise IdentityError("the TLS certificate in keys.json is not signed by the hub's TLS issuer") from None


@dataclass(frozen=True)
class HubIdentity:
    identity_key: Ed25519PrivateKey
    tls_key: ec.EllipticCurvePrivateKey
    tls_cert: x509.Certificate
    key_encryption_key: bytes  # wraps sensor keys at rest
    key_history: tuple[bytes, ...] = ()  # rotation statements, oldest first (node/keychain.py)
    tls_issuer: TlsIssuer | None = None  # None only in a hub made before the issuer (module docstring)

    @property
    def public_key_raw(self) -> bytes:
        """The identity key the hub signs with now."""
        return raw_public(self.identity_key.public_key())

    @property
    def genesis_public_key(self) -> bytes:
        """The first identity key: the hub id is its hash, and agreements name it."""
        if not self.key_history:
            return self.public_key_raw
        return RotationStatement.from_bytes(self.key_history[0]).old_key

    @property
    def hub_id(self) -> bytes:
        return ids.hub_id_from_public_key(self.genesis_public_key)

    def chain(self) -> KeyChain:
        return KeyChain.verify(self.hub_id, self.key_history, current_key=self.public_key_raw)

    @property
    def hub_id_text(self) -> str:
        return ids.to_text(self.hub_id)

    @property
    def tls_cert_pem(self) -> bytes:
        return self.tls_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def tls_chain_pem(self) -> bytes:
        """What the hub serves: its certificate, then the issuer's (if it has one)."""
        return self.tls_cert_pem + (self.tls_issuer.cert_pem if self.tls_issuer else b"")

    @property
    def tls_trust_root_pem(self) -> bytes:
        """What a sensor trusts as its only root: the issuer (stable across renewals and
        rotations), or for a hub made before the issuer, its self-signed certificate."""
        return self.tls_issuer.cert_pem if self.tls_issuer else self.tls_cert_pem

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
        values = {
            "identity_key": self.identity_key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            ),
            "tls_key": self.tls_key_pem,
            "tls_cert": self.tls_cert_pem,
            "key_encryption_key": self.key_encryption_key,
            "key_history": b"".join(self.key_history),
        }
        if self.tls_issuer is not None:
            values |= {"tls_issuer_key": self.tls_issuer.key_pem, "tls_issuer_cert": self.tls_issuer.cert_pem}
        return values

    @classmethod
    def from_secrets(cls, values: dict[str, bytes], clock: Clock = SYSTEM_CLOCK) -> HubIdentity:
        """The identity keys.json holds, refused (IdentityError, saying why) unless it is whole
        and consistent, and its TLS issuer is this hub's and valid at the clock's now."""
        try:
            tls_key = serialization.load_pem_private_key(values["tls_key"], password=None)
            if not isinstance(tls_key, ec.EllipticCurvePrivateKey):
                raise ValueError("the TLS key is not an elliptic-curve key")
            history = values.get("key_history", b"")  # absent in keystores from before rotations
            if len(history) % STATEMENT_LENGTH:
                raise ValueError("the key history is truncated")
            identity = cls(
                identity_key=Ed25519PrivateKey.from_private_bytes(values["identity_key"]),
                tls_key=tls_key,
                tls_cert=x509.load_pem_x509_certificate(values["tls_cert"]),
                key_encryption_key=values["key_encryption_key"],
                key_history=tuple(history[i:i + STATEMENT_LENGTH] for i in range(0, len(history), STATEMENT_LENGTH)),
                tls_issuer=_issuer_from_secrets(values),  # absent in keystores from before the issuer
            )
            identity.chain()
        except (KeyError, ValueError) as exc:  # ChainError is a ValueError
            raise IdentityError(f"the keystore does not hold a complete hub identity: {exc}") from exc
        if _spki(identity.tls_cert.public_key()) != _spki(tls_key.public_key()):
            raise IdentityError("the TLS key in keys.json is not the key of the TLS certificate")
        if identity.tls_issuer is not None:
            identity.tls_issuer.check(identity.hub_id_text, clock.now_ms())
        check_leaf_issued(identity.tls_cert, identity.tls_issuer)
        if verify_tls_binding(identity.tls_cert, identity.key_history) != identity.public_key_raw:
            raise IdentityError("the TLS certificate is not bound to this identity key")
        return identity

    def hostnames(self) -> tuple[str, ...]:
        """The extra names and addresses the certificate was issued for (kept on renewal)."""
        standard = {self.hub_id_text, "localhost", "127.0.0.1", "::1"}
        names = self.tls_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = [str(n.value) for n in names if isinstance(n, x509.DNSName | x509.IPAddress)]
        return tuple(n for n in found if n not in standard)

    def _issuer_or_new(self, clock: Clock) -> TlsIssuer:
        """The hub's TLS issuer; a hub from before the issuer gets one now (its first renewal or rotation)."""
        return self.tls_issuer or TlsIssuer.generate(self.hub_id_text, self.hostnames(), clock)

    def with_renewed_certificate(self, clock: Clock = SYSTEM_CLOCK) -> HubIdentity:
        """The same identity with a fresh TLS key and certificate (valid from the clock's now),
        signed by the same issuer."""
        issuer = self._issuer_or_new(clock)
        tls_key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_tls_certificate(self.identity_key, tls_key, self.hostnames(), hub_id_text=self.hub_id_text,
                                     clock=clock, issuer=issuer)
        return HubIdentity(self.identity_key, tls_key, cert, self.key_encryption_key, self.key_history, issuer)

    def rotated(self, clock: Clock = SYSTEM_CLOCK, new_issuer: bool = False) -> HubIdentity:
        """A new identity key, linked to the old by a statement both sign; the hub id stays.
        The TLS certificate is re-issued (new TLS key too) bound to the new key, by the same
        issuer, or with `new_issuer` by a new one (after a stolen data directory: sensors then
        need new credential files, docs/operations.md "Compromise")."""
        if len(self.key_history) >= MAX_ROTATIONS:
            raise IdentityError(f"the key history already holds {MAX_ROTATIONS} rotations, the most a peer accepts: "
                                "make a new hub (docs/operations.md, \"Compromise\")")
        new_key = Ed25519PrivateKey.generate()
        statement = sign_rotation(self.hub_id, len(self.key_history) + 1, self.identity_key, new_key, clock.now_ms())
        history = (*self.key_history, statement.to_bytes())
        issuer = TlsIssuer.generate(self.hub_id_text, self.hostnames(), clock) if new_issuer else self._issuer_or_new(clock)
        tls_key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_tls_certificate(new_key, tls_key, self.hostnames(), hub_id_text=self.hub_id_text, clock=clock,
                                     issuer=issuer)
        rotated = HubIdentity(new_key, tls_key, cert, self.key_encryption_key, history, issuer)
        rotated.chain()  # never hand out a history that does not verify
        return rotated

    @property
    def certificate_expires_ms(self) -> int:
        return _expires_ms(self.tls_cert)

    @property
    def issuer_expires_ms(self) -> int | None:
        return self.tls_issuer.expires_ms if self.tls_issuer else None


def _issuer_from_secrets(values: dict[str, bytes]) -> TlsIssuer | None:
    if "tls_issuer_key" not in values and "tls_issuer_cert" not in values:
        return None
    if "tls_issuer_key" not in values or "tls_issuer_cert" not in values:
        raise ValueError("it holds only half of the TLS issuer (its key and certificate go together)")
    key = serialization.load_pem_private_key(values["tls_issuer_key"], password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the TLS issuer key is not an elliptic-curve key")
    return TlsIssuer(key, x509.load_pem_x509_certificate(values["tls_issuer_cert"]))


def generate(hostnames: tuple[str, ...] = (), clock: Clock = SYSTEM_CLOCK) -> HubIdentity:
    identity_key = Ed25519PrivateKey.generate()
    issuer = TlsIssuer.generate(ids.to_text(ids.hub_id_from_public_key(raw_public(identity_key.public_key()))),
                                hostnames, clock)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_tls_certificate(identity_key, tls_key, hostnames, clock=clock, issuer=issuer)
    return HubIdentity(identity_key, tls_key, cert, secrets.token_bytes(32), tls_issuer=issuer)


def issue_tls_certificate(
    identity_key: Ed25519PrivateKey, tls_key: ec.EllipticCurvePrivateKey, hostnames: tuple[str, ...] = (),
    *, hub_id_text: str | None = None, clock: Clock = SYSTEM_CLOCK, validity: dt.timedelta = CERT_VALIDITY,
    issuer: TlsIssuer | None = None,
) -> x509.Certificate:
    """`hub_id_text`: the hub's id (the genesis key's hash; by default the key's own, for a hub
    that never rotated). Validity starts at the clock's now (less 5 minutes of skew). Signed
    by `issuer`; without one, self-signed (as hubs from before the issuer, and test impostors)."""
    public_raw = raw_public(identity_key.public_key())
    hub_id_text = hub_id_text or ids.to_text(ids.hub_id_from_public_key(public_raw))
    binding = identity_key.sign(TLS_BINDING_DOMAIN + _spki(tls_key.public_key()))
    names = _subject_alt_names(hub_id_text, hostnames)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, hub_id_text),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smartregion hub"),
    ])
    now = _utc(clock)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + validity, issuer.cert.not_valid_after_utc) if issuer else now + validity)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(TLS_BINDING_OID, _der_octet_string(public_raw + binding)), critical=False
        )
    )
    if issuer is None:
        return builder.sign(tls_key, hashes.SHA256())
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                                    critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def read_tls_binding(cert: x509.Certificate) -> tuple[str, bytes]:
    """The hub id the certificate names and the identity key that signed its binding; raise
    IdentityError if there is no valid binding. Whether that key is the hub's is for the caller
    (`verify_tls_binding`) to decide."""
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
    if not common_names:
        raise IdentityError("the certificate names no hub id")
    return str(common_names[0].value), public_raw


def verify_tls_binding(cert: x509.Certificate, key_history: tuple[bytes, ...] | list[bytes] = ()) -> bytes:
    """Return the identity public key the certificate is bound to, after checking that it is the
    current key of the hub the certificate names, by `key_history` (none: the key hashes to
    the hub id). Raise IdentityError otherwise."""
    hub_id_text, public_raw = read_tls_binding(cert)
    if not key_history and hub_id_text != ids.to_text(ids.hub_id_from_public_key(public_raw)):
        raise IdentityError("the certificate's common name is not the hub id of its identity key")
    try:
        KeyChain.verify(hub_id_text, key_history, current_key=public_raw)
    except ChainError as exc:
        raise IdentityError(f"the certificate is not bound to the current key of hub {hub_id_text}: {exc}") from None
    except ValueError:
        raise IdentityError("the certificate's common name is not the hub id of its identity key") from None
    return public_raw
