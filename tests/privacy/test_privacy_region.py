"""Issue 9, attacks 1, 4 and 7, against three live hub processes and a partner.

The region: Stavanger (A, the entry hub; two stations at 5 and 6 µg/m³), Bergen (B; one
station whose 24 hourly readings of 2019-01-01 are HOURLY) and Porsgrunn (C; two stations at
7 and 8), each a `smartregion serve` process. Readings go in through the sensors' own sealed
ingest; the partner (Universitetet i Stavanger) holds its own key and signs each hub's offer
over gRPC. B and C also grant it a personal electricity dataset under a DP budget, so that a
relayed attack can be checked against a budget as well as a quota.

* Attack 1 (sketches released every reading): a daily quantile of one-station Bergen gave all
  24 hourly readings (±1 %); then the final value alone, itself one reading (a sweep over q gave
  23 of 24). Tried again: the quantile is read from a coarsened sketch that one station cannot
  satisfy, so the cell is withheld: 0 of 24. Region-wide, each hub's sketch comes coarsened into
  bins that mix >= 2 stations, and a hub that cannot mix (Bergen alone) is withheld.
* Attack 4 (the entry hub reads and spends what it was never granted): A's operator relays the
  partner's signed request for A only, signed with A's own identity key, with Query.Partial to
  B and C. Tried: 8 relays (2 hubs x hub_ids/municipalities filter x air/DP electricity).
  Now: 0 of 8 answered (PERMISSION_DENIED), 0 queries and 0 micro-epsilon charged, an audit
  row at each; what A relays for an allowed query is ciphertext A cannot open.
* Attack 7 (answer files only partly verified): every one-byte edit of every JSON field, and
  of every byte of the signed answer, of an answer with three answering hubs and of one with a
  refusing hub, fails `query verify` or touches only the latencies it prints as unsigned.
"""

from __future__ import annotations

import base64
import json

import grpc
import pytest
import pytest_asyncio

from federation import answers, envelope, partials, partners, peers, sealing
from federation.query import asker
from federation.query.provider import PARTIAL_METHOD, RUN_METHOD
from node import senml
from node.api.v1 import query_pb2, query_service_pb2, query_service_pb2_grpc
from tests.conftest import PASSPHRASE
from tests.query_helpers import HOUR_MS, ms, terms_toml
from tests.region_helpers import (
    ProcessHub,
    audit_entries,
    budget_spent,
    enrol,
    offer_to_partner,
    operator_identity,
    queries_charged,
    send,
    start_region,
    stop_region,
)
from tests.test_cli import cli

pytestmark = pytest.mark.asyncio(loop_scope="module")
DAY = ms(2019, 1, 1)
HOURLY = [10.0 + 1.7 * h for h in range(24)]  # Bergen's one station that day
STATIONS = {"1103": [5.0, 6.0], "4601": None, "4001": [7.0, 8.0]}  # constant stations; None: HOURLY
AIR = terms_toml(aggregates=["mean", "count", "quantile"], smallest_bucket="day")
ELECTRICITY = terms_toml(purpose="research", datasets=["electricity"], metrics=["energy"], aggregates=["count", "sum", "mean"],
                         min_group_size=3, consent_required=True, dp_epsilon=10.0, dp_max_contributions=24)


class Region:
    def __init__(self, hubs: list[ProcessHub], partner: partners.PartnerKey) -> None:
        self.a, self.b, self.c = hubs
        self.hubs = hubs
        self.partner = partner
        self.air: dict[str, str] = {}  # hub id -> the partner's air-quality agreement there
        self.electricity: dict[str, str] = {}  # B and C only
        self.channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, hub: ProcessHub):
        """A channel pinned to the hub's certificate, as a partner or a peer opens it."""
        if hub.hub_id not in self.channels:
            self.channels[hub.hub_id] = peers.channel_to(hub.address, hub.hub_id, hub.hub_dir.tls_cert_pem())
        return self.channels[hub.hub_id]

    async def ask(self, **fields) -> query_service_pb2.QueryAnswer:
        """The partner asks the region through A (Query.Run), then decrypts, verifies, merges."""
        return await asker.ask(self.channel(self.a), self.partner.key, self.partner.partner_id, self.a.hub_id, query(**fields))


def query(**fields) -> query_pb2.QuerySpec:
    base = dict(dataset="air_quality", metric="pm25", aggregate="mean", bucket="day", group_by="municipality",
                start_ms=DAY, end_ms=DAY + 24 * HOUR_MS, purpose_code="environmental_monitoring")
    return query_pb2.QuerySpec(**{**base, **fields})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def region(tmp_path_factory):
    base = tmp_path_factory.mktemp("privacy-region")
    hubs = await start_region(base, (("stavanger", "1103"), ("bergen", "4601"), ("porsgrunn", "4001")))
    region = Region(hubs, partners.keygen(base / "uis.key", "Universitetet i Stavanger", PASSPHRASE.encode()))
    try:
        for hub in hubs:
            region.air[hub.hub_id] = await offer_to_partner(hub, region.partner, AIR)
            number = hub.hub_dir.config().municipality
            values = STATIONS[number]
            for n in range(1 if values is None else len(values)):
                sensor = await enrol(hub, base, f"station-{n}", "air_quality", ["pm25"])
                await send(sensor, [senml.Reading("pm25", DAY + h * HOUR_MS, HOURLY[h] if values is None else values[n])
                                    for h in range(24)])
        for hub in (region.b, region.c):
            region.electricity[hub.hub_id] = await offer_to_partner(hub, region.partner, ELECTRICITY)
        yield region
    finally:
        for channel in region.channels.values():
            await channel.close()
        await stop_region(hubs)


# -- attack 4: the entry hub relays the partner's query for A only --------------------------
async def _relay_denials(target: ProcessHub, relay: ProcessHub) -> list[dict]:
    """The target's audit rows of relayed queries it refused because they did not ask it."""
    return [e for e in await audit_entries(target) if e["action"] == "query.partial" and e["outcome"] == "permission_denied"
            and e["detail"].endswith(f"relayed by {relay.hub_id}")]


async def test_a_query_relayed_by_the_entry_hub_to_hubs_it_did_not_ask_is_refused_and_charges_nothing(region):
    a = region.a
    electricity = dict(dataset="electricity", metric="energy", aggregate="sum", purpose_code="research", epsilon=1.0)
    # The partner's legitimate DP query to B and C first: the budget there is then not zero,
    # so "unchanged" below is measured against a ledger that does move.
    answer = await region.ask(hub_ids=[region.b.hub_id, region.c.hub_id], group_by="region", **electricity)
    assert [p.status for p in answer.provenance] == ["answered"] * 2
    operator = operator_identity(a)  # A's operator: the passphrase unlocks A's identity key
    tried = answered = 0
    for target in (region.b, region.c):
        for filters in (dict(hub_ids=[a.hub_id]), dict(municipalities=["1103"])):
            for fields in (dict(), electricity):
                spec = query(**filters, **fields)
                spec.answer_key = sealing.public_raw(sealing.new_answer_key())
                original = envelope.make(region.partner.key, region.partner.partner_id, a.hub_id, RUN_METHOD, query=spec)
                # The partner really sends it to A, which answers for itself (or, for
                # electricity, which A does not grant, refuses)...
                try:
                    await query_service_pb2_grpc.QueryStub(region.channel(a)).Run(original, timeout=20)
                except grpc.aio.AioRpcError as own:
                    assert fields and own.code() == grpc.StatusCode.PERMISSION_DENIED, own.details()
                agreement = (region.electricity if fields else region.air)[target.hub_id]
                charged_before, spent_before = queries_charged(target, agreement), await budget_spent(target, agreement)
                denials_before = await _relay_denials(target, a)
                # ...and A's operator relays the same signed bytes, signed over with A's key.
                relayed = envelope.make(operator.identity_key, a.hub_id, target.hub_id, PARTIAL_METHOD, relayed=original)
                tried += 1
                try:
                    await query_service_pb2_grpc.QueryStub(region.channel(target)).Partial(relayed, timeout=20)
                    answered += 1
                except grpc.aio.AioRpcError as refused:
                    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, refused.details()
                    assert f"relayed by {a.hub_id}" in refused.details(), refused.details()
                assert queries_charged(target, agreement) == charged_before, "the relayed query was charged to the quota"
                assert await budget_spent(target, agreement) == spent_before, "the relayed query spent privacy budget"
                denials = await _relay_denials(target, a)
                assert len(denials) == len(denials_before) + 1, denials  # this refusal is in the target's audit log
                assert denials[-1]["actor"] == region.partner.partner_id
    print(f"\nattack 4: {tried} queries for A only relayed by A's operator to B and C: {answered} answered, "
          "0 queries and 0 micro-epsilon charged there, each refusal in the audit log")
    assert (tried, answered) == (8, 0)


async def test_what_the_entry_hub_relays_for_an_allowed_query_is_ciphertext_it_cannot_open(region):
    a, b = region.a, region.b
    answer_key = sealing.new_answer_key()  # the partner's, for this one query
    spec = query(hub_ids=[a.hub_id, b.hub_id])
    spec.answer_key = sealing.public_raw(answer_key)
    original = envelope.make(region.partner.key, region.partner.partner_id, a.hub_id, RUN_METHOD, query=spec)
    operator = operator_identity(a)
    charged = queries_charged(b, region.air[b.hub_id])
    relayed = envelope.make(operator.identity_key, a.hub_id, b.hub_id, PARTIAL_METHOD, relayed=original)
    sealed = await query_service_pb2_grpc.QueryStub(region.channel(b)).Partial(relayed, timeout=20)
    assert queries_charged(b, region.air[b.hub_id]) == charged + 1  # an allowed relay is charged: the counter is live

    digest = partials.query_digest(original.payload)
    signed = query_pb2.SignedPartial.FromString(sealing.open_sealed(sealed.sealed, answer_key, digest, b.hub_id))
    partial = query_pb2.PartialResult.FromString(signed.partial)  # the partner opens it
    [cell] = partial.cells
    assert partial.provider_hub_id == b.hub_id and abs(cell.value - sum(HOURLY) / 24) < 1e-9
    guesses = [sealing.new_answer_key() for _ in range(3)]  # all A holds is keys of its own
    for guess in guesses:
        with pytest.raises(sealing.SealError):
            sealing.open_sealed(sealed.sealed, guess, digest, b.hub_id)
    assert signed.partial not in sealed.sealed and signed.signature not in sealed.sealed
    print(f"\nattack 4: A relayed an allowed query to B and holds {len(sealed.sealed)} bytes of ciphertext: "
          f"0 of {len(guesses)} keys of A's open it; the partner's answer key does")


async def test_the_entry_hub_can_neither_swap_in_its_own_answer_key_nor_ask_under_its_own_name(region):
    """A's operator's other two moves for reading B's figures in the clear: replace the answer
    key in the partner's signed query with one of A's (the partner's signature no longer
    covers the request), or ask B as A itself (A holds no agreement with B)."""
    a, b = region.a, region.b
    operator = operator_identity(a)
    own_key = sealing.new_answer_key()
    spec = query(hub_ids=[a.hub_id, b.hub_id])
    spec.answer_key = sealing.public_raw(sealing.new_answer_key())
    original = envelope.make(region.partner.key, region.partner.partner_id, a.hub_id, RUN_METHOD, query=spec)
    swapped_request = envelope.parse(original)
    swapped_request.query.answer_key = sealing.public_raw(own_key)
    swapped = type(original)(payload=swapped_request.SerializeToString(), signature=original.signature)
    as_itself = envelope.make(operator.identity_key, a.hub_id, a.hub_id, RUN_METHOD,
                              query=query(hub_ids=[b.hub_id], answer_key=sealing.public_raw(own_key)))
    charged = queries_charged(b, region.air[b.hub_id])
    outcomes = {}
    for move, inner, code in (("answer key swapped", swapped, grpc.StatusCode.UNAUTHENTICATED),
                              ("asked as A", as_itself, grpc.StatusCode.PERMISSION_DENIED)):
        relayed = envelope.make(operator.identity_key, a.hub_id, b.hub_id, PARTIAL_METHOD, relayed=inner)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await query_service_pb2_grpc.QueryStub(region.channel(b)).Partial(relayed, timeout=20)
        assert refused.value.code() == code, (move, refused.value.details())
        outcomes[move] = refused.value.code().name
    assert queries_charged(b, region.air[b.hub_id]) == charged
    print(f"\nattack 4: A's operator at B: {outcomes}; nothing charged, nothing released")


# -- attack 1: quantile sketches --------------------------------------------------------------
async def test_a_daily_quantile_of_a_one_station_municipality_releases_one_value_not_its_readings(region):
    answer = await region.ask(aggregate="quantile", quantile=0.5, hub_ids=[region.b.hub_id])
    [p] = answer.provenance
    partial = query_pb2.PartialResult.FromString(p.partial.partial)
    [cell] = partial.cells
    # The quantile is read from a sketch whose every bin mixes >= 2 contributors: one station
    # cannot be mixed, so not even the median leaves (tests/privacy/test_privacy_quantiles.py
    # shows a sweep over q recovers readings from a fine sketch's quantiles).
    assert cell == query_pb2.Cell(group=cell.group, bucket_start_ms=cell.bucket_start_ms, suppressed=True)
    assert answer.rows[0].suppressed
    released = {cell.value, *(r.value for r in answer.rows)} - {0.0}
    recovered = [v for v in HOURLY if any(abs(v - r) <= 0.01 * abs(v) for r in released)]
    print(f"\nattack 1: one daily median of one-station Bergen: {len(recovered)} of 24 hourly readings within 1 % "
          "(was 24 of 24; the cell is now withheld)")
    assert not recovered, f"recovered {len(recovered)} of 24 hourly readings"


async def test_a_region_wide_quantile_comes_from_bins_of_several_contributors(region):
    """A region-wide daily median over A (stations at 5 and 6) and C (7 and 8), and over B alone.
    Each released bin must mix two stations' readings, so no station's value is released to
    better than the bin; B's one station cannot be mixed, and is withheld."""
    a, c = region.a, region.c
    answer = await region.ask(aggregate="quantile", quantile=0.5, group_by="region", hub_ids=[a.hub_id, c.hub_id])
    alone = await region.ask(aggregate="quantile", quantile=0.5, group_by="region", hub_ids=[region.b.hub_id])
    [row] = answer.rows
    assert not row.suppressed and row.readings == 96
    singled_out = 0
    for p in answer.provenance:
        [cell] = query_pb2.PartialResult.FromString(p.partial.partial).cells
        [released] = cell.coarse.intervals
        count = released.count
        low = partials.ordinal_value(released.index << released.level)
        high = partials.ordinal_value(((released.index + 1) << released.level) - 1)
        stations = (5.0, 6.0) if p.hub_id == a.hub_id else (7.0, 8.0)
        assert all(low <= v <= high * 1.0202 for v in stations) and count == 48  # one bin covers both stations
        singled_out += sum(1 for v in stations if high <= v * 1.01 and low >= v / 1.01)
    true_median = 6.0  # sorted: 24 x 5, 24 x 6, 24 x 7, 24 x 8; rank 0.5 * 95 = 47.5 -> the 48th value
    error = abs(row.value - true_median) / true_median
    level = max(query_pb2.PartialResult.FromString(p.partial.partial).cells[0].coarse.intervals[0].level for p in answer.provenance)
    print(f"\nattack 1: region-wide median over A and C: {singled_out} of 4 stations pinned to 1 % by a released bin; "
          f"median error {error:.1%} (bound gamma^(2^{level}) - 1); Bergen alone: withheld")
    assert singled_out == 0
    assert error <= 1.0202 ** (1 << level) - 1, (row.value, error)  # the documented bound
    [withheld] = alone.rows
    assert withheld.suppressed


async def test_a_region_wide_quantile_of_two_days_carries_each_days_sketch(region):
    """Live, under a day's grain: a two-day window region-wide is a cell of two sub-cells, so
    each provider's cell carries its non-empty days' own sketches (here the one day with
    readings), padded for both days (sealing would fail otherwise), and the asker's value is
    the one day's, as asked alone."""
    a, c = region.a, region.c
    two_days = await region.ask(aggregate="quantile", quantile=0.5, group_by="region", bucket="window",
                                start_ms=DAY, end_ms=DAY + 48 * HOUR_MS, hub_ids=[a.hub_id, c.hub_id])
    one_day = await region.ask(aggregate="quantile", quantile=0.5, group_by="region", hub_ids=[a.hub_id, c.hub_id])
    spec = query(aggregate="quantile", quantile=0.5, group_by="region", bucket="window", start_ms=DAY, end_ms=DAY + 48 * HOUR_MS)
    for p in two_days.provenance:
        [cell] = query_pb2.PartialResult.FromString(p.partial.partial).cells
        assert list(cell.subcells) == [cell.coarse]
        padded = partials.padded_size(spec, p.hub_id, p.municipality, p.agreement_id, p.partial.provider_key_history, grain="day")
        assert padded > partials.padded_size(spec, p.hub_id, p.municipality, p.agreement_id, p.partial.provider_key_history)
        assert len(p.sealed_partial) == padded + 48  # padded for two days' sketches of 32 bins, whatever they hold
    assert [(r.value, r.readings) for r in two_days.rows] == [(r.value, r.readings) for r in one_day.rows]
    assert not two_days.rows[0].suppressed


# -- attack 7: answer files -------------------------------------------------------------------
def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path, value


def _edited(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if value is None:
        return 0.0
    return (value[:-1] + ("0" if value[-1:] != "0" else "1")) if value else "x"


def _without_latency(message: query_service_pb2.QueryAnswer) -> query_service_pb2.QueryAnswer:
    """The answer less the unsigned latencies. An edit of a latency's tag byte can turn it into
    an unknown field (a varint numbered 7): that too is an edit of the latency only."""
    copy = query_service_pb2.QueryAnswer()
    copy.CopyFrom(message)
    for p in copy.provenance:
        p.latency_ms = 0
    copy.DiscardUnknownFields()
    return copy


def _edits_that_verify(data: bytes, flip: slice | None = None) -> tuple[int, list, int, int]:
    """Every readable leaf edited, and every byte of the signed answer (or of its `flip` range)
    flipped, one at a time: (edits tried, JSON edits that still verify, byte flips that still
    verify, of which latency-only)."""
    doc = json.loads(data)
    tried, passed = 0, []
    for path, value in _leaves(doc):
        if path == ("answer",):
            continue
        copy = json.loads(data)
        target = copy
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = _edited(value)
        tried += 1
        try:
            answers.verify(json.dumps(copy).encode())
            passed.append(path)
        except answers.AnswerError:
            pass
    raw = base64.b64decode(doc["answer"])
    original = _without_latency(query_service_pb2.QueryAnswer.FromString(raw))
    flipped_ok = latency_only = 0
    for i in range(len(raw))[flip or slice(None)]:
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        tried += 1
        try:
            answers.verify(json.dumps(dict(doc, answer=base64.b64encode(bytes(flipped)).decode())).encode())
        except answers.AnswerError:
            continue
        flipped_ok += 1
        latency_only += _without_latency(query_service_pb2.QueryAnswer.FromString(bytes(flipped))) == original
    return tried, passed, flipped_ok, latency_only


async def test_every_one_byte_edit_of_an_answer_file_fails_verification_or_is_reported_unsigned(region, tmp_path):
    answered = await region.ask()
    assert [p.status for p in answered.provenance] == ["answered"] * 3
    # A has no electricity agreement with the partner: its own share is refused, and the
    # refusing hub's municipality, status and reason must be covered by a signature too.
    refused = await region.ask(dataset="electricity", metric="energy", aggregate="count", purpose_code="research",
                               group_by="region", epsilon=0.5)
    statuses = {p.hub_id: p.status for p in refused.provenance}
    assert statuses[region.a.hub_id] != "answered" and statuses[region.b.hub_id] == "answered", statuses
    # Every byte of the first answer; of the second, the bytes of the refusing hub's entry (the
    # rest is built as in the first, and flipping it all again would double the test's time).
    [denied] = [p for p in refused.provenance if p.status != "answered"]
    raw = refused.SerializeToString()
    entry = raw.index(denied.SerializeToString())
    for answer, flip in ((answered, None), (refused, slice(entry, entry + denied.ByteSize()))):
        data = answers.to_json(answer)
        answers.verify(data)
        assert base64.b64decode(json.loads(data)["answer"]) == answer.SerializeToString()
        tried, passed, flipped_ok, latency_only = _edits_that_verify(data, flip)
        print(f"\nattack 7: {tried} one-place edits of an answer file ({[p.status for p in answer.provenance]}): "
              f"{len(passed)} JSON edits verify (all under 'unsigned'), {flipped_ok} byte flips verify, "
              f"{latency_only} of them latency-only")
        assert all(p[0] == "unsigned" for p in passed), passed
        assert flipped_ok == latency_only, "a byte of a signed field was edited and the answer still verifies"
        assert flipped_ok <= 9 * len(answer.provenance)  # at most each latency: its tag byte and 8 bytes of double
        assert tried > 200

    # The documented command, on the saved file and on one with the refusing hub's municipality edited.
    saved = tmp_path / "answer.json"
    saved.write_bytes(answers.to_json(refused))
    shown = cli("query", "verify", saved, passphrase=None)
    assert shown.returncode == 0, shown.stderr
    assert f"hub {region.a.hub_id} (1103) {statuses[region.a.hub_id]}" in " ".join(shown.stdout.split())
    doc = json.loads(saved.read_bytes())
    [entry] = [p for p in doc["provenance"] if p["hub_id"] == region.a.hub_id]
    entry["municipality"] = "4601"
    saved.write_text(json.dumps(doc))
    edited = cli("query", "verify", saved, passphrase=None)
    assert edited.returncode != 0 and "does NOT verify" in " ".join((edited.stdout + edited.stderr).split())
