"""Terms authoring rules, and stored evidence staying readable when rules tighten."""

from __future__ import annotations

import pytest

from federation import agreements as ag
from federation import terms as terms_mod
from federation.ledger import from_row, to_row
from node import identity
from node.api.v1 import agreement_pb2
from node.clock import SYSTEM_CLOCK
from tests.test_federation_region import TERMS


def parties():
    a, b = identity.generate(), identity.generate()
    make = lambda i, n: agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=i.hub_id_text, public_key=i.public_key_raw, name=n)  # noqa: E731
    return a, make(a, "Stavanger"), make(b, "Bergen")


@pytest.mark.parametrize("section, misspelt",
                         [("data", "consent_requried = true"), ("purpose", "kode = 'x'"), ("validity", "untill = 2030-01-01")])
def test_a_misspelt_key_is_refused_not_ignored(section, misspelt):
    _, provider, consumer = parties()
    text = TERMS.replace(f"[{section}]\n", f"[{section}]\n{misspelt}\n")
    with pytest.raises(terms_mod.TermsError, match="unknown keys"):
        terms_mod.from_toml(terms_mod.parse_toml(text), provider, consumer, SYSTEM_CLOCK.now_ms())


def test_stored_evidence_stays_readable_under_stricter_rules():
    key, provider, consumer = parties()
    terms = terms_mod.from_toml(terms_mod.parse_toml(TERMS), provider, consumer, SYSTEM_CLOCK.now_ms())
    terms.purpose_code = "a purpose code no longer in the list"  # as if the rules changed after signing
    evidence = ag.propose(terms, provider.id, key.identity_key)
    row = to_row(evidence, 1, 1)
    with pytest.raises(ag.AgreementError):
        ag.from_document(evidence.to_document())  # new evidence is checked against today's rules
    assert from_row(row).agreement_id == evidence.agreement_id  # stored evidence still loads
    row.document = row.document.replace(b"Stavanger", b"Stavangxr")
    with pytest.raises(ag.AgreementError):
        from_row(row)  # but its signatures are still verified


@pytest.mark.parametrize("municipality, valid", [("1103", True), ("4601", True), ("9999", False), ("1103 ", False),
                                                 ("1201", False), ("stavanger", False)])
def test_a_hub_partys_municipality_is_a_current_kommunenummer(municipality, valid):
    """Askers check every partial against the provider party's municipality: terms naming one
    that is no current kommunenummer (unknown, padded, a pre-2024 number, a name) are refused."""
    _, provider, consumer = parties()
    provider.municipality = municipality
    propose = lambda: terms_mod.from_toml(terms_mod.parse_toml(TERMS), provider, consumer, SYSTEM_CLOCK.now_ms())  # noqa: E731
    if valid:
        assert propose().provider.municipality == municipality
    else:
        with pytest.raises(terms_mod.TermsError, match="not a hub's current kommunenummer"):
            propose()
