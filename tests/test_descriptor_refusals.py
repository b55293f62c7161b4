"""Every refusal of federation/descriptors.verify_descriptor, with real hub identities: a
descriptor is accepted only from the pinned hub, signed by its key, unexpired, naming the
certificate the hub really served, bound to the same key, for a municipality in the register."""

from __future__ import annotations

import pytest

from federation import descriptors
from node import hubdir
from node.api.v1 import federation_pb2
from node.signing import Domain, sign
from tests.conftest import PASSPHRASE, make_hub_dir

NOW = 1_800_000_000_000


@pytest.fixture(scope="module")
def identities(tmp_path_factory):
    base = tmp_path_factory.mktemp("descriptors")
    return [hubdir.HubDir(make_hub_dir(base / name, number)).identity(PASSPHRASE.encode())
            for name, number in (("a", "1103"), ("b", "4601"))]


def resigned(identity, **changes) -> federation_pb2.SignedDescriptor:
    signed = descriptors.issue(identity, "1103", "127.0.0.1:1", "https://127.0.0.1:2", NOW)
    d = federation_pb2.NodeDescriptor.FromString(signed.descriptor)
    for name, value in changes.items():
        setattr(d, name, value)
    payload = d.SerializeToString()
    return federation_pb2.SignedDescriptor(descriptor=payload, signature=sign(identity.identity_key, Domain.DESCRIPTOR, payload))


def test_a_good_descriptor_verifies(identities):
    a, _ = identities
    verified = descriptors.verify_descriptor(descriptors.issue(a, "1103", "127.0.0.1:1", "", NOW), a.hub_id_text, a.tls_cert_pem, NOW)
    assert verified.descriptor.hub_id == a.hub_id_text and verified.descriptor.valid_until_ms == NOW + descriptors.DESCRIPTOR_LIFETIME_MS


def cases(a, b):
    good = descriptors.issue(a, "1103", "127.0.0.1:1", "", NOW)
    flipped = federation_pb2.SignedDescriptor(descriptor=good.descriptor, signature=bytes([good.signature[0] ^ 1]) + good.signature[1:])
    return {
        "does not parse": (federation_pb2.SignedDescriptor(descriptor=b"\xff\xff", signature=b""), a.hub_id_text, a.tls_cert_pem, NOW),
        "is not the key of hub": (good, b.hub_id_text, a.tls_cert_pem, NOW),
        "names hub": (resigned(a, hub_id=b.hub_id_text), a.hub_id_text, a.tls_cert_pem, NOW),
        "signature does not verify": (flipped, a.hub_id_text, a.tls_cert_pem, NOW),
        "has expired": (good, a.hub_id_text, a.tls_cert_pem, NOW + descriptors.DESCRIPTOR_LIFETIME_MS),
        "other than the one its descriptor names": (good, a.hub_id_text, b.tls_cert_pem, NOW),
        "bound to another identity key": (resigned(a, tls_certificate_sha256=descriptors.cert_sha256(b.tls_cert_pem)),
                                          a.hub_id_text, b.tls_cert_pem, NOW),
        "9999": (resigned(a, municipality_number="9999"), a.hub_id_text, a.tls_cert_pem, NOW),
    }


@pytest.mark.parametrize("refusal", [
    "does not parse", "is not the key of hub", "names hub", "signature does not verify", "has expired",
    "other than the one its descriptor names", "bound to another identity key", "9999"])
def test_each_refusal(identities, refusal):
    signed, hub_id, served, now = cases(*identities)[refusal]
    with pytest.raises(descriptors.DescriptorError, match=refusal):
        descriptors.verify_descriptor(signed, hub_id, served, now)
