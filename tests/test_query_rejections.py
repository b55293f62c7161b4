"""Every refused federated query gets a precise gRPC status and message, through real in-process
hubs (grpc.aio with pinned TLS, SQLite), and the refusal is in the audit log of the hub that
refused it.

Two hubs, Stavanger (A, the consumer) and Bergen (B, the provider), pinned as peers both ways.
B holds sensors whose readings arrived as sealed frames, and four agreements with A, each
proposed by B's admin (ProposeAgreement) and accepted by A's admin (AcceptAgreement):

* air_quality/pm25: mean and count, by time bucket only (not by municipality), days or
  coarser, windows of at most 31 days, for environmental monitoring;
* traffic/vehicles with a quota of two queries a day;
* water_consumption, revoked by B;
* electricity, valid for a few seconds only (it expires while the module runs).

A's admin asks with RunQuery and `hub_ids = [B]`: the shape is checked by A before any hub is
asked; the agreement is enforced by B. Malformed and replayed requests are signed by hand with
the real keys and sent straight to B's Query service, as a peer or partner would.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from query_helpers import (
    DAY_MS,
    HOUR_MS,
    UTC,
    Node,
    State,
    add_sensor,
    agree,
    asked,
    audited,
    deliver,
    eventually,
    ms,
    open_partial,
    refused,
    relay,
    signed,
    spec,
    start_nodes,
    state_is,
    stop_nodes,
    terms_toml,
)

from federation import partners
from federation.query_service import PARTIAL_METHOD, RUN_METHOD
from node import senml
from node.api.v1 import admin_pb2, agreement_pb2, envelope_pb2, query_pb2
from node.clock import utc_day

pytestmark = pytest.mark.asyncio(loop_scope="module")

INVALID, DENIED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
UNAUTH, EXISTS, EXHAUSTED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED
EXPIRES_IN_S = 8  # long enough to propose and accept it on a busy machine
OUTCOME = {INVALID: "invalid_request", DENIED: "permission_denied", UNAUTH: "unauthenticated", EXHAUSTED: "quota_exhausted"}


@dataclass
class Region:
    a: Node                      # the consumer, asking
    b: Node                      # the provider
    partner: partners.PartnerKey  # registered at B, with no agreement
    agreements: dict[str, str]    # role -> agreement id (all B -> A)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def region(tmp_path_factory):
    base = tmp_path_factory.mktemp("query-rejections")
    a, b = await start_nodes(base, (("stavanger", "1103"), ("bergen", "4601")))
    try:
        soon = dt.datetime.now(UTC) + dt.timedelta(seconds=EXPIRES_IN_S)
        agreements = {"expired": await agree(b, a, terms_toml(
            until=soon, datasets=["electricity"], metrics=["energy"], consent_required=True, dp_epsilon=1.0,
            dp_max_contributions=24))}
        agreements["main"] = await agree(b, a, terms_toml(group_by=["time_bucket"]))
        agreements["quota"] = await agree(b, a, terms_toml(datasets=["traffic"], metrics=["vehicles"], queries_per_day=2))
        agreements["revoked"] = await agree(b, a, terms_toml(datasets=["water_consumption"], metrics=["water_volume"],
                                                              consent_required=True, dp_epsilon=1.0, dp_max_contributions=24))
        await b.admin("RevokeAgreement", admin_pb2.RevokeAgreementRequest(agreement_id=agreements["revoked"], reason="test: revoked"))

        partner = partners.PartnerKey(Ed25519PrivateKey.generate(), "Universitetet i Stavanger")
        await b.admin("AddPartner", admin_pb2.AddPartnerRequest(name=partner.name, org_number="971564679",
                                                               public_key_file=partners.public_document(partner)))
        hours = range(ms(2019, 1, 1), ms(2019, 1, 8), HOUR_MS)
        for i in range(2):
            sensor = await add_sensor(b, base, f"air{i}", "air_quality", ["pm25"])
            await deliver(b, sensor, [senml.Reading("pm25", t, 10.0 + i + (t // HOUR_MS) % 24) for t in hours])
        traffic = await add_sensor(b, base, "counter", "traffic", ["vehicles"])
        await deliver(b, traffic, [senml.Reading("vehicles", t, 100.0) for t in hours])
        yield Region(a, b, partner, agreements)
    finally:
        await stop_nodes([a, b])


async def assert_refused_at_provider(region: Region, query: query_pb2.QuerySpec, code: grpc.StatusCode, message: str) -> None:
    """A's admin asks B only: the status is B's, the message names B and B's reason, and both
    hubs audited it (B as the provider that refused, A as the hub that ran the query)."""
    a, b = region.a, region.b
    seq_a, seq_b = await a.audit_seq(), await b.audit_seq()
    await refused(lambda: a.run_query(query), code, f"hub {b.id}: ", message)
    outcome = OUTCOME[code]
    assert audited(await b.audit_after(seq_b), actor=a.id, action="query.partial", outcome=outcome, detail=message), \
        await b.audit_after(seq_b)
    assert audited(await a.audit_after(seq_a), actor=a.id, action="query.run", outcome=outcome, detail=message)


# -- the shape: refused by the entry hub before any hub is asked ------------------------------------

NO_SUCH_HUB = "00" * 16
SHAPE = {
    "unknown dataset": (dict(dataset="noise_levels"), "unknown dataset 'noise_levels'"),
    "unknown metric": (dict(metric="co2"), "dataset 'air_quality' has no metric 'co2'"),
    "reversed window": (dict(start_ms=ms(2019, 1, 8), end_ms=ms(2019, 1, 1)), "the window is empty or reversed"),
    "empty window": (dict(start_ms=ms(2019, 1, 1), end_ms=ms(2019, 1, 1)), "the window is empty or reversed"),
    "window before 1970": (dict(start_ms=-DAY_MS, end_ms=DAY_MS), "the window must lie between 1970 and 2200"),
    "window longer than ten years": (dict(bucket="year", start_ms=ms(2000, 1, 1), end_ms=ms(2011, 1, 1)),
                                     "the window is longer than ten years"),
    "window off its own bucket": (dict(bucket="week", start_ms=ms(2019, 1, 1), end_ms=ms(2019, 1, 8)),
                                  "the window must start and end on week boundaries (UTC)"),
    "a hub not of this region": (dict(hub_ids=[NO_SUCH_HUB]), f"not hubs of this region: {NO_SUCH_HUB}"),
}


@pytest.mark.parametrize("case", sorted(SHAPE))
async def test_malformed_queries_are_refused_before_any_hub_is_asked(region, case):
    fields, message = SHAPE[case]
    a, b = region.a, region.b
    seq_a, seq_b, calls = await a.audit_seq(), await b.audit_seq(), await b.requests_from(a.id)
    await refused(lambda: a.run_query(spec(**{"hub_ids": [b.id], **fields})), INVALID, message)
    assert await b.requests_from(a.id) == calls, "B was asked"
    assert not [e for e in await b.audit_after(seq_b) if e["action"].startswith("query")], "B was asked"
    assert audited(await a.audit_after(seq_a), actor=a.id, action="query.run", outcome="invalid_request", detail=message)


# -- the agreement: refused by the provider -------------------------------------------------------

POLICY = {
    "aggregate not allowed": (dict(aggregate="max"), "aggregate 'max' is not allowed by agreement {main}"),
    "grouping by municipality not allowed": (dict(group_by="municipality"),
                                             "grouping by municipality is not allowed by agreement {main}"),
    "bucket finer than allowed": (dict(bucket="hour"), "bucket 'hour' is finer than agreement {main} allows (smallest: day)"),
    "window longer than allowed": (dict(end_ms=ms(2019, 2, 5)),
                                   "a window of 35 days is longer than agreement {main} allows (31 days)"),
    "window off the agreement's smallest bucket": (
        dict(bucket="window", start_ms=ms(2019, 1, 1, 6), end_ms=ms(2019, 1, 8, 6)),
        "the window must start and end on day boundaries under agreement {main}"),
    "purpose mismatch": (dict(purpose_code="research"),
                         "purpose 'research' does not match agreement {main} (purpose 'environmental_monitoring')"),
    "metric no agreement covers": (dict(metric="no2"), "no agreement between hub {b} and {a} covers air_quality/no2"),
    "revoked agreement": (dict(dataset="water_consumption", metric="water_volume"),
                          "no active agreement covers water_consumption/water_volume: {revoked} is revoked"),
}


@pytest.mark.parametrize("case", sorted(POLICY))
async def test_queries_the_agreement_does_not_allow_are_refused_by_the_provider(region, case):
    fields, message = POLICY[case]
    names = {**region.agreements, "a": region.a.id, "b": region.b.id}
    await assert_refused_at_provider(region, spec(hub_ids=[region.b.id], **fields), DENIED, message.format(**names))


async def test_a_query_the_agreement_allows_is_answered(region):
    """The control for the refusals above: the same base query, within the terms, is answered."""
    calls = await region.b.requests_from(region.a.id)
    answer = await region.a.run_query(spec(hub_ids=[region.b.id]))
    # B was asked once: it recorded A's Query.Partial request and A's query relayed in it.
    assert await region.b.requests_from(region.a.id) == calls + 2
    assert [p.status for p in answer.provenance] == ["answered"]
    assert [p.agreement_id for p in answer.provenance] == [region.agreements["main"]]
    assert len(answer.rows) == 7 and all(r.contributors == 2 and r.readings == 48 for r in answer.rows)


async def test_an_expired_agreement_is_refused(region):
    aid = region.agreements["expired"]
    await eventually(lambda: state_is(region.b, aid, State.AGREEMENT_STATE_EXPIRED), timeout=EXPIRES_IN_S + 15,
                     what=f"{aid} to expire")
    await assert_refused_at_provider(region, spec(hub_ids=[region.b.id], dataset="electricity", metric="energy"), DENIED,
                                     f"no active agreement covers electricity/energy: {aid} is expired")


async def test_the_third_query_of_the_day_exhausts_a_quota_of_two(region):
    traffic = spec(hub_ids=[region.b.id], dataset="traffic", metric="vehicles", aggregate="count")
    aid = region.agreements["quota"]
    # A refused query does not count against the quota.
    for_research = query_pb2.QuerySpec()
    for_research.CopyFrom(traffic)
    for_research.purpose_code = "research"
    await assert_refused_at_provider(region, for_research, DENIED, f"does not match agreement {aid}")
    for _ in range(2):
        answer = await region.a.run_query(traffic)
        assert [p.agreement_id for p in answer.provenance] == [aid]
        assert [r.value for r in answer.rows] == [24.0] * 7
    await assert_refused_at_provider(region, traffic, EXHAUSTED, f"agreement {aid} allows 2 queries a day; today's are used up")


# -- partners asking the provider directly --------------------------------------------------------

PARTNER_RUN = {
    "unknown metric": (dict(metric="co2"), INVALID, "dataset 'air_quality' has no metric 'co2'", "query.run"),
    "no agreement with the partner": (dict(), DENIED, "hub {b}: hub {b} has no agreement with {p}", "query.partial"),
}


@pytest.mark.parametrize("case", sorted(PARTNER_RUN))
async def test_a_partner_asking_the_provider_is_refused_and_audited(region, case):
    fields, code, message, action = PARTNER_RUN[case]
    b, partner = region.b, region.partner
    message = message.format(b=b.id, p=partner.partner_id)
    request = asked(partner.key, partner.partner_id, b, spec(hub_ids=[b.id], **fields))
    seq = await b.audit_seq()
    await refused(lambda: b.query.Run(request, timeout=10), code, message)
    assert audited(await b.audit_after(seq), actor=partner.partner_id, action=action, outcome=OUTCOME[code],
                   detail=message.removeprefix(f"hub {b.id}: ")), await b.audit_after(seq)


# -- malformed, forged and replayed requests, sent straight to the provider ----------------------

def garbage_payload(r: Region):
    return "Run", envelope_pb2.SignedRequest(payload=b"not a request", signature=bytes(64))


def run_body_not_a_query(r: Region):
    return "Run", signed(r.a.key, r.a.id, r.b.id, RUN_METHOD, agreement_exchange=agreement_pb2.AgreementExchange())


def partial_body_not_relayed(r: Region):
    return "Partial", signed(r.a.key, r.a.id, r.b.id, PARTIAL_METHOD, query=spec())


def relayed_request_not_a_query(r: Region):
    original = signed(r.a.key, r.a.id, r.a.id, RUN_METHOD, agreement_exchange=agreement_pb2.AgreementExchange())
    return "Partial", relay(r.a, r.b, original)


def partial_called_by_a_partner(r: Region):
    original = asked(r.partner.key, r.partner.partner_id, r.a, spec())
    return "Partial", signed(r.partner.key, r.partner.partner_id, r.b.id, PARTIAL_METHOD, relayed=original)


def asker_signature_altered(r: Region):
    original = asked(r.a.key, r.a.id, r.a, spec(hub_ids=[r.b.id]))
    original.signature = bytes([original.signature[0] ^ 1]) + original.signature[1:]
    return "Partial", relay(r.a, r.b, original)


def asker_payload_altered(r: Region):
    """The relaying hub widens the asker's window after the asker signed it."""
    original = asked(r.a.key, r.a.id, r.a, spec(hub_ids=[r.b.id]))
    request = envelope_pb2.Request.FromString(original.payload)
    request.query.end_ms = ms(2019, 1, 9)
    original.payload = request.SerializeToString()
    return "Partial", relay(r.a, r.b, original)


def asker_addressed_another_hub(r: Region):
    original = signed(r.a.key, r.a.id, r.b.id, RUN_METHOD, query=spec(hub_ids=[r.b.id]))  # for B, relayed by A
    return "Partial", relay(r.a, r.b, original)


def relayed_payload_garbage(r: Region):
    return "Partial", relay(r.a, r.b, envelope_pb2.SignedRequest(payload=b"not a request", signature=bytes(64)))


def own_query_came_back(r: Region):
    original = asked(r.b.key, r.b.id, r.a, spec())  # B's own query, relayed back to B
    return "Partial", relay(r.a, r.b, original)


# case -> (builder, status, message, audit (actor role, action, outcome) or None: a wrong request
# body is not audited, as for every federation call (docs/federation.md, 7.3))
MALFORMED = {
    "payload is garbage": (garbage_payload, UNAUTH, "the request payload does not parse", ("unknown", RUN_METHOD, "unauthenticated")),
    "Run body is not a query": (run_body_not_a_query, INVALID, "Query.Run takes a request whose body is a query", None),
    "Partial body is not a relayed request": (partial_body_not_relayed, INVALID,
                                              "Query.Partial takes a request whose body is the relayed query", None),
    "relayed request is not a query": (relayed_request_not_a_query, INVALID, "the relayed request is not a query", None),
    "Partial called by a partner": (partial_called_by_a_partner, DENIED, "only a peer hub may relay a query",
                                    ("partner", "query.partial", "permission_denied")),
    "asker's signature altered": (asker_signature_altered, UNAUTH, "the relayed query: the request's signature does not verify",
                                  ("a", "query.partial", "unauthenticated")),
    "asker's query altered after signing": (asker_payload_altered, UNAUTH, "the relayed query: the request's signature does not verify",
                                            ("a", "query.partial", "unauthenticated")),
    "asker addressed another hub": (asker_addressed_another_hub, UNAUTH, "the relayed query: the request is addressed to hub",
                                    ("a", "query.partial", "unauthenticated")),
    "relayed payload is garbage": (relayed_payload_garbage, UNAUTH, "the request payload does not parse",
                                   ("unknown", "query.partial", "unauthenticated")),
    "own query came back": (own_query_came_back, DENIED, "a query asked by this hub came back to it",
                            ("a", "query.partial", "permission_denied")),
}


def actor_id(r: Region, role: str) -> str:
    return {"a": r.a.id, "partner": r.partner.partner_id}.get(role, role)


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_and_forged_requests_are_refused(region, case):
    build, code, message, audit = MALFORMED[case]
    method, request = build(region)
    seq = await region.b.audit_seq()
    await refused(lambda: getattr(region.b.query, method)(request, timeout=10), code, message)
    entries = await region.b.audit_after(seq)
    assert not [e for e in entries if e["outcome"] == "ok"], "a refused request was also answered"
    if audit is not None:
        role, action, outcome = audit
        assert audited(entries, actor=actor_id(region, role), action=action, outcome=outcome), entries


async def usage(node, agreement_id: str) -> int:
    day = utc_day(node.live.hub.clock.now_ms())
    return (await node.live.hub.storage.read(lambda s: s.quota_used(agreement_id, day)))[0]


async def test_a_relayed_query_is_computed_and_charged_once(region):
    """The same asker's query relayed twice (in two fresh outer requests), as when an entry hub
    was killed before it delivered the first answer and the asker retried the same signed
    query: the second gets the kept sealed bytes, and the quota is charged once. Before: the
    first charge stood and the retry was refused, so a lost answer cost a query and a new one."""
    a, b = region.a, region.b
    aid = region.agreements["main"]
    original = asked(a.key, a.id, a, spec(hub_ids=[b.id]))
    charged_before = await usage(b, aid)
    first = await b.query.Partial(relay(a, b, original), timeout=10)
    assert open_partial(first, b.id, original).agreement_id == aid
    assert await usage(b, aid) == charged_before + 1
    seq = await b.audit_seq()
    again = await b.query.Partial(relay(a, b, original), timeout=10)
    assert again.sealed == first.sealed and again.agreement_id == aid
    assert await usage(b, aid) == charged_before + 1, "the retry of the same signed query was charged again"
    entries = await b.audit_after(seq)
    assert [e for e in entries if e["action"] == "query.partial" and "nothing charged" in e["detail"]], entries


async def test_a_relayed_query_whose_answer_was_not_kept_is_refused_not_computed_again(region):
    """A retry the hub cannot answer from a kept answer (the first is still being computed, or
    the hub stopped between charging and keeping it) is a replay: computing it again would be
    a second release for one signed query."""
    a, b = region.a, region.b
    original = asked(a.key, a.id, a, spec(hub_ids=[b.id]))
    await b.query.Partial(relay(a, b, original), timeout=10)
    await b.live.hub.storage.write(lambda s: s.conn.execute("DELETE FROM kept_answers"))
    seq = await b.audit_seq()
    await refused(lambda: b.query.Partial(relay(a, b, original), timeout=10), EXISTS,
                  "this query was already answered (replayed)")
    assert audited(await b.audit_after(seq), actor=a.id, action="query.partial", outcome="replayed"), await b.audit_after(seq)


async def test_the_same_outer_request_twice_is_a_replay(region):
    a, b = region.a, region.b
    outer = relay(a, b, asked(a.key, a.id, a, spec(hub_ids=[b.id])))
    await b.query.Partial(outer, timeout=10)
    seq = await b.audit_seq()
    await refused(lambda: b.query.Partial(outer, timeout=10), EXISTS, "replayed nonce")
    assert audited(await b.audit_after(seq), actor=a.id, action=PARTIAL_METHOD, outcome="replayed")
