"""Agreements as evidence: the signed terms, the parties' signatures, signed revocations.

State is a pure function of the evidence and the clock, and merging evidence is a set
union, so two parties that exchange what they hold end up with the same evidence and hence
the same state, whatever order messages arrived in and however often they were repeated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError

from federation import terms as terms_mod
from node.api.v1 import agreement_pb2
from node.keychain import verify_by_history
from node.signing import Domain, sign, verify

State = agreement_pb2.AgreementState
STATE_NAMES = {v: k.removeprefix("AGREEMENT_STATE_").lower() for k, v in agreement_pb2.AgreementState.items()}


class AgreementError(ValueError):
    """Evidence that does not hold together. `kind` is "invalid" (malformed or tampered),
    "not_party" (a signer or sender that is not a party), or "conflict"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SignedRevocation:
    payload: bytes
    signature: bytes
    revocation: agreement_pb2.Revocation
    key_history: tuple[bytes, ...] = ()  # the revoker's, when it signed with a rotated key


@dataclass
class Evidence:
    terms_bytes: bytes
    terms: agreement_pb2.AgreementTerms
    signatures: dict[str, bytes] = field(default_factory=dict)  # signer id -> signature
    revocations: dict[str, SignedRevocation] = field(default_factory=dict)  # revoker id -> revocation
    # signer id -> the key history its signature needs (a hub that signed with a rotated key)
    histories: dict[str, tuple[bytes, ...]] = field(default_factory=dict)

    @property
    def agreement_id(self) -> str:
        return self.terms.agreement_id

    def parties(self) -> dict[str, agreement_pb2.Party]:
        return {self.terms.provider.id: self.terms.provider, self.terms.consumer.id: self.terms.consumer}

    def role_of(self, party_id: str) -> str | None:
        if party_id == self.terms.provider.id:
            return "provider"
        if party_id == self.terms.consumer.id:
            return "consumer"
        return None

    def counterparty(self, party_id: str) -> agreement_pb2.Party:
        return self.terms.consumer if party_id == self.terms.provider.id else self.terms.provider

    def fully_signed(self) -> bool:
        return set(self.signatures) == set(self.parties())

    def to_document(self) -> agreement_pb2.AgreementDocument:
        """Deterministic: the same evidence always gives the same bytes."""
        return agreement_pb2.AgreementDocument(
            signed_terms=agreement_pb2.SignedTerms(
                terms=self.terms_bytes,
                signatures=[agreement_pb2.PartySignature(signer_id=k, signature=v, key_history=self.histories.get(k, ()))
                            for k, v in sorted(self.signatures.items())],
            ),
            revocations=[
                agreement_pb2.SignedRevocation(revocation=r.payload, signature=r.signature, key_history=r.key_history)
                for _, r in sorted(self.revocations.items())
            ],
        )


def _parse_terms(terms_bytes: bytes) -> agreement_pb2.AgreementTerms:
    try:
        return agreement_pb2.AgreementTerms.FromString(terms_bytes)
    except DecodeError as exc:
        raise AgreementError("invalid", f"the terms do not parse: {exc}") from None


def from_document(doc: agreement_pb2.AgreementDocument, check_terms: bool = True) -> Evidence:
    """Parse and verify every signature; raise AgreementError for anything that does not hold.
    `check_terms=False` skips the rules for terms (for evidence this hub stored earlier, which
    later, stricter rules must not make unreadable); signatures and parties are always checked."""
    terms_bytes = doc.signed_terms.terms
    terms = _parse_terms(terms_bytes)
    try:
        if check_terms:
            terms_mod.validate(terms, now_ms=0, new=False)
        elif not (terms_mod.party_id_matches_key(terms.provider) and terms_mod.party_id_matches_key(terms.consumer)):
            raise terms_mod.TermsError("a party's id is not derived from its key")
    except terms_mod.TermsError as exc:
        raise AgreementError("invalid", f"agreement {terms.agreement_id}: {exc}") from None
    evidence = Evidence(terms_bytes, terms)
    parties = evidence.parties()
    for sig in doc.signed_terms.signatures:
        party = parties.get(sig.signer_id)
        if party is None:
            raise AgreementError("not_party", f"agreement {terms.agreement_id} is signed by {sig.signer_id}, who is not a party")
        if not party_signed(party, Domain.AGREEMENT, terms_bytes, sig.signature, sig.key_history):
            raise AgreementError(
                "invalid", f"agreement {terms.agreement_id}: the signature of {sig.signer_id} does not verify (tampered terms or wrong key)"
            )
        evidence.signatures[sig.signer_id] = sig.signature
        if sig.key_history:
            evidence.histories[sig.signer_id] = tuple(sig.key_history)
    for signed in doc.revocations:
        evidence = merge(evidence, Evidence(terms_bytes, terms, revocations={**_check_revocation(evidence, signed)}))
    return evidence


def party_signed(party: agreement_pb2.Party, domain: Domain, message: bytes, signature: bytes,
                 key_history: list[bytes] | tuple[bytes, ...]) -> bool:
    """Signed by the key the terms name, or, for a hub that rotated since, by any key of a valid
    key history starting at it (node/keychain.py says why any key, not "the key of the day")."""
    if not key_history:
        return verify(party.public_key, domain, message, signature)
    if party.kind != agreement_pb2.PARTY_KIND_HUB:
        return False  # partners do not rotate keys this way
    return verify_by_history(party.id, party.public_key, key_history, domain, message, signature)


def _check_revocation(evidence: Evidence, signed: agreement_pb2.SignedRevocation) -> dict[str, SignedRevocation]:
    try:
        revocation = agreement_pb2.Revocation.FromString(signed.revocation)
    except DecodeError:
        raise AgreementError("invalid", "a revocation does not parse") from None
    if revocation.agreement_id != evidence.agreement_id:
        raise AgreementError("invalid", f"a revocation of {revocation.agreement_id} came with agreement {evidence.agreement_id}")
    party = evidence.parties().get(revocation.revoked_by)
    if party is None:
        raise AgreementError("not_party", f"agreement {evidence.agreement_id} is revoked by {revocation.revoked_by}, who is not a party")
    if not party_signed(party, Domain.REVOCATION, signed.revocation, signed.signature, signed.key_history):
        raise AgreementError("invalid", f"the revocation of {evidence.agreement_id} by {revocation.revoked_by} does not verify")
    return {revocation.revoked_by: SignedRevocation(signed.revocation, signed.signature, revocation, tuple(signed.key_history))}


def merge(a: Evidence, b: Evidence) -> Evidence:
    """Union of the evidence of one agreement. Commutative, associative and idempotent."""
    if a.terms_bytes != b.terms_bytes:
        raise AgreementError("conflict", f"agreement id {a.agreement_id} is already used with other terms")
    revocations = dict(a.revocations)
    for revoker, r in b.revocations.items():
        mine = revocations.get(revoker)
        # One revocation per party counts: the earliest (ties broken by bytes, so all agree).
        if mine is None or (r.revocation.revoked_at_ms, r.payload) < (mine.revocation.revoked_at_ms, mine.payload):
            revocations[revoker] = r
    histories = dict(a.histories)
    for signer, history in b.histories.items():
        # Two copies of one signature carry the same history unless re-sent; keep one, the same everywhere.
        histories[signer] = min(history, histories.get(signer, history))
    return Evidence(a.terms_bytes, a.terms, {**a.signatures, **b.signatures}, revocations, histories)


def state(evidence: Evidence, now_ms: int, superseded: bool = False) -> int:
    """`superseded`: a newer version, signed by both parties, replaces this one."""
    if evidence.revocations:
        return State.AGREEMENT_STATE_REVOKED
    if not evidence.fully_signed():
        return State.AGREEMENT_STATE_PROPOSED
    if superseded:
        return State.AGREEMENT_STATE_SUPERSEDED
    if now_ms < evidence.terms.valid_from_ms:
        return State.AGREEMENT_STATE_PENDING
    if now_ms >= evidence.terms.valid_until_ms:
        return State.AGREEMENT_STATE_EXPIRED
    return State.AGREEMENT_STATE_ACTIVE


def _histories(signer_id: str, key_history: tuple[bytes, ...]) -> dict[str, tuple[bytes, ...]]:
    return {signer_id: key_history} if key_history else {}


def propose(terms: agreement_pb2.AgreementTerms, signer_id: str, key: Ed25519PrivateKey,
            key_history: tuple[bytes, ...] = ()) -> Evidence:
    """Serialize the terms once and sign those bytes. `key_history`: the signer's, if `key`
    is not the key its Party names (a hub that rotated)."""
    terms_bytes = terms.SerializeToString()
    signatures = {signer_id: sign(key, Domain.AGREEMENT, terms_bytes)}
    return Evidence(terms_bytes, agreement_pb2.AgreementTerms.FromString(terms_bytes), signatures,
                    histories=_histories(signer_id, key_history))


def countersign(evidence: Evidence, signer_id: str, key: Ed25519PrivateKey, key_history: tuple[bytes, ...] = ()) -> Evidence:
    return merge(evidence, Evidence(evidence.terms_bytes, evidence.terms, {signer_id: sign(key, Domain.AGREEMENT, evidence.terms_bytes)},
                                    histories=_histories(signer_id, key_history)))


def revoke(evidence: Evidence, revoker_id: str, key: Ed25519PrivateKey, reason: str, now_ms: int,
           key_history: tuple[bytes, ...] = ()) -> Evidence:
    payload = agreement_pb2.Revocation(
        agreement_id=evidence.agreement_id, revoked_by=revoker_id, revoked_at_ms=now_ms, reason=reason
    ).SerializeToString()
    signed = agreement_pb2.SignedRevocation(revocation=payload, signature=sign(key, Domain.REVOCATION, payload),
                                            key_history=key_history)
    return merge(evidence, Evidence(evidence.terms_bytes, evidence.terms, revocations=_check_revocation(evidence, signed)))
