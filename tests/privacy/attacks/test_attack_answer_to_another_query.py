"""Attack (entry hub): answer the partner's new question with its answer to an older one.

Tried: the partner first asks hub A for 2019-01-01 and gets an answer (Q1). Later it asks for
2019-01-02 (Q2) through the hub's own partner code (`asker.ask`, what `smartregion query run`
uses). A dishonest entry hub (a server with A's identity and certificate, so it passes the
pin) returns Q1's answer instead, with every hub turned into "timed_out" (no sealed partial
to open) and its summary signed again by A.

RESULT: BROKE (integrity, not confidentiality). asker.ask accepts it: the partner is shown an
answer whose signed query is Q1 (2019-01-01) for its question about 2019-01-02, and saves it
as such. The documented clients (examples/python_partner.py, examples/node-partner) refuse it:
they compare the echoed query with the one they sent. With answered partials the swap fails
(they do not open with Q2's answer key): test_attack_answer_file_replay_and_mix.
Smallest fix: federation/query/asker.py ask: refuse an answer whose `query.payload` is not
the request just signed (as both example clients do).
FIXED (askerfix): asker.ask refuses an answer whose signed query is not the request it sent.
"""

from __future__ import annotations

import time

import grpc
import pytest
import pytest_asyncio
from attack_helpers import DAY, HOUR_MS, day_query, region, terms_toml

from federation import envelope, partials, peers
from federation.partner_client import PartnerSession
from federation.query import asker
from node.api.v1 import federation_pb2_grpc, query_service_pb2, query_service_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")


class StaleEntryHub(query_service_pb2_grpc.QueryServicer):
    def __init__(self, entry) -> None:
        self.entry = entry
        self.old: query_service_pb2.QueryAnswer | None = None

    async def Run(self, request, context):
        assert self.old is not None
        stale = query_service_pb2.QueryAnswer()
        stale.CopyFrom(self.old)
        for p in stale.provenance:
            p.status, p.reason, p.sealed_partial, p.agreement_id = "timed_out", "missed the deadline", b"", ""
        stale.partial, stale.missing_hubs[:] = True, [p.hub_id for p in stale.provenance]
        partials.sign_answer(self.entry.live.hub.identity, stale, partials.query_digest(stale.query.payload), int(time.time() * 1000))
        return stale


class RealDescriptor(federation_pb2_grpc.FederationServicer):
    """The dishonest entry hub hands out A's genuine signed descriptor (a client pins by it)."""

    def __init__(self, entry) -> None:
        self.entry = entry

    async def GetDescriptor(self, request, context):
        identity = self.entry.live.hub.identity
        async with peers.channel_to(self.entry.address, self.entry.id, identity.tls_cert_pem) as channel:
            return await federation_pb2_grpc.FederationStub(channel).GetDescriptor(request, timeout=10)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    async with region(tmp_path_factory.mktemp("stale"), terms_toml(), {0: [[5.0] * 48]}, towns=(("stavanger", "1103"),)) as r:
        [a] = r.hubs
        stale = StaleEntryHub(a)
        server = grpc.aio.server()
        query_service_pb2_grpc.add_QueryServicer_to_server(stale, server)
        federation_pb2_grpc.add_FederationServicer_to_server(RealDescriptor(a), server)
        identity = a.live.hub.identity
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(identity.tls_key_pem, identity.tls_cert_pem)]))
        await server.start()
        try:
            yield r, stale, f"127.0.0.1:{port}"
        finally:
            await server.stop(0)


async def test_an_answer_to_another_query_is_refused(attacked):
    r, stale, address = attacked
    [a] = r.hubs
    stale.old, _key = await r.ask_sealed(a, day_query(bucket="window"))  # Q1, honestly answered by A
    q2 = day_query(bucket="window", start_ms=DAY + 24 * HOUR_MS, end_ms=DAY + 48 * HOUR_MS)
    async with PartnerSession(r.partner, address, a.id) as session:
        try:
            shown = await asker.ask(session.channel, r.partner.key, r.partner.partner_id, a.id, q2)
        except asker.AnswerRefused:
            return
    signed_window = envelope.parse(shown.query).query.start_ms
    raise AssertionError(f"accepted an answer to the query for {signed_window} (asked: {q2.start_ms})")
