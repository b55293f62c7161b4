"""The asker's side: open every sealed partial with the query's answer key, verify each
provider's signature and the entry hub's, check every cell belongs to the query, and merge.
The Python CLI, a hub asking for itself, and `query verify` (on opened partials) share it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.message import DecodeError

from federation import agreements, envelope, partials, sealing
from federation.query_spec import DEFAULT_DEADLINE_MS
from node import register
from node.api.v1 import agreement_pb2, envelope_pb2, query_pb2, query_service_pb2, query_service_pb2_grpc
from node.clock import SYSTEM_CLOCK, Clock
from node.keychain import KeyChain, key_of_hub
from node.signing import Domain, hub_id_from_public_key, partner_id_from_public_key, verify

RUN_METHOD = "/smartregion.v1.Query/Run"


class AnswerRefused(ValueError):
    """An answer that does not verify: nothing of it may be shown."""


def _provider_municipality(provider: agreement_pb2.Party) -> str | None:
    """The kommunenummer the asker co-signed for this provider: the party's own field, or (for
    agreements signed before it existed) the number of the municipality its name is."""
    if provider.municipality:
        return provider.municipality
    try:
        return register.lookup(provider.name).number
    except register.UnknownMunicipality:
        return None


def _check_agreement(p: query_pb2.Provenance, result: query_pb2.PartialResult, asker_id: str) -> None:
    """The partial speaks for the municipality the asker itself co-signed for this provider.
    The provenance's municipality is the entry hub's word; a dishonest entry hub could sign its
    own partial under another municipality's number. The agreement the partial names, signed
    by the provider AND the asker, binds the provider's hub id to its kommunenummer."""
    if not result.agreement_id:
        if result.provider_hub_id != asker_id:  # a hub's own data, asked by that hub itself
            raise AnswerRefused(f"hub {p.hub_id}: answered without an agreement, and the asker is not that hub")
        return
    try:
        document = agreement_pb2.AgreementDocument(signed_terms=agreement_pb2.SignedTerms.FromString(p.agreement))
        evidence = agreements.from_document(document, check_terms=False)
    except (DecodeError, agreements.AgreementError) as exc:
        raise AnswerRefused(f"hub {p.hub_id}: the agreement it answered under does not verify: {exc}") from None
    terms = evidence.terms
    if not p.agreement or terms.agreement_id != result.agreement_id or not evidence.fully_signed():
        raise AnswerRefused(f"hub {p.hub_id}: the answer does not carry agreement {result.agreement_id} signed by both parties")
    if terms.provider.id != result.provider_hub_id or terms.consumer.id != asker_id:
        raise AnswerRefused(f"hub {p.hub_id}: agreement {terms.agreement_id} is not between this provider and the asker")
    if _provider_municipality(terms.provider) != result.municipality:
        raise AnswerRefused(f"hub {p.hub_id}: the partial speaks for municipality {result.municipality}, but agreement "
                            f"{terms.agreement_id} names its provider as {terms.provider.name} "
                            f"({terms.provider.municipality or 'no number'})")


def _checked(p: query_pb2.Provenance, spec: query_pb2.QuerySpec, digest: bytes, asker_id: str) -> query_pb2.PartialResult:
    try:
        result = partials.verify_partial(p.partial, digest, expected_hub_id=p.hub_id)
        partials.check_cells(result, spec, p.municipality)
    except (partials.PartialError, DecodeError) as exc:
        raise AnswerRefused(f"hub {p.hub_id}: {exc}") from None
    if result.agreement_id != p.agreement_id:
        raise AnswerRefused(f"hub {p.hub_id}: signed its partial under agreement {result.agreement_id!r}, "
                            f"the answer says {p.agreement_id!r}")
    _check_agreement(p, result, asker_id)
    return result


def _check_asker_signature(answer: query_service_pb2.QueryAnswer) -> None:
    """The query is exactly what its asker signed: the key carried derives the caller id."""
    request = envelope.parse(answer.query)
    key = answer.asker_public_key
    derived = set()
    if len(key) == 32 and not answer.asker_key_history:
        derived = {hub_id_from_public_key(key), partner_id_from_public_key(key)}
    elif len(key) == 32 and not key_of_hub(request.caller_id, key, answer.asker_key_history):
        derived = {request.caller_id}  # a hub that rotated: its history links the key to its id
    if request.caller_id not in derived:
        raise AnswerRefused(f"the answer does not carry the key of its asker {request.caller_id}")
    if not verify(key, Domain.REQUEST, answer.query.payload, answer.query.signature):
        raise AnswerRefused(f"the asker {request.caller_id}'s signature over the query does not verify")


def _check_complete(answer: query_service_pb2.QueryAnswer, spec: query_pb2.QuerySpec) -> None:
    """The answer accounts for every hub the asker named, and calls itself complete only when
    every hub listed answered: the entry hub can neither drop a named hub nor hide one that did
    not answer behind `partial = false` (docs/querying.md 7.4)."""
    listed = [p.hub_id for p in answer.provenance]
    if spec.hub_ids and not spec.municipalities and set(listed) != set(spec.hub_ids):
        absent = sorted(set(spec.hub_ids) - set(listed))
        raise AnswerRefused("the answer does not list exactly the hubs the query asked"
                            + (f"; not listed: {', '.join(absent)}" if absent else ""))
    if extra := sorted(set(listed) - set(spec.hub_ids)) if spec.hub_ids else []:
        raise AnswerRefused(f"the answer lists hubs the query did not ask: {', '.join(extra)}")
    if spec.municipalities:
        named = [p.municipality for p in answer.provenance]
        if outside := sorted(set(named) - set(spec.municipalities)):
            raise AnswerRefused(f"the answer lists hubs of municipalities the query did not ask: {', '.join(outside)}")
        if absent_municipalities := sorted(set(spec.municipalities) - set(named)):
            raise AnswerRefused(f"the answer lists no hub of municipality {', '.join(absent_municipalities)}, "
                                "which the query asked")
    not_answered = [p.hub_id for p in answer.provenance if p.status != "answered"]
    if answer.partial != bool(not_answered) or list(answer.missing_hubs) != not_answered:
        raise AnswerRefused(f"the answer's partial flag ({answer.partial}) and missing hubs "
                            f"({', '.join(answer.missing_hubs) or 'none'}) are not the hubs that did not answer "
                            f"({', '.join(not_answered) or 'none'})")


def merge_opened(answer: query_service_pb2.QueryAnswer) -> list[query_pb2.Row]:
    """Verify the entry hub's signature and every opened partial, and merge them again."""
    try:
        request = envelope.parse(answer.query)
    except envelope.EnvelopeError as exc:
        raise AnswerRefused(str(exc)) from None
    spec = request.query
    _check_asker_signature(answer)
    digest = partials.query_digest(answer.query.payload)
    hub_ids = [p.hub_id for p in answer.provenance]
    if len(hub_ids) != len(set(hub_ids)):
        raise AnswerRefused("a hub is listed twice: its partial would be counted twice")
    try:
        partials.verify_answer_summary(answer, digest)
    except (partials.PartialError, DecodeError) as exc:
        raise AnswerRefused(f"hub {answer.answered_by}: {exc}") from None
    _check_complete(answer, spec)
    results = []
    for p in answer.provenance:
        if p.status == "answered":
            results.append(_checked(p, spec, digest, request.caller_id))
        elif p.HasField("partial") or p.sealed_partial:
            raise AnswerRefused(f"hub {p.hub_id} is listed as {p.status} but carries a partial")
    try:
        return partials.merge(results, spec)
    except partials.PartialError as exc:
        raise AnswerRefused(str(exc)) from None


def open_answer(answer: query_service_pb2.QueryAnswer, key: X25519PrivateKey,
                asker_public_key: bytes, asker_key_history: tuple[bytes, ...] = ()) -> query_service_pb2.QueryAnswer:
    """The answer with every sealed partial opened (Provenance.partial) and the rows merged."""
    opened = query_service_pb2.QueryAnswer()
    opened.CopyFrom(answer)
    opened.asker_public_key = asker_public_key
    del opened.asker_key_history[:]
    opened.asker_key_history.extend(asker_key_history)
    digest = partials.query_digest(answer.query.payload)
    for p in opened.provenance:
        p.ClearField("partial")
        if p.status != "answered":
            continue
        try:
            plain = sealing.open_sealed(p.sealed_partial, key, digest, p.hub_id)
            p.partial.CopyFrom(query_pb2.SignedPartial.FromString(plain))
        except (sealing.SealError, DecodeError) as exc:
            raise AnswerRefused(f"hub {p.hub_id}: {exc}") from None
    del opened.rows[:]
    opened.rows.extend(merge_opened(opened))
    return opened


FollowedChain = Callable[[str], Awaitable[KeyChain | None]]  # a hub's key history as this asker follows it; None: not pinned
Follow = Callable[[str], Awaitable[bool]]  # refresh that hub's descriptor now (bounded); whether it ran


async def check_current_keys(answer: query_service_pb2.QueryAnswer, followed: FollowedChain, follow: Follow,
                             now_ms: int) -> None:
    """Online, beyond the offline rule of `merge_opened` (any key of the signer's valid history):
    every hub this asker pins must have signed with the key it signs with NOW, as the asker
    follows its history (KeyChain.signs_now: or the key retired by a rotation minutes ago), so a
    key it rotated away from, perhaps because it leaked, is refused. A key the asker does not
    know makes it refresh that hub's descriptor once (`follow`: only a history continuing the
    one pinned is followed) and check again."""
    signers = [(answer.answered_by, answer.answered_by_public_key, "its signature over the answer")]
    signers += [(p.hub_id, p.partial.provider_public_key, "its partial") for p in answer.provenance if p.status == "answered"]
    for hub_id, key, what in signers:
        chain = await followed(hub_id)
        if chain is None or chain.signs_now(key, now_ms):
            continue
        if await follow(hub_id):
            chain = await followed(hub_id)
        if chain is not None and not chain.signs_now(key, now_ms):
            raise AnswerRefused(f"hub {hub_id} signed {what} with a key that is not its current one by the key history "
                                "this asker follows (an earlier key, perhaps leaked: docs/operations.md, \"Compromise\")")


@dataclass(frozen=True)
class SignedQuery:
    """A query signed for one entry hub, with the answer key its partials are sealed to. Sent
    again unchanged after a lost answer, it is answered from what each hub kept and charged
    once (federation/query/provider.py); a new SignedQuery is a new, charged query."""

    signed: envelope_pb2.SignedRequest
    answer_key: X25519PrivateKey
    asker_public_key: bytes
    timeout_s: float


def sign_query(signing_key: Ed25519PrivateKey, caller_id: str, entry_hub_id: str, spec: query_pb2.QuerySpec) -> SignedQuery:
    answer_key = sealing.new_answer_key()
    asked = query_pb2.QuerySpec()
    asked.CopyFrom(spec)
    asked.answer_key = sealing.public_raw(answer_key)
    signed = envelope.make(signing_key, caller_id, entry_hub_id, RUN_METHOD, query=asked)
    public = signing_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return SignedQuery(signed, answer_key, public, (spec.deadline_ms or DEFAULT_DEADLINE_MS) / 1000 + 5)


# The entry hub did not answer (down, killed, restarting): the same signed query may be sent again.
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


async def send(channel: grpc.aio.Channel, query: SignedQuery, attempts: int = 1, pause_s: float = 1.0,
               clock: Clock = SYSTEM_CLOCK) -> query_service_pb2.QueryAnswer:
    """Send the signed query with Query.Run (up to `attempts` times, the same bytes each time,
    while the entry hub cannot be reached), then open, verify and merge the answer."""
    stub = query_service_pb2_grpc.QueryStub(channel)
    for attempt in range(1, attempts + 1):
        try:
            sealed: query_service_pb2.QueryAnswer = await stub.Run(query.signed, timeout=query.timeout_s)
            break
        except grpc.aio.AioRpcError as exc:
            if attempt == attempts or exc.code() not in RETRY_CODES:
                raise
            await clock.sleep(pause_s)
    if sealed.query.payload != query.signed.payload or sealed.query.signature != query.signed.signature:
        raise AnswerRefused("the entry hub answered another query than the one just asked")
    return open_answer(sealed, query.answer_key, query.asker_public_key)


async def ask(channel: grpc.aio.Channel, signing_key: Ed25519PrivateKey, caller_id: str, entry_hub_id: str,
              spec: query_pb2.QuerySpec, attempts: int = 1) -> query_service_pb2.QueryAnswer:
    """Ask the region through `entry_hub_id` on `channel` (a pinned channel), as `caller_id`:
    a fresh answer key for this one query, the signed request (sent again unchanged, up to
    `attempts` times, while the entry hub cannot be reached), then open, verify and merge."""
    return await send(channel, sign_query(signing_key, caller_id, entry_hub_id, spec), attempts)
