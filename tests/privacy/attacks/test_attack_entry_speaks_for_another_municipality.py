"""Attack (a neighbour hub as entry hub): claim another municipality in a partner's answer.

Tried: the partner asks Porsgrunn's hub C (its entry hub) for the daily mean per municipality,
region-wide. C's operator drops Stavanger's (A's) sealed partial, and puts in its place a
partial C signs with its own key under its own agreement with the partner, but naming
municipality 1103 (Stavanger) with a made-up mean of 99; C lists itself in the provenance as
municipality 1103, seals the partial to the partner's answer key and signs the summary again.
A provider relayed through an honest entry hub cannot do this (check_cells compares the
partial's municipality with the entry hub's peer record: test_the_provider_alone_cannot...).

RESULT: BROKE. The partner's CLI accepts the answer and shows Stavanger's mean as 99.0 (true
5.0); `query verify` accepts the saved file.
FIXED (askerfix): every answered provenance entry carries the co-signed agreement the
provider answered under (SealedPartial.agreement, relayed by the entry hub, its digest in the
signed summary); the asker, `query verify` and both example clients require the partial's
municipality to be that agreement's provider party's kommunenummer (Party.municipality).
Refused with no agreement attached, and with C's own genuine agreement attached (it names
4001); the example clients refuse the same forgery from a server holding C's identity. Nothing the asker holds ties a hub id to its
municipality: the provenance's municipality is the entry hub's word, and here the entry hub
is the liar.
Smallest fix: federation/query/asker.py _checked: check `partial.municipality` against a
binding the asker holds independently of the entry hub: the agreement the partial names is
co-signed by the asker, and its provider Party carries the hub id and the municipality's name
(federation/service.py own_party); require that agreement's provider to be the partial's hub
and `register.lookup(partial.municipality).name` to be its party name (better: add the
kommunenummer to Party). The example clients need the same check.
"""

from __future__ import annotations

import sys

import grpc
import pytest
import pytest_asyncio
from attack_helpers import DAY, day_query, region, resign, terms_toml

from federation import answers, envelope, partials, partners, sealing
from federation.query import asker
from node.api.v1 import query_pb2, query_service_pb2_grpc
from tests.conftest import PASSPHRASE
from tests.test_partner_clients import PYTHON_EXAMPLE, node_client, run_client  # noqa: F401 (node_client: a fixture)

pytestmark = pytest.mark.asyncio(loop_scope="module")


class ClaimingEntryHub(query_service_pb2_grpc.QueryServicer):
    """Query.Run under hub C's identity: asks the real C, then replaces Stavanger's partial by one
    C signs naming 1103 (mean 99), with C's own genuine co-signed agreement attached."""

    def __init__(self, liar, victim) -> None:
        self.liar, self.victim, self.agreement_id = liar, victim, ""

    async def Run(self, request, context):
        sealed = await self.liar.query.Run(request, timeout=15)
        digest = partials.query_digest(sealed.query.payload)
        answer_key = envelope.parse(sealed.query).query.answer_key  # the answer key is in the signed query
        lie = _forged_partial(self.liar, self.agreement_id, self.victim.municipality, digest, answer_key)
        return resign(self.liar, _claiming(sealed, self.liar, self.agreement_id, self.victim.municipality, lie, keep_agreement=True))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    base = tmp_path_factory.mktemp("claims")
    key_file = base / "partner" / "angriper.key"
    key_file.parent.mkdir()
    partner = partners.keygen(key_file, "Angriper AS", PASSPHRASE.encode())
    async with region(base, terms_toml(aggregates=["mean", "count"]),
                      {0: [[5.0] * 24], 1: [[50.0] * 24], 2: [[7.0] * 24]}, partner=partner) as r:
        a, _b, c = r.hubs
        claiming = ClaimingEntryHub(c, a)
        claiming.agreement_id = r.agreements[c.id]
        server = grpc.aio.server()
        query_service_pb2_grpc.add_QueryServicer_to_server(claiming, server)
        identity = c.live.hub.identity
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(identity.tls_key_pem, identity.tls_cert_pem)]))
        await server.start()
        r.key_file, r.claiming_address = key_file, f"127.0.0.1:{port}"
        try:
            yield r
        finally:
            await server.stop(0)


def _forged_partial(liar, agreement_id: str, municipality: str, digest: bytes, answer_key: bytes) -> bytes:
    result = query_pb2.PartialResult(
        query_digest=digest, provider_hub_id=liar.id, municipality=municipality, agreement_id=agreement_id,
        computed_at_ms=liar.live.hub.clock.now_ms(), min_group_size=1,
        cells=[query_pb2.Cell(group=municipality, bucket_start_ms=DAY, count=24, value=99.0, contributors=1)])
    signed = partials.sign_partial(liar.live.hub.identity, result).SerializeToString()
    return sealing.seal(signed, answer_key, digest, liar.id, len(signed) + 1)  # padded to its own length: the size is not the point


def _claiming(sealed, liar, agreement_id: str, victim_municipality: str, forged_partial: bytes, keep_agreement: bool = False):
    """`keep_agreement`: attach the liar's own genuine co-signed agreement (it names the liar's municipality)."""
    forged = type(sealed)()
    forged.CopyFrom(sealed)
    [own] = [p.agreement for p in forged.provenance if p.hub_id == liar.id]
    kept = [p for p in forged.provenance if p.municipality not in (victim_municipality, liar.municipality)]
    del forged.provenance[:]
    forged.provenance.extend(kept)
    forged.provenance.add(hub_id=liar.id, municipality=victim_municipality, status="answered",
                          agreement_id=agreement_id, sealed_partial=forged_partial, agreement=own if keep_agreement else b"")
    return forged


@pytest.mark.parametrize("keep_agreement", [False, True], ids=["no agreement", "its own genuine agreement"])
async def test_an_entry_hub_cannot_answer_for_another_municipality(attacked, keep_agreement):
    a, _b, c = attacked.hubs
    sealed, key = await attacked.ask_sealed(c, day_query(bucket="window", group_by="municipality"))
    honest = attacked.open(sealed, key)
    assert {r.group: r.value for r in honest.rows} == {"1103": 5.0, "4601": 50.0, "4001": 7.0}

    digest = partials.query_digest(sealed.query.payload)
    aid = attacked.agreements[c.id]
    lie = _forged_partial(c, aid, a.municipality, digest, sealing.public_raw(key))  # the answer key is in the signed query
    forged = resign(c, _claiming(sealed, c, aid, a.municipality, lie, keep_agreement))
    try:
        opened = attacked.open(forged, key)
        answers.verify(answers.to_json(opened))
    except (asker.AnswerRefused, answers.AnswerError):
        return
    shown = {r.group: r.value for r in opened.rows}
    raise AssertionError(f"accepted: Stavanger (1103) shown as {shown['1103']:g} by hub {c.id} (true 5.0); rows {shown}")


async def test_the_provider_alone_cannot_speak_for_another_municipality(attacked):
    """Through an honest entry hub A, C's partial naming 1103 is refused: A's peer record says 4001."""
    a, _b, c = attacked.hubs
    sealed, key = await attacked.ask_sealed(a, day_query(bucket="window", group_by="municipality"))
    digest = partials.query_digest(sealed.query.payload)
    forged = type(sealed)()
    forged.CopyFrom(sealed)
    [mine] = [p for p in forged.provenance if p.hub_id == c.id]
    mine.sealed_partial = _forged_partial(c, attacked.agreements[c.id], a.municipality, digest, sealing.public_raw(key))
    forged = resign(a, forged)  # even with the summary signed again over C's new ciphertext
    with pytest.raises(asker.AnswerRefused, match="speaks for municipality 1103, not 4001"):
        attacked.open(forged, key)


def _client_args(r) -> list[str]:
    _a, _b, c = r.hubs
    return ["--key", str(r.key_file), "--hub", r.claiming_address, "--hub-id", c.id, "--dataset", "air_quality",
            "--metric", "pm25", "--aggregate", "mean", "--from", "2019-01-01", "--to", "2019-01-02",
            "--purpose", "environmental_monitoring", "--group-by", "municipality"]


async def _client_refuses(client: list[str], r) -> None:
    rc, out, err = await run_client(*client, *_client_args(r))
    assert rc == 1 and "speaks for municipality 1103" in err, f"accepted (exit {rc}): {out[:400]} {err[:400]}"


async def test_the_python_example_refuses_a_partial_under_another_municipality(attacked):
    await _client_refuses([sys.executable, str(PYTHON_EXAMPLE)], attacked)


async def test_the_node_client_refuses_a_partial_under_another_municipality(node_client, attacked):  # noqa: F811 (the fixture)
    await _client_refuses(node_client, attacked)


async def test_bytes_added_to_a_relayed_agreement_fail_verification(attacked):
    """The relayed agreement verifies by its own signatures, but bytes appended to it (an
    unknown protobuf field the signatures do not cover) change the file: the entry hub's signed
    summary carries the agreement's digest, so `query verify` refuses the edit."""
    a, _b, _c = attacked.hubs
    honest = attacked.open(*await attacked.ask_sealed(a, day_query(bucket="window", group_by="municipality")))
    answers.verify(answers.to_json(honest))
    edited = type(honest)()
    edited.CopyFrom(honest)
    edited.provenance[0].agreement += b"\xf8\x06\x01"  # field 111, varint 1: parses, and is ignored
    with pytest.raises(answers.AnswerError, match="differs from what the entry hub signed"):
        answers.verify(answers.to_json(edited))
