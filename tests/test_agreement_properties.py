"""Properties of agreement evidence (federation/agreements.py): merging is a grow-only set union
(commutative, associative, idempotent), the state is a function of the merged evidence alone,
evidence of other terms under the same id conflicts, and documents round-trip byte-exactly.

Parties hold real Ed25519 keys (a hub identity and a partner key) and the terms come from TOML
through federation.terms, so every piece of evidence here would also be accepted by a hub.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from federation import agreements as ag
from federation import terms as terms_mod
from federation.partners import PartnerKey
from node import identity
from node.api.v1 import agreement_pb2
from node.signing import Domain, sign

State = agreement_pb2.AgreementState
CREATED_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TERMS_TOML = """
agreement_id = "urn:uuid:0f6b2a52-6c1e-4d8e-9a0b-3f1c2d4e5f60"
[purpose]
code = "environmental_monitoring"
description = "Regional overview of fine particulate matter"
[data]
datasets = ["air_quality"]
metrics = ["pm25", "no2"]
aggregates = ["mean", "count"]
group_by = ["municipality", "time_bucket"]
smallest_bucket = "day"
longest_window_days = 366
min_group_size = 3
queries_per_day = 50
[validity]
from = 2026-03-01T00:00:00Z
until = 2027-03-01T00:00:00Z
"""


@dataclass(frozen=True)
class Signer:
    party: agreement_pb2.Party
    key: Ed25519PrivateKey

    @property
    def id(self) -> str:
        return self.party.id


def _hub_signer() -> Signer:
    hub = identity.generate()
    party = agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=hub.hub_id_text, public_key=hub.public_key_raw, name="Stavanger")
    return Signer(party, hub.identity_key)


def _partner_signer() -> Signer:
    partner = PartnerKey(Ed25519PrivateKey.generate(), "Universitetet i Stavanger")
    party = agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_PARTNER, id=partner.partner_id,
                                public_key=partner.public_key, name=partner.name)
    return Signer(party, partner.key)


PROVIDER = _hub_signer()
CONSUMER = _partner_signer()
SIGNERS = {"provider": PROVIDER, "consumer": CONSUMER}


def build_terms(toml_text: str = TERMS_TOML) -> agreement_pb2.AgreementTerms:
    return terms_mod.from_toml(terms_mod.parse_toml(toml_text), PROVIDER.party, CONSUMER.party, now_ms=CREATED_MS)


TERMS = build_terms()
TERMS_BYTES = TERMS.SerializeToString()
VALID_FROM, VALID_UNTIL = TERMS.valid_from_ms, TERMS.valid_until_ms


def bare(terms_bytes: bytes = TERMS_BYTES) -> ag.Evidence:
    """Evidence with the terms and nothing else."""
    return ag.Evidence(terms_bytes, agreement_pb2.AgreementTerms.FromString(terms_bytes))


# -- pieces of evidence: one signature or one revocation each ------------------------------------

@dataclass(frozen=True)
class Sig:
    role: str


@dataclass(frozen=True)
class Rev:
    role: str
    at_ms: int
    reason: str


@functools.cache
def piece(spec: Sig | Rev) -> ag.Evidence:
    signer = SIGNERS[spec.role]
    if isinstance(spec, Sig):
        return ag.Evidence(TERMS_BYTES, TERMS, {signer.id: sign(signer.key, Domain.AGREEMENT, TERMS_BYTES)})
    return ag.revoke(bare(), signer.id, signer.key, spec.reason, spec.at_ms)


roles = st.sampled_from(sorted(SIGNERS))
# Few distinct times and short reasons, so that one party's revocations often tie on time.
revocations = st.builds(Rev, roles, st.integers(0, 3) | st.integers(0, 2**41), st.text(max_size=8))
specs = st.one_of(st.builds(Sig, roles), revocations)
spec_lists = st.lists(specs, max_size=7)
instants = st.sampled_from([VALID_FROM - 1, VALID_FROM, VALID_UNTIL - 1, VALID_UNTIL]) | st.integers(0, 2 * VALID_UNTIL)


def fold(items: list[Sig | Rev]) -> ag.Evidence:
    return functools.reduce(ag.merge, (piece(s) for s in items), bare())


def doc_bytes(evidence: ag.Evidence) -> bytes:
    return evidence.to_document().SerializeToString()


def assert_same(a: ag.Evidence, b: ag.Evidence) -> None:
    assert a == b
    assert doc_bytes(a) == doc_bytes(b)


def expected_state(items: list[Sig | Rev], now_ms: int) -> int:
    """The documented state rules, from the pieces themselves."""
    if any(isinstance(s, Rev) for s in items):
        return State.AGREEMENT_STATE_REVOKED
    if {s.role for s in items} != set(SIGNERS):
        return State.AGREEMENT_STATE_PROPOSED
    if now_ms < VALID_FROM:
        return State.AGREEMENT_STATE_PENDING
    if now_ms >= VALID_UNTIL:
        return State.AGREEMENT_STATE_EXPIRED
    return State.AGREEMENT_STATE_ACTIVE


SETTINGS = settings(max_examples=50, deadline=None)


# -- merge is a set union --------------------------------------------------------------------------

@SETTINGS
@given(spec_lists, spec_lists)
def test_merge_is_commutative(xs, ys):
    assert_same(ag.merge(fold(xs), fold(ys)), ag.merge(fold(ys), fold(xs)))


@SETTINGS
@given(spec_lists, spec_lists, spec_lists)
def test_merge_is_associative(xs, ys, zs):
    a, b, c = fold(xs), fold(ys), fold(zs)
    assert_same(ag.merge(ag.merge(a, b), c), ag.merge(a, ag.merge(b, c)))


@SETTINGS
@given(spec_lists)
def test_merge_is_idempotent(xs):
    a = fold(xs)
    assert_same(ag.merge(a, a), a)
    for s in xs:  # absorbing a piece already held changes nothing
        assert_same(ag.merge(a, piece(s)), a)


@SETTINGS
@given(spec_lists)
def test_merge_keeps_every_signature_and_each_partys_earliest_revocation(xs):
    merged = fold(xs)
    assert set(merged.signatures) == {SIGNERS[s.role].id for s in xs if isinstance(s, Sig)}
    revs = [s for s in xs if isinstance(s, Rev)]
    assert set(merged.revocations) == {SIGNERS[r.role].id for r in revs}
    for role, signer in SIGNERS.items():
        mine = [piece(r).revocations[signer.id] for r in revs if r.role == role]
        if mine:
            earliest = min(mine, key=lambda r: (r.revocation.revoked_at_ms, r.payload))
            assert merged.revocations[signer.id] == earliest


# -- state depends only on the merged evidence -----------------------------------------------------

@SETTINGS
@given(st.data(), spec_lists, instants)
def test_state_is_the_same_for_every_delivery_order(data, xs, now_ms):
    # Any order, with any piece delivered again, and merged in any grouping.
    order = data.draw(st.permutations(xs), label="order")
    repeats = data.draw(st.lists(st.sampled_from(xs), max_size=3), label="repeats") if xs else []
    split = data.draw(st.integers(0, len(order)), label="split")
    reference = fold(xs)
    delivered = ag.merge(fold(order[:split] + repeats), fold(order[split:]))
    assert_same(delivered, reference)
    assert ag.state(delivered, now_ms) == ag.state(reference, now_ms) == expected_state(xs, now_ms)
    # ... and equals the state of what a receiver parses from the document.
    assert ag.state(ag.from_document(reference.to_document()), now_ms) == expected_state(xs, now_ms)


BOTH_SIGNED = [Sig("provider"), Sig("consumer")]


@pytest.mark.parametrize(("items", "now_ms", "state"), [
    (BOTH_SIGNED, VALID_FROM - 1, State.AGREEMENT_STATE_PENDING),
    (BOTH_SIGNED, VALID_FROM, State.AGREEMENT_STATE_ACTIVE),
    (BOTH_SIGNED, VALID_UNTIL - 1, State.AGREEMENT_STATE_ACTIVE),
    (BOTH_SIGNED, VALID_UNTIL, State.AGREEMENT_STATE_EXPIRED),
    ([Sig("consumer")], VALID_FROM, State.AGREEMENT_STATE_PROPOSED),
    ([], VALID_FROM, State.AGREEMENT_STATE_PROPOSED),
    ([*BOTH_SIGNED, Rev("consumer", VALID_UNTIL + 5, "later")], VALID_FROM, State.AGREEMENT_STATE_REVOKED),
    ([Rev("provider", 0, "before signing")], VALID_UNTIL, State.AGREEMENT_STATE_REVOKED),
])
def test_state_at_the_edges_of_the_validity_window(items, now_ms, state):
    assert ag.state(fold(items), now_ms) == state == expected_state(items, now_ms)


@SETTINGS
@given(spec_lists, instants)
def test_superseded_only_replaces_a_fully_signed_unrevoked_agreement(xs, now_ms):
    state = ag.state(fold(xs), now_ms, superseded=True)
    plain = expected_state(xs, now_ms)
    if plain in (State.AGREEMENT_STATE_REVOKED, State.AGREEMENT_STATE_PROPOSED):
        assert state == plain
    else:
        assert state == State.AGREEMENT_STATE_SUPERSEDED


# -- other terms under the same id conflict --------------------------------------------------------

def _other_terms(field: str, value) -> bytes:
    other = agreement_pb2.AgreementTerms()
    other.CopyFrom(TERMS)
    if isinstance(value, list):
        getattr(other, field)[:] = value
    else:
        setattr(other, field, value)
    return other.SerializeToString()


other_terms = st.one_of(
    st.text(min_size=1, max_size=20).map(lambda s: _other_terms("purpose_description", s)),
    st.integers(1, 1000).map(lambda n: _other_terms("min_group_size", TERMS.min_group_size + n)),
    st.integers(1, 10**9).map(lambda n: _other_terms("valid_until_ms", TERMS.valid_until_ms + n)),
    st.just(_other_terms("metrics", ["pm25"])),
    st.just(_other_terms("purpose_code", "research")),
    # Same fields, other bytes: the evidence is about bytes, not about what they decode to.
    st.just(TERMS_BYTES + agreement_pb2.AgreementTerms(created_at_ms=CREATED_MS).SerializeToString()),
).filter(lambda b: b != TERMS_BYTES)


@SETTINGS
@given(spec_lists, other_terms, roles)
def test_merging_evidence_of_other_terms_is_a_conflict(xs, other_bytes, role):
    signer = SIGNERS[role]
    theirs = ag.Evidence(other_bytes, agreement_pb2.AgreementTerms.FromString(other_bytes),
                         {signer.id: sign(signer.key, Domain.AGREEMENT, other_bytes)})
    assert theirs.agreement_id == TERMS.agreement_id
    mine = fold(xs)
    for a, b in ((mine, theirs), (theirs, mine)):
        with pytest.raises(ag.AgreementError) as err:
            ag.merge(a, b)
        assert err.value.kind == "conflict"
        assert TERMS.agreement_id in str(err.value)


# -- documents ------------------------------------------------------------------------------------

@SETTINGS
@given(spec_lists)
def test_from_document_round_trips(xs):
    evidence = fold(xs)
    document = evidence.to_document()
    parsed = ag.from_document(document)
    assert_same(parsed, evidence)
    # Through the wire form as well.
    assert_same(ag.from_document(agreement_pb2.AgreementDocument.FromString(document.SerializeToString())), evidence)


@SETTINGS
@given(st.data(), spec_lists)
def test_to_document_is_deterministic(data, xs):
    # The same evidence assembled in another order (other dict insertion orders) gives the same bytes.
    order = data.draw(st.permutations(xs))
    a, b = fold(xs), fold(order)
    assert doc_bytes(a) == doc_bytes(b) == doc_bytes(a)
    document = a.to_document()
    assert [s.signer_id for s in document.signed_terms.signatures] == sorted(a.signatures)
    revokers = [agreement_pb2.Revocation.FromString(r.revocation).revoked_by for r in document.revocations]
    assert revokers == sorted(a.revocations)


def test_the_terms_are_valid_and_signed_as_serialized_once():
    """Guards the fixtures above: real terms, real keys, and the proposer signs the exact bytes."""
    terms_mod.validate(TERMS, CREATED_MS, new=True)
    proposed = ag.propose(TERMS, PROVIDER.id, PROVIDER.key)
    assert proposed.terms_bytes == TERMS_BYTES
    signed = ag.countersign(proposed, CONSUMER.id, CONSUMER.key)
    assert ag.state(signed, VALID_FROM) == State.AGREEMENT_STATE_ACTIVE
    assert_same(signed, fold([Sig("consumer"), Sig("provider")]))
