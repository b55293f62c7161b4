"""Every bad federation input is refused by real hubs (grpc.aio servers with pinned TLS, SQLite)
with a precise gRPC status, changes no agreement, and is written to the audit log; stale and
out-of-order evidence cannot undo a revocation; two hubs holding different evidence converge
after one exchange; a partner signs an agreement and the export verifies byte for byte.

Most tests share three peered hubs per module (each test first waits until no delivery is in
flight, and compares a hub's stored agreements and audit log before and after its own call).
Tests that need delivery paused use a fresh pair of hubs. Requests and documents from "peers"
are built here by hand, signed with that peer's real key, so the receiving hub cannot tell them
from its peer's own.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
import tomli_w
from conftest import PASSPHRASE
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from query_helpers import Node, eventually, settle, stop_nodes
from query_helpers import start_nodes as start_region

from federation import agreements as ag
from federation import envelope, export, partners
from federation import terms as terms_mod
from federation.partner_client import PartnerSession
from federation.service import EXCHANGE_METHOD
from node import identity
from node.api.v1 import admin_pb2, agreement_pb2, envelope_pb2, federation_pb2
from node.clock import SYSTEM_CLOCK
from node.signing import Domain, hub_id_from_public_key, sign

pytestmark = pytest.mark.asyncio(loop_scope="module")

State = agreement_pb2.AgreementState
UTC = dt.UTC
INVALID, DENIED, UNAUTH = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED
TOWNS = (("stavanger", "1103"), ("bergen", "4601"), ("porsgrunn", "4001"))


# -- hubs -----------------------------------------------------------------------------------------

async def start_nodes(base, count: int) -> list[Node]:
    return await start_region(base, TOWNS[:count])


async def state_is(node: Node, agreement_id: str, state: int) -> bool:
    try:
        return (await node.view(agreement_id)).state == state
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False


async def pause_delivery(node: Node) -> None:
    """Stop the hub's background delivery loop (its servers keep serving): updates stay in its outbox."""
    node.live.running.stopping.set()
    await node.live.running.background


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def region(tmp_path_factory):
    nodes = await start_nodes(tmp_path_factory.mktemp("region"), 3)
    yield nodes
    await stop_nodes(nodes)


@pytest_asyncio.fixture(loop_scope="module")
async def hubs(region):
    """The shared hubs, with no delivery in flight."""
    await settle(region)
    return region


@pytest_asyncio.fixture(loop_scope="module")
async def pair(tmp_path):
    nodes = await start_nodes(tmp_path, 2)
    yield nodes
    await stop_nodes(nodes)


# -- terms, documents, requests -------------------------------------------------------------------

_windows = itertools.count()


def fresh_window() -> dict:
    """A validity window used by no other test, so proposals never overlap by accident."""
    start = dt.datetime(2100, 1, 1, tzinfo=UTC) + dt.timedelta(days=10 * next(_windows))
    return {"from": start, "until": start + dt.timedelta(days=5)}


def running_window() -> dict:
    return {"from": "now", "until": dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(days=365)}


def terms_doc(**changes: dict) -> dict:
    doc = {
        "purpose": {"code": "environmental_monitoring", "description": "Regional overview of fine particulate matter"},
        "data": {"datasets": ["air_quality"], "metrics": ["pm25"], "aggregates": ["mean", "count"],
                 "group_by": ["municipality", "time_bucket"], "smallest_bucket": "month", "longest_window_days": 366,
                 "min_group_size": 3, "queries_per_day": 100},
        "validity": fresh_window(),
    }
    for section, values in changes.items():
        doc[section] = {**doc[section], **values}
    return doc


def terms_toml(**changes: dict) -> str:
    return tomli_w.dumps(terms_doc(**changes))


def make_terms(provider: agreement_pb2.Party, consumer: agreement_pb2.Party, **changes) -> agreement_pb2.AgreementTerms:
    return terms_mod.from_toml(terms_doc(**changes), provider, consumer, SYSTEM_CLOCK.now_ms())


def proposal(proposer: Node, provider: Node, consumer: Node, **changes) -> agreement_pb2.AgreementDocument:
    return ag.propose(make_terms(provider.party, consumer.party, **changes), proposer.id, proposer.key).to_document()


def signed_request(key: Ed25519PrivateKey, caller_id: str, audience: str, documents=(), *, method: str = EXCHANGE_METHOD,
                   issued_at_ms: int | None = None, nonce: bytes | None = None) -> envelope_pb2.SignedRequest:
    request = envelope_pb2.Request(
        caller_id=caller_id, audience_hub_id=audience, method=method,
        issued_at_ms=int(time.time() * 1000) if issued_at_ms is None else issued_at_ms,
        nonce=secrets.token_bytes(envelope.NONCE_BYTES) if nonce is None else nonce,
        agreement_exchange=agreement_pb2.AgreementExchange(documents=list(documents)),
    )
    payload = request.SerializeToString()
    return envelope_pb2.SignedRequest(payload=payload, signature=sign(key, Domain.REQUEST, payload))


def send_as(sender: Node, receiver: Node, documents) -> Awaitable[federation_pb2.ExchangeAgreementsResponse]:
    return receiver.exchange(signed_request(sender.key, sender.id, receiver.id, documents))


def stored_document(node: Node, agreement_id: str) -> Awaitable[bytes]:
    return node.live.hub.storage.read(lambda s: s.get_agreement(agreement_id).document)


# -- refusals -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str        # part of the status details
    outcome: str        # the audit entry's outcome
    audit_detail: str = ""  # part of the audit entry's detail; defaults to `message`
    counted: bool = False  # an authentication refusal: in the per-minute count, not an entry of its own


async def assert_refused(node: Node, call: Callable[[], Awaitable], refusal: Refusal, *, actor: str, action: str) -> None:
    """The call fails with the refusal's status, the hub's agreements are unchanged, and the
    refusal is in its audit log."""
    before, seq = await node.stored(), await node.audit_seq()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call()
    assert err.value.code() == refusal.code, err.value.details()
    assert refusal.message in err.value.details()
    assert await node.stored() == before
    if refusal.counted:  # refused before the caller is authenticated: counted per source and minute
        await node.live.running.federation.refusals.flush()
    entries = await node.audit_after(seq)
    if refusal.counted:
        [counted] = [e for e in entries if e["action"] == "auth.refused"]
        assert counted["actor"].startswith("source:ipv4:127.0.0.1"), counted
        assert f"1 x {action} {refusal.outcome} (first {actor}: " in counted["detail"], counted
        assert (refusal.audit_detail or refusal.message) in counted["detail"], counted
        return
    wanted = {"actor": actor, "action": action, "outcome": refusal.outcome}
    assert any(wanted.items() <= e.items() and (refusal.audit_detail or refusal.message) in e["detail"] for e in entries), (
        f"no audit entry like {wanted} in {entries}"
    )


# -- documents a peer (Bergen, pinned at Stavanger) may send that Stavanger must refuse ------------
# Each builder gets (receiver, sender, outsider): three peered hubs, with their real keys.

def tampered_terms(a: Node, b: Node, c: Node):
    doc = proposal(b, b, a)
    assert b"Regional" in doc.signed_terms.terms
    doc.signed_terms.terms = doc.signed_terms.terms.replace(b"Regional", b"Regionam", 1)  # still parses
    return doc


def signed_with_the_wrong_key(a: Node, b: Node, c: Node):
    doc = proposal(b, b, a)
    doc.signed_terms.signatures[0].signature = sign(c.key, Domain.AGREEMENT, doc.signed_terms.terms)
    return doc


def signed_in_another_domain(a: Node, b: Node, c: Node):
    doc = proposal(b, b, a)
    doc.signed_terms.signatures[0].signature = sign(b.key, Domain.REQUEST, doc.signed_terms.terms)
    return doc


def terms_that_do_not_parse(a: Node, b: Node, c: Node):
    doc = proposal(b, b, a)
    doc.signed_terms.terms = b"\xff\xff\xff"
    doc.signed_terms.signatures[0].signature = sign(b.key, Domain.AGREEMENT, doc.signed_terms.terms)
    return doc


def invalid_terms_signed_by_the_peer(a: Node, b: Node, c: Node):
    terms = make_terms(b.party, a.party)
    terms.min_group_size = 0  # from_toml would refuse it; a peer's own software might not
    return ag.propose(terms, b.id, b.key).to_document()


def already_expired_proposal(a: Node, b: Node, c: Node):
    terms = make_terms(b.party, a.party)
    terms.valid_from_ms, terms.valid_until_ms = 1_577_836_800_000, 1_609_459_200_000  # 2020
    return ag.propose(terms, b.id, b.key).to_document()


def carries_no_signature(a: Node, b: Node, c: Node):
    doc = proposal(b, b, a)
    del doc.signed_terms.signatures[:]
    return doc


def receiver_is_not_a_party(a: Node, b: Node, c: Node):
    return proposal(b, b, c)


def caller_is_not_a_party(a: Node, b: Node, c: Node):
    return proposal(c, c, a)


def signed_by_a_non_party(a: Node, b: Node, c: Node):
    doc = proposal(b, b, a)
    doc.signed_terms.signatures.add(signer_id=c.id, signature=sign(c.key, Domain.AGREEMENT, doc.signed_terms.terms))
    return doc


def revoked_by_a_non_party(a: Node, b: Node, c: Node):
    doc = proposal(b, b, a)
    terms = agreement_pb2.AgreementTerms.FromString(doc.signed_terms.terms)
    payload = agreement_pb2.Revocation(agreement_id=terms.agreement_id, revoked_by=c.id, revoked_at_ms=1,
                                       reason="not mine to revoke").SerializeToString()
    doc.revocations.add(revocation=payload, signature=sign(c.key, Domain.REVOCATION, payload))
    return doc


def _refusal(code: grpc.StatusCode, message: str) -> Refusal:
    return Refusal(code, message, {INVALID: "invalid_request", DENIED: "permission_denied"}[code])


EXCHANGE_CASES = {
    tampered_terms: _refusal(INVALID, "does not verify (tampered terms or wrong key)"),
    signed_with_the_wrong_key: _refusal(INVALID, "does not verify (tampered terms or wrong key)"),
    signed_in_another_domain: _refusal(INVALID, "does not verify (tampered terms or wrong key)"),
    terms_that_do_not_parse: _refusal(INVALID, "the terms do not parse"),
    invalid_terms_signed_by_the_peer: _refusal(INVALID, "the minimum group size must be at least 1"),
    already_expired_proposal: _refusal(INVALID, "the validity has already expired"),
    carries_no_signature: _refusal(INVALID, "carries no signature"),
    receiver_is_not_a_party: _refusal(DENIED, "does not name this hub as a party"),
    caller_is_not_a_party: _refusal(DENIED, "does not name the caller"),
    signed_by_a_non_party: _refusal(DENIED, "who is not a party"),
    revoked_by_a_non_party: _refusal(DENIED, "who is not a party"),
}


@pytest.mark.parametrize("build", EXCHANGE_CASES, ids=lambda f: f.__name__)
async def test_bad_evidence_from_a_peer_is_refused_and_changes_nothing(hubs, build):
    a, b, c = hubs
    good = proposal(b, b, a)  # valid on its own: proves the refusal is all or nothing
    await assert_refused(a, lambda: send_as(b, a, [good, build(a, b, c)]), EXCHANGE_CASES[build],
                         actor=b.id, action="agreement.exchange")
    [outcome] = (await send_as(b, a, [good])).outcomes
    assert outcome.changed and outcome.state == State.AGREEMENT_STATE_PROPOSED


async def test_other_terms_under_a_known_agreement_id_are_refused(hubs):
    a, b, _c = hubs
    held = proposal(b, b, a)
    await send_as(b, a, [held])
    other = make_terms(b.party, a.party, purpose={"description": "Something else entirely"})
    other.agreement_id = agreement_pb2.AgreementTerms.FromString(held.signed_terms.terms).agreement_id
    conflicting = ag.propose(other, b.id, b.key).to_document()
    await assert_refused(a, lambda: send_as(b, a, [conflicting]),
                         Refusal(grpc.StatusCode.ALREADY_EXISTS, "is already used with other terms", "already_exists"),
                         actor=b.id, action="agreement.exchange")


# -- terms an admin proposes ----------------------------------------------------------------------

PROPOSE_CASES = {
    "expired_validity": ({"validity": {"from": dt.datetime(2020, 1, 1, tzinfo=UTC), "until": dt.datetime(2021, 1, 1, tzinfo=UTC)}},
                         "the validity has already expired"),
    "until_before_from": ({"validity": {"from": dt.datetime(2101, 6, 1, tzinfo=UTC), "until": dt.datetime(2101, 1, 1, tzinfo=UTC)}},
                          "valid-until must be after valid-from"),
    "until_without_time_zone": ({"validity": {"until": dt.datetime(2101, 1, 1)}}, "validity.until needs a time zone"),
    "unknown_dataset": ({"data": {"datasets": ["parking"]}}, "unknown dataset 'parking'"),
    "unknown_metric": ({"data": {"metrics": ["pm25", "co2"]}}, "metric 'co2' is not in dataset(s) air_quality"),
    "metric_of_another_dataset": ({"data": {"metrics": ["vehicles"]}}, "metric 'vehicles' is not in dataset(s) air_quality"),
    "min_group_size_0": ({"data": {"min_group_size": 0}}, "the minimum group size must be at least 1"),
    "unknown_purpose_code": ({"purpose": {"code": "marketing"}}, "purpose code 'marketing' is not one of"),
    "aggregate_not_in_the_list": ({"data": {"aggregates": ["mean", "median"]}}, "aggregate 'median' is not one of"),
    "grouping_by_sensor": ({"data": {"group_by": ["municipality", "sensor"]}}, "grouping 'sensor' is not one of"),
}


@pytest.mark.parametrize("case", [*PROPOSE_CASES, "invalid_toml"])
async def test_bad_terms_are_refused_by_the_admin_api(hubs, case):
    a, b, _ = hubs
    if case == "invalid_toml":
        text, message = terms_toml().replace("[data]", "[data", 1), "the terms are not valid TOML"
    else:
        changes, message = PROPOSE_CASES[case]
        text = terms_toml(**changes)
    request = admin_pb2.ProposeAgreementRequest(terms_toml=text, to=b.id)
    await assert_refused(a, lambda: a.admin("ProposeAgreement", request), Refusal(INVALID, message, "invalid_request"),
                         actor="admin", action="agreement.propose")


async def test_proposing_to_an_unknown_party_is_not_found(hubs):
    a, _, _ = hubs
    stranger = identity.generate().hub_id_text
    request = admin_pb2.ProposeAgreementRequest(terms_toml=terms_toml(), to=stranger)
    await assert_refused(a, lambda: a.admin("ProposeAgreement", request),
                         Refusal(grpc.StatusCode.NOT_FOUND, "is neither a peer hub nor a registered partner", "not_found"),
                         actor="admin", action="agreement.propose")


@pytest.mark.parametrize("shift_days", [0, 4, -4])
async def test_overlapping_validity_with_a_live_agreement_is_refused(hubs, shift_days):
    a, b, _ = hubs
    window = fresh_window()
    first = await a.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=terms_toml(validity=window), to=b.id))
    shifted = {k: v + dt.timedelta(days=shift_days) for k, v in window.items()}
    request = admin_pb2.ProposeAgreementRequest(terms_toml=terms_toml(validity=shifted, data={"metrics": ["no2"]}), to=b.id)
    await assert_refused(a, lambda: a.admin("ProposeAgreement", request),
                         Refusal(grpc.StatusCode.ALREADY_EXISTS, f"overlaps agreement {first.terms.agreement_id}", "already_exists"),
                         actor="admin", action="agreement.propose")
    # The check is about overlap: the window right after the first one is free.
    after = {"from": window["until"], "until": window["until"] + dt.timedelta(days=1)}
    await a.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=terms_toml(validity=after), to=b.id))


# -- who may call ---------------------------------------------------------------------------------
# Each builder gets (receiver, pinned peer, another pinned peer, documents) and returns the
# request and the actor the audit log should name.

def unknown_caller(a: Node, b: Node, c: Node, docs):
    key = Ed25519PrivateKey.generate()
    caller_id = hub_id_from_public_key(identity.raw_public(key.public_key()))
    return signed_request(key, caller_id, a.id, docs), f"unknown:{caller_id}"


def pinned_id_signed_with_another_key(a: Node, b: Node, c: Node, docs):
    return signed_request(c.key, b.id, a.id, docs), b.id


def payload_altered_after_signing(a: Node, b: Node, c: Node, docs):
    signed = signed_request(b.key, b.id, a.id, docs)
    request = envelope_pb2.Request.FromString(signed.payload)
    request.issued_at_ms += 1
    return envelope_pb2.SignedRequest(payload=request.SerializeToString(), signature=signed.signature), b.id


def addressed_to_another_hub(a: Node, b: Node, c: Node, docs):
    return signed_request(b.key, b.id, c.id, docs), b.id


def signed_for_another_method(a: Node, b: Node, c: Node, docs):
    return signed_request(b.key, b.id, a.id, docs, method="/smartregion.v1.Federation/GetDescriptor"), b.id


def issued_ten_minutes_ago(a: Node, b: Node, c: Node, docs):
    return signed_request(b.key, b.id, a.id, docs, issued_at_ms=int(time.time() * 1000) - 10 * 60_000), b.id


def issued_ten_minutes_ahead(a: Node, b: Node, c: Node, docs):
    return signed_request(b.key, b.id, a.id, docs, issued_at_ms=int(time.time() * 1000) + 10 * 60_000), b.id


def short_nonce(a: Node, b: Node, c: Node, docs):
    return signed_request(b.key, b.id, a.id, docs, nonce=b"\x01" * 8), b.id


def payload_is_not_a_request(a: Node, b: Node, c: Node, docs):
    payload = b"\xff\xff\xff"
    return envelope_pb2.SignedRequest(payload=payload, signature=sign(b.key, Domain.REQUEST, payload)), "unknown"


AUTH_CASES = {
    unknown_caller: Refusal(UNAUTH, "is not a peer or partner of this hub", "unauthenticated", counted=True),
    pinned_id_signed_with_another_key: Refusal(UNAUTH, "does not verify under the key pinned for", "unauthenticated", counted=True),
    payload_altered_after_signing: Refusal(UNAUTH, "does not verify under the key pinned for", "unauthenticated", counted=True),
    addressed_to_another_hub: Refusal(UNAUTH, "is addressed to hub", "unauthenticated", counted=True),
    signed_for_another_method: Refusal(UNAUTH, "was signed for /smartregion.v1.Federation/GetDescriptor", "unauthenticated",
                                       counted=True),
    issued_ten_minutes_ago: Refusal(UNAUTH, "more than 5 minutes from this hub's clock", "unauthenticated", counted=True),
    issued_ten_minutes_ahead: Refusal(UNAUTH, "more than 5 minutes from this hub's clock", "unauthenticated", counted=True),
    short_nonce: Refusal(UNAUTH, "nonce must be 16 bytes", "unauthenticated", counted=True),
    payload_is_not_a_request: Refusal(UNAUTH, "does not parse", "unauthenticated", counted=True),
}


@pytest.mark.parametrize("build", AUTH_CASES, ids=lambda f: f.__name__)
async def test_unauthenticated_requests_are_refused_and_change_nothing(hubs, build):
    a, b, c = hubs
    good = proposal(b, b, a)  # would be accepted from Bergen in a proper request
    signed, actor = build(a, b, c, [good])
    await assert_refused(a, lambda: a.exchange(signed), AUTH_CASES[build], actor=actor, action=EXCHANGE_METHOD)
    [outcome] = (await send_as(b, a, [good])).outcomes
    assert outcome.changed


async def test_a_replayed_request_is_refused_the_second_time(hubs):
    a, b, _ = hubs
    good = proposal(b, b, a)
    signed = envelope.make(b.key, b.id, a.id, EXCHANGE_METHOD, agreement_exchange=agreement_pb2.AgreementExchange(documents=[good]))
    [outcome] = (await a.exchange(signed)).outcomes
    assert outcome.changed
    replayed = envelope_pb2.SignedRequest.FromString(signed.SerializeToString())  # the same bytes again
    await assert_refused(a, lambda: a.exchange(replayed),
                         Refusal(grpc.StatusCode.ALREADY_EXISTS, "replayed nonce", "replayed", counted=True),
                         actor=b.id, action=EXCHANGE_METHOD)


# -- stale and out-of-order evidence --------------------------------------------------------------

async def propose_and_deliver(proposer: Node, to: Node, **changes) -> str:
    view = await proposer.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=terms_toml(**changes), to=to.id))
    agreement_id = view.terms.agreement_id
    await eventually(lambda: state_is(to, agreement_id, State.AGREEMENT_STATE_PROPOSED))
    return agreement_id


@pytest.mark.parametrize("revoker_index", [0, 1], ids=["proposer_revokes", "counterparty_revokes"])
async def test_a_stale_proposal_does_not_undo_a_revocation(hubs, revoker_index):
    a, b, _ = hubs
    agreement_id = await propose_and_deliver(a, b)
    original = agreement_pb2.AgreementDocument.FromString(await stored_document(a, agreement_id))
    revoker = (a, b)[revoker_index]
    await revoker.admin("RevokeAgreement", admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason="stale test"))
    for node in (a, b):
        await eventually(functools.partial(state_is, node, agreement_id, State.AGREEMENT_STATE_REVOKED))
    await settle(hubs)
    for receiver, sender in ((a, b), (b, a)):
        before = await receiver.stored()
        [outcome] = (await send_as(sender, receiver, [original])).outcomes  # a fresh envelope, old evidence
        assert (outcome.agreement_id, outcome.changed, outcome.state) == (agreement_id, False, State.AGREEMENT_STATE_REVOKED)
        assert await receiver.stored() == before
        assert (await receiver.view(agreement_id)).state == State.AGREEMENT_STATE_REVOKED


async def test_a_revoked_agreement_cannot_be_countersigned_or_revoked_again(hubs):
    a, b, _ = hubs
    agreement_id = await propose_and_deliver(a, b)
    await a.admin("RevokeAgreement", admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason="changed our mind"))
    await eventually(lambda: state_is(b, agreement_id, State.AGREEMENT_STATE_REVOKED))
    await settle(hubs)
    ref = admin_pb2.AgreementRef(agreement_id=agreement_id)
    await assert_refused(b, lambda: b.admin("AcceptAgreement", ref),
                         Refusal(INVALID, "is revoked and not awaiting this hub's signature", "invalid_request"),
                         actor="admin", action="agreement.accept")
    again = admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason="once more")
    await assert_refused(a, lambda: a.admin("RevokeAgreement", again),
                         Refusal(grpc.StatusCode.ALREADY_EXISTS, "is already revoked by this hub", "already_exists"),
                         actor="admin", action="agreement.revoke")


# -- convergence ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("revokers", "caller"), [
    ((0,), 0), ((0,), 1), ((1,), 0), ((1,), 1), ((0, 1), 0),
], ids=["proposer_revoked-it_calls", "proposer_revoked-other_calls", "counterparty_revoked-proposer_calls",
        "counterparty_revoked-it_calls", "both_revoked_apart"])
async def test_hubs_with_different_evidence_converge_after_one_exchange(pair, revokers, caller):
    a, b = pair
    agreement_id = await propose_and_deliver(a, b, validity=running_window())
    await b.admin("AcceptAgreement", admin_pb2.AgreementRef(agreement_id=agreement_id))
    await eventually(lambda: state_is(a, agreement_id, State.AGREEMENT_STATE_ACTIVE))
    await settle(pair)
    for node in pair:
        await pause_delivery(node)
    for i in revokers:
        await pair[i].admin("RevokeAgreement", admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason=f"by {i}"))
    # Apart: each revoker has an undelivered update, and the two hold different evidence.
    for i in revokers:
        assert pair[1 - i].id in await pair[i].pending()
    assert await stored_document(a, agreement_id) != await stored_document(b, agreement_id)
    if len(revokers) == 1:
        assert (await pair[1 - revokers[0]].view(agreement_id)).state == State.AGREEMENT_STATE_ACTIVE

    calling, called = pair[caller], pair[1 - caller]
    assert len(await calling.stored()) == 1  # so the hub's own sync makes exactly one ExchangeAgreements call
    peer = await calling.live.hub.storage.read(lambda s: s.get_peer(called.id))
    await calling.live.running.federation.sync_with(peer)

    views = [await node.view(agreement_id) for node in pair]
    assert [v.state for v in views] == [State.AGREEMENT_STATE_REVOKED] * 2
    assert [{r.revoked_by for r in v.revocations} for v in views] == [{pair[i].id for i in revokers}] * 2
    assert await stored_document(a, agreement_id) == await stored_document(b, agreement_id)


# -- a partner, and the export --------------------------------------------------------------------

def _retyped(byte: int) -> int:
    """Another byte of the same kind (digit, hex digit, letter), so the file still looks plausible."""
    c = chr(byte)
    for alphabet in ("0123456789", "abcdef", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"):
        if c in alphabet:
            return ord(alphabet[(alphabet.index(c) + 1) % len(alphabet)])
    return byte ^ 0x01


def positions(data: bytes) -> dict[str, int]:
    """Where to change one byte: in each field's value, in the structure, and at regular steps."""
    found = {"first byte": 0, "last byte": len(data) - 1, "indentation": data.index(b"\n  ") + 1}
    for key in ("agreement_id", "document", "exported_at_ms", "exported_by", "exporter_signature", "state_at_export", "signatures",
                "purpose_description", "min_group_size", "valid_until_ms", "public_key", "revoked_by"):
        start = data.index(b'"' + key.encode() + b'": ') + len(key) + 4
        while data[start] in b'["\n ':  # to the first character of the (first) value
            start += 1
        empty = data[start] in b"]"
        found[key] = start if empty else start + len(key) % 3  # not always a value's first character
    found["document (middle)"] = data.index(b'"document": ') + 200
    found.update({f"offset {i}": i for i in range(0, len(data), max(1, len(data) // 20))})
    return found


async def test_partner_signs_and_the_export_verifies_until_any_byte_changes(hubs, tmp_path):
    a = hubs[0]
    partner = partners.keygen(tmp_path / "uis.key", "Universitetet i Stavanger", PASSPHRASE.encode())
    assert partners.load_private(tmp_path / "uis.key", PASSPHRASE.encode()).partner_id == partner.partner_id
    await a.admin("AddPartner", admin_pb2.AddPartnerRequest(
        name="Universitetet i Stavanger", org_number="971564679",
        public_key_file=partners.public_file_path(tmp_path / "uis.key").read_bytes()))
    offered = await a.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(
        terms_toml=terms_toml(purpose={"code": "research"}, validity=running_window()), to=partner.partner_id))
    agreement_id = offered.terms.agreement_id
    assert offered.state == State.AGREEMENT_STATE_PROPOSED

    async with PartnerSession(partner, a.address, a.id) as session:
        [held] = await session.agreements()
        assert held.awaiting_partner and held.evidence.agreement_id == agreement_id
        outcome = await session.accept(agreement_id)
    assert (outcome.agreement_id, outcome.changed, outcome.state) == (agreement_id, True, State.AGREEMENT_STATE_ACTIVE)
    view = await a.view(agreement_id)
    assert view.state == State.AGREEMENT_STATE_ACTIVE
    assert {s.signer_id for s in view.signatures} == {a.id, partner.partner_id}

    data = (await a.admin("ExportAgreement", admin_pb2.AgreementRef(agreement_id=agreement_id))).document_json
    verified = export.verify(data, int(time.time() * 1000))
    assert verified.state_now == State.AGREEMENT_STATE_ACTIVE
    assert set(verified.evidence.signatures) == {a.id, partner.partner_id}

    still_verifying = []
    for where, i in positions(data).items():
        altered = data[:i] + bytes([_retyped(data[i])]) + data[i + 1:]
        assert altered != data
        try:
            export.verify(altered, int(time.time() * 1000))
        except export.ExportError:
            continue
        still_verifying.append(f"{where} (byte {i}: {data[i:i + 1]!r} -> {altered[i:i + 1]!r})")
    assert not still_verifying, f"altered exports that still verify: {still_verifying}"
