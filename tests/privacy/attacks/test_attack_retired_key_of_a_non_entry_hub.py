"""Attack (an entry hub that holds another hub's leaked, RETIRED identity key): forge that
hub's partial in a live answer to a partner, long after the hub rotated its key.

Tried: a region of Stavanger (the entry) and Bergen, a partner with an agreement at both.
After a routine rotation (K0 -> K1), Bergen's identity key K1 leaks (not the genesis key);
Bergen's admin rotates it on the running hub (K1 -> K2: `RotateIdentityKey`, docs/operations.md
"Compromise"). The partner asks a region-wide daily
mean through Stavanger. Stavanger, holding K1, replaces Bergen's genuine partial (signed by K2)
with one it writes itself, signed by K1 and carrying Bergen's genuine history (which contains
K1), seals it to the query's answer key, and re-signs the answer summary as itself. The
partner does what PartnerSession.ask does: open, verify and merge the answer
(asker.open_answer), then the online check of current keys (asker.check_current_keys with the
session's followed chains), with the partner's clock an hour after the rotation, far past
ROTATION_GRACE_MS.

A test that FAILS while the break exists (the forged value is accepted); it prints what the
partner merged. The hub's own admin asking (fanout.run_as_hub) follows every peer's chain and
would refuse K1; a partner follows only its entry hub (partner_client.PartnerSession._followed:
"the others are checked offline"), and offline any key of a history counts.
Suggested fix: federation/partner_client.py: the session follows the key history of every hub
whose partial it accepts (fetch each answering hub's descriptor, from that hub, pinned by its
hub id, bounded by FOLLOW_INTERVAL_S per hub, cached for the session), so check_current_keys
applies KeyChain.signs_now to every partial, not only the entry's; until then docs/operations.md
"Compromise" must say that partners accept a retired key in live answers relayed by another hub.
"""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
from attack_helpers import day_query, region, terms_toml

from federation import answers, partials, partner_client, sealing
from federation.known_hubs import KnownHubs
from federation.partner_client import PartnerSession
from federation.query import asker
from node.api.v1 import admin_pb2, envelope_pb2, query_pb2, query_service_pb2
from node.keychain import ROTATION_GRACE_MS
from node.signing import Domain, sign

pytestmark = pytest.mark.asyncio(loop_scope="module")
TOWNS = (("stavanger", "1103"), ("bergen", "4601"))
STATIONS = [[10.0 + h for h in range(24)], [20.0 + h for h in range(24)]]
FORGED_SUM = 12_345.0


def forge(answer: query_service_pb2.QueryAnswer, genuine: query_service_pb2.QueryAnswer, entry, victim, leaked,
          history: list[bytes]) -> None:
    """The entry hub's forgery, in `answer` as it arrived: `victim`'s partial (as `genuine`, the
    opened answer, shows it) with FORGED_SUM, signed with the retired key `leaked` and carrying
    the victim's genuine `history`, sealed to the query's answer key; the entry re-signs."""
    asked = envelope_pb2.Request.FromString(answer.query.payload).query
    digest = partials.query_digest(answer.query.payload)
    [honest] = [p for p in genuine.provenance if p.hub_id == victim.id]
    forged = query_pb2.PartialResult.FromString(honest.partial.partial)
    for cell in forged.cells:
        cell.sum = FORGED_SUM
    payload = forged.SerializeToString()
    signed = query_pb2.SignedPartial(partial=payload, signature=sign(leaked.identity_key, Domain.PARTIAL_RESULT, payload),
                                     provider_public_key=leaked.public_key_raw, provider_key_history=history)
    size = partials.padded_size(asked, victim.id, victim.municipality, forged.agreement_id, history)
    [slot] = [p for p in answer.provenance if p.hub_id == victim.id]
    slot.sealed_partial = sealing.seal(signed.SerializeToString(), asked.answer_key, digest, victim.id, size)
    partials.sign_answer(entry.live.hub.identity, answer, digest, entry.live.hub.clock.now_ms())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    terms = terms_toml(aggregates=["mean", "count", "sum"], min_group_size=2)
    async with region(tmp_path_factory.mktemp("retired"), terms, {0: STATIONS, 1: STATIONS}, towns=TOWNS) as r:
        yield r


async def test_a_partner_accepts_a_partial_signed_by_a_retired_key_relayed_by_another_hub(attacked):
    r = attacked
    entry, bergen = r.hubs
    # A first, routine rotation (K0 -> K1): the key that leaks is NOT the genesis key (a leaked
    # genesis key loses the identity, docs/operations.md; a later one must not).
    await bergen.admin("RotateIdentityKey", admin_pb2.RotateIdentityKeyRequest())
    leaked = bergen.live.hub.identity  # K1, as the thief holds it
    done = await bergen.admin("RotateIdentityKey", admin_pb2.RotateIdentityKeyRequest())
    assert done.new_public_key != leaked.public_key_raw
    rotated_at = bergen.live.hub.clock.now_ms()

    query = day_query(aggregate="sum", group_by="region")
    answer, answer_key = await r.ask_sealed(entry, query)
    genuine = r.open(answer, answer_key)  # only to read the agreement id and check the honest run
    [honest] = [p for p in genuine.provenance if p.hub_id == bergen.id]
    assert honest.partial.provider_public_key == done.new_public_key

    forge(answer, genuine, entry, bergen, leaked, list(done.key_history))
    an_hour_later = rotated_at + max(3_600_000, 10 * ROTATION_GRACE_MS)
    async with PartnerSession(r.partner, entry.address, entry.id) as session:
        try:
            opened = r.open(answer, answer_key)
            await asker.check_current_keys(opened, session._followed, lambda _: session._follow_refusing(), an_hour_later)
        except asker.AnswerRefused as refused:
            print(f"held: the forged partial (Bergen's retired key, relayed by {entry.municipality}) was refused: {refused}")
            return
    [row] = opened.rows
    print(f"partner merged a region-wide sum of {row.value} (genuine {genuine.rows[0].value}); "
          f"Bergen's part signed by its retired key an hour after the rotation")
    pytest.fail(f"BROKE: the partner accepted Bergen's partial signed by its retired (leaked) key, relayed by the entry hub "
                f"{entry.municipality}, {an_hour_later - rotated_at} ms after the rotation: merged sum {row.value}, "
                f"genuine {genuine.rows[0].value}")


async def test_a_hub_not_followed_online_is_marked_so_and_a_key_it_is_known_to_have_retired_is_refused(
        attacked, tmp_path, monkeypatch):
    """After the attack above: the partner's session follows Bergen from its own address and
    remembers its history (the known-hubs file); when Bergen cannot be followed (no time left),
    the answer's provenance says "key not checked online", and a partial signed by a key the
    remembered history retired is refused all the same."""
    r = attacked
    entry, bergen = r.hubs
    known_file = tmp_path / "partner.key.known-hubs.json"
    leaked = bergen.live.hub.identity
    done = await bergen.admin("RotateIdentityKey", admin_pb2.RotateIdentityKeyRequest())
    query = day_query(aggregate="sum", group_by="region")
    async with PartnerSession(r.partner, entry.address, entry.id, known_hubs=KnownHubs(known_file)) as session:
        answer = await session.ask(query)
    assert {p.hub_id: p.key_check for p in answer.provenance} == {h.id: partner_client.CHECKED_ONLINE for h in r.hubs}
    remembered = KnownHubs(known_file).get(bergen.id)
    assert remembered is not None and remembered.current == done.new_public_key
    # The answer file carries the key checks apart, as unsigned, and `query verify` holds them to the answer's.
    saved = json.loads(answers.to_json(answer))
    assert saved["unsigned"]["key_check"] == {h.id: partner_client.CHECKED_ONLINE for h in r.hubs}
    answers.verify(json.dumps(saved).encode())
    saved["unsigned"]["key_check"][bergen.id] = "made up"
    with pytest.raises(answers.AnswerError, match="key checks differ"):
        answers.verify(json.dumps(saved).encode())

    monkeypatch.setattr(partner_client, "PEER_FOLLOW_BUDGET_S", 0.0)  # no time to follow any other hub
    async with PartnerSession(r.partner, entry.address, entry.id, known_hubs=KnownHubs(known_file)) as session:
        answer = await session.ask(query)
        [marked] = [p for p in answer.provenance if p.hub_id == bergen.id]
        assert marked.key_check.startswith(partner_client.NOT_CHECKED_ONLINE), marked.key_check
        print("provenance:", marked.key_check)
        sealed, answer_key = await r.ask_sealed(entry, query)
        forge(sealed, r.open(sealed, answer_key), entry, bergen, leaked, list(done.key_history))
        with pytest.raises(asker.AnswerRefused, match=r"remembered in .*known-hubs\.json"):
            session._check_remembered(r.open(sealed, answer_key), bergen.live.hub.clock.now_ms() + 3_600_000)


async def test_a_session_follows_every_answering_hub_at_once_and_remembers_each(tmp_path):
    """Three hubs, two of them followed at once from their own addresses (one region catalog
    shared by both): each is checked online, and each history lands in the known-hubs file."""
    terms = terms_toml(aggregates=["mean", "count", "sum"], min_group_size=2)
    async with region(tmp_path / "three", terms, {0: STATIONS, 1: STATIONS, 2: STATIONS}) as r:
        entry = r.hubs[0]
        await r.hubs[2].admin("RotateIdentityKey", admin_pb2.RotateIdentityKeyRequest())
        known_file = tmp_path / "partner.key.known-hubs.json"
        async with PartnerSession(r.partner, entry.address, entry.id, known_hubs=KnownHubs(known_file)) as session:
            answer = await session.ask(day_query(aggregate="sum", group_by="municipality"))
        assert {p.hub_id: p.key_check for p in answer.provenance} == {h.id: partner_client.CHECKED_ONLINE for h in r.hubs}
        remembered = KnownHubs(known_file)
        chains = {h.id: remembered.get(h.id) for h in r.hubs}
        assert {i: len(c.statements) if c else None for i, c in chains.items()} == {r.hubs[0].id: 0, r.hubs[1].id: 0,
                                                                                     r.hubs[2].id: 1}
