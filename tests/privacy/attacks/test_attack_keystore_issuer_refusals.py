"""Review: are the refusals of a keystore's TLS issuer complete? (node/identity.py
HubIdentity.from_secrets, TlsIssuer.check; what `Hub.open` runs before a hub serves.)

Tried, each a keys.json content a hub must not serve with (the leaf is otherwise valid: bound
to the identity key, signed by the issuer given):
  * an issuer without its name constraints (then it vouches for any site, to a browser told to
    trust it for the dashboard: docs/threat-model.md's promise);
  * an issuer without pathLen 0 (it could sign another CA);
  * the issuer of ANOTHER hub (its CN names another hub id; sensors of this hub would get it);
  * an issuer that has expired (sensors refuse every handshake; the hub would serve anyway).
The shipped refusals (not a CA, no keyCertSign, another key, not self-signed, a leaf not signed
by it) are tested in tests/test_tls_issuer.py. A case accepted is printed as a GAP; the test
FAILS if any is accepted.
Suggested fix: TlsIssuer.check(hub_id_text, now): require BasicConstraints path_length == 0,
NameConstraints permitting the hub id, the subject CN `TLS issuer of hub <hub id>`, and
not_valid_after in the future (a clear IdentityError each, as the others).
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node import identity
from node.clock import SYSTEM_CLOCK, ManualClock


def _issuer(hub_id: str, *, constraints: bool = True, path_length: int | None = 0,
            not_after: dt.datetime | None = None, constrained_to: str | None = None) -> identity.TlsIssuer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"TLS issuer of hub {hub_id}"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smartregion hub")])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=400))
               .not_valid_after(not_after or now + dt.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True))
    if constraints:
        permitted: list[x509.GeneralName] = [x509.DNSName(constrained_to or hub_id), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.NameConstraints(permitted_subtrees=permitted,
                                                             excluded_subtrees=None), critical=False)
    return identity.TlsIssuer(key, builder.sign(key, hashes.SHA256()))


def _secrets_with(issuer_for: str, make) -> dict[str, bytes]:
    """A genuine hub's secrets, its issuer replaced by `make(hub id)` and its leaf re-issued by it."""
    genuine = identity.generate()
    issuer = make(issuer_for or genuine.hub_id_text)
    clock = ManualClock(int((issuer.cert.not_valid_after_utc - dt.timedelta(days=2)).timestamp() * 1000)) \
        if issuer.cert.not_valid_after_utc < dt.datetime.now(dt.UTC) else SYSTEM_CLOCK
    tls_key = ec.generate_private_key(ec.SECP256R1())
    leaf = identity.issue_tls_certificate(genuine.identity_key, tls_key, clock=clock, issuer=issuer)
    return identity.HubIdentity(genuine.identity_key, tls_key, leaf, genuine.key_encryption_key, (), issuer).to_secrets()


def test_a_keystore_with_an_issuer_the_hub_must_not_serve_with_is_refused():
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    cases = {
        "an issuer without name constraints": ("", lambda hub: _issuer(hub, constraints=False)),
        "an issuer without pathLen 0": ("", lambda hub: _issuer(hub, path_length=None)),
        "the issuer of another hub": ("0123456789abcdef0123456789abcdef", lambda hub: _issuer(hub)),
        "an expired issuer": ("", lambda hub: _issuer(hub, not_after=past)),
    }
    control = _secrets_with("", lambda hub: _issuer(hub))
    identity.HubIdentity.from_secrets(control)  # the well-formed issuer is accepted: the cases differ in one thing each
    gaps, held = [], []
    for what, (other, make) in cases.items():
        try:
            identity.HubIdentity.from_secrets(_secrets_with(other, make))
        except identity.IdentityError as refused:
            held.append(f"{what}: refused ({refused})")
        else:
            gaps.append(what)
    for line in held:
        print("held:", line)
    for what in gaps:
        print("GAP: accepted", what)
    assert not gaps, f"BROKE: keys.json with {', '.join(gaps)} is accepted by HubIdentity.from_secrets (the hub serves with it)"


OTHER_HUB = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(("what", "make", "says"), [
    ("named for this hub, constrained to another", lambda hub: _issuer(hub, constrained_to=OTHER_HUB), "not constrained to hub"),
    ("constrained to this hub, named for another", lambda hub: _issuer(OTHER_HUB, constrained_to=hub), "its subject names"),
])
def test_the_issuer_must_name_this_hub_and_be_constrained_to_it(what, make, says):
    """The two halves of "the issuer of another hub", each on its own: either one refuses."""
    with pytest.raises(identity.IdentityError, match=says):
        identity.HubIdentity.from_secrets(_secrets_with("", make))
