"""Helpers for the federated-query tests against real in-process hubs (grpc.aio servers with
pinned TLS, SQLite): peered hubs, agreements negotiated through the admin API, readings
delivered as sealed frames, queries asked through the admin API or signed by hand, and the
provider's audit log."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import tomli_w
from conftest import LiveHub, make_hub_dir, start_live_hub
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import envelope, partials, peers, sealing
from federation.query import asker
from federation.query_service import PARTIAL_METHOD, RUN_METHOD
from node import senml
from node.api.v1 import (
    admin_pb2,
    agreement_pb2,
    envelope_pb2,
    federation_pb2,
    federation_pb2_grpc,
    ingest_pb2,
    query_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
)
from node.app.sensor_client import Sensor

State = agreement_pb2.AgreementState
UTC = dt.UTC
HOUR_MS, DAY_MS = 3_600_000, 86_400_000


def ms(*args) -> int:
    """UNIX ms of a UTC date-time: ms(2019, 1, 1)."""
    return int(dt.datetime(*args, tzinfo=UTC).timestamp() * 1000)


@dataclass
class Node:
    """A live hub seen from outside: admin calls, its Federation and Query services as a peer
    dials them, its storage and audit log."""

    live: LiveHub
    channel: grpc.aio.Channel  # pinned to the hub's certificate, as a peer or partner opens it

    @property
    def id(self) -> str:
        return self.live.hub.config.hub_id

    @property
    def municipality(self) -> str:
        return self.live.hub.config.municipality

    @property
    def key(self) -> Ed25519PrivateKey:
        return self.live.hub.identity.identity_key

    @property
    def address(self) -> str:
        return self.live.hub.endpoint.grpc_address

    @property
    def query(self) -> query_service_pb2_grpc.QueryStub:
        return query_service_pb2_grpc.QueryStub(self.channel)

    async def admin(self, method: str, request, timeout: float = 20):
        return await getattr(self.live.admin, method)(request, metadata=self.live.admin_metadata, timeout=timeout)

    @property
    def party(self) -> agreement_pb2.Party:
        return self.live.running.federation.own_party()

    async def exchange(self, signed: envelope_pb2.SignedRequest) -> federation_pb2.ExchangeAgreementsResponse:
        return await federation_pb2_grpc.FederationStub(self.channel).ExchangeAgreements(signed, timeout=10)

    async def view(self, agreement_id: str) -> admin_pb2.AgreementView:
        return await self.admin("GetAgreement", admin_pb2.AgreementRef(agreement_id=agreement_id))

    async def stored(self) -> dict[str, bytes]:
        """Every agreement the hub holds: id -> the stored evidence document."""
        rows = await self.live.hub.storage.read(lambda s: s.list_agreements())
        return {r.agreement_id: r.document for r in rows}

    async def run_query(self, spec: query_pb2.QuerySpec) -> query_service_pb2.QueryAnswer:
        """The hub's admin asks (RunQuery): the hub signs the query as itself and fans it out."""
        return await self.admin("RunQuery", spec)

    async def state_of(self, agreement_id: str) -> int | None:
        try:
            return (await self.admin("GetAgreement", admin_pb2.AgreementRef(agreement_id=agreement_id))).state
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None

    async def audit_seq(self) -> int:
        rows = await self.live.hub.storage.read(lambda s: s.audit_rows(newest_first=True, limit=1))
        return rows[0].seq if rows else 0

    async def audit_after(self, seq: int) -> list[dict]:
        await self.live.running.federation.refusals.flush()  # authentication refusals are counted per minute
        return [json.loads(r.entry) for r in await self.live.hub.storage.read(lambda s: s.audit_rows(after_seq=seq))]

    async def requests_from(self, caller_id: str) -> int:
        """Signed requests this hub has accepted from `caller_id` (its replay-protection record):
        whether a hub was called at all, as the hub itself saw it."""
        return await self.live.hub.storage.read(
            lambda s: s.conn.execute("SELECT count(*) FROM seen_nonces WHERE caller_id = ?", (caller_id,)).fetchone()[0])

    async def pending(self) -> dict:
        return await self.live.hub.storage.read(lambda s: s.pending_deliveries())


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        await asyncio.sleep(0.05)


async def start_nodes(base, towns: tuple[tuple[str, str], ...]) -> list[Node]:
    """Live hubs, every one pinned as a peer at every other (admin AddPeer, both ways)."""
    nodes = []
    for name, number in towns:
        live = await start_live_hub(make_hub_dir(base / name, number))
        hub = live.hub
        nodes.append(Node(live, peers.channel_to(hub.endpoint.grpc_address, hub.config.hub_id, hub.identity.tls_cert_pem)))
    for a, b in itertools.permutations(nodes, 2):
        await a.admin("AddPeer", admin_pb2.AddPeerRequest(address=b.address, hub_id=b.id))
    await settle(nodes)
    return nodes


async def stop_nodes(nodes: list[Node]) -> None:
    for node in nodes:
        await node.channel.close()
        await node.live.stop()


async def settle(nodes: list[Node]) -> None:
    async def quiet() -> bool:
        return not any([await n.pending() for n in nodes])

    await eventually(quiet, what="agreement deliveries to finish")


# -- agreements -----------------------------------------------------------------------------------

def terms_toml(purpose: str = "environmental_monitoring", until: dt.datetime | None = None, **data) -> str:
    """Terms as an admin writes them; `data` overrides the [data] table."""
    doc = {
        "purpose": {"code": purpose, "description": "Test terms for federated queries"},
        "data": {"datasets": ["air_quality"], "metrics": ["pm25"], "aggregates": ["mean", "count"],
                 "group_by": ["municipality", "time_bucket"], "smallest_bucket": "day", "longest_window_days": 31,
                 "min_group_size": 1, "queries_per_day": 10_000, **data},
        "validity": {"from": "now", "until": until or dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(days=365)},
    }
    return tomli_w.dumps(doc)


async def agree(provider: Node, consumer: Node, terms: str) -> str:
    """Provider proposes (admin ProposeAgreement), consumer accepts once it holds the proposal
    (admin AcceptAgreement); returns when the provider holds the agreement as active."""
    proposal = await provider.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=terms, to=consumer.id))
    aid = proposal.terms.agreement_id

    async def held_by_consumer() -> bool:
        return await consumer.state_of(aid) == State.AGREEMENT_STATE_PROPOSED

    await eventually(held_by_consumer, what=f"{aid} to reach the consumer")
    await consumer.admin("AcceptAgreement", admin_pb2.AgreementRef(agreement_id=aid))
    await eventually(lambda: state_is(provider, aid, State.AGREEMENT_STATE_ACTIVE), what=f"{aid} active at the provider")
    return aid


async def state_is(node: Node, agreement_id: str, state: int) -> bool:
    return await node.state_of(agreement_id) == state


# -- readings -------------------------------------------------------------------------------------

async def add_sensor(node: Node, tmp_path, name: str, dataset: str, metrics: list[str]) -> Sensor:
    return await node.live.add_sensor(tmp_path, name=name, dataset=dataset, metrics=metrics)


async def deliver(node: Node, sensor: Sensor, readings: list[senml.Reading], per_frame: int = 200) -> None:
    """Seal the readings as the sensor and submit them in one batch; all must be stored."""
    batches = [readings[i:i + per_frame] for i in range(0, len(readings), per_frame)]
    sealed = sensor.seal(batches)
    response = await node.live.ingest.SubmitBatch(ingest_pb2.SubmitBatchRequest(frames=[ingest_pb2.SealedFrame(frame=f) for f in sealed]),
                                                  timeout=30)
    assert sum(r.readings_stored for r in response.receipts) == len(readings)


# -- queries --------------------------------------------------------------------------------------

def spec(**fields) -> query_pb2.QuerySpec:
    base = dict(dataset="air_quality", metric="pm25", aggregate="mean", bucket="day", group_by="region",
                start_ms=ms(2019, 1, 1), end_ms=ms(2019, 1, 8), purpose_code="environmental_monitoring",
                answer_key=sealing.public_raw(ANSWER_KEY))
    return query_pb2.QuerySpec(**{**base, **fields})


ANSWER_KEY = sealing.new_answer_key()  # the asker's answer key of every query made with spec()


def opened(answer, asker_public_key: bytes):
    """A Query.Run answer as the asker sees it: sealed partials opened and verified, rows merged."""
    return asker.open_answer(answer, ANSWER_KEY, asker_public_key)


def open_partial(sealed_partial, provider_id: str, original) -> query_pb2.PartialResult:
    """What a provider's Query.Partial response holds, opened with the asker's key."""
    plain = sealing.open_sealed(sealed_partial.sealed, ANSWER_KEY, partials.query_digest(original.payload), provider_id)
    return query_pb2.PartialResult.FromString(query_pb2.SignedPartial.FromString(plain).partial)


def signed(key: Ed25519PrivateKey, caller_id: str, audience: str, method: str = RUN_METHOD, **body) -> envelope_pb2.SignedRequest:
    return envelope.make(key, caller_id, audience, method, **body)


def asked(key: Ed25519PrivateKey, caller_id: str, entry: Node, query: query_pb2.QuerySpec) -> envelope_pb2.SignedRequest:
    """A query as its asker signs it for the entry hub (Query.Run)."""
    return signed(key, caller_id, entry.id, RUN_METHOD, query=query)


def relay(relaying: Node, provider: Node, original: envelope_pb2.SignedRequest) -> envelope_pb2.SignedRequest:
    """What `relaying` sends `provider` on Query.Partial: the asker's signed request, unchanged,
    wrapped in the relaying hub's own signed request."""
    return signed(relaying.key, relaying.id, provider.id, PARTIAL_METHOD, relayed=original)


async def refused(call: Callable[[], Awaitable], code: grpc.StatusCode, *fragments: str) -> str:
    """The call fails with `code`, and its details contain every fragment; returns the details."""
    try:
        await call()
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == code, f"{exc.code()}: {exc.details()}"
        for fragment in fragments:
            assert fragment in exc.details(), f"{fragment!r} not in {exc.details()!r}"
        return exc.details()
    raise AssertionError(f"expected {code.name}, but the call succeeded")


def audited(entries: list[dict], *, actor: str, action: str, outcome: str, detail: str = "") -> bool:
    """An entry of its own, or (refused before authentication) a count in an "auth.refused" entry."""
    wanted = {"actor": actor, "action": action, "outcome": outcome}
    counted = f" x {action} {outcome} (first {actor}: "
    return any((wanted.items() <= e.items() or (e["action"] == "auth.refused" and counted in e["detail"])) and detail in e["detail"]
               for e in entries)
