"""One authentication path: every method of every service, enumerated from the proto
descriptors, refuses an unauthenticated call with UNAUTHENTICATED, against a real hub; and
refusals of unauthenticated callers are counted per source and minute, not written one by one."""

from __future__ import annotations

import asyncio
import json
import secrets

import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.descriptor import MethodDescriptor

from federation import envelope, partners
from node import frames, identity
from node.api.v1 import admin_pb2, envelope_pb2, federation_pb2, ingest_pb2, query_service_pb2
from node.app.servicers.authenticated import add_service
from node.app.servicers.federation import FederationServicer
from node.audit import REFUSAL_SOURCES_PER_MINUTE, RefusalTally
from node.clock import SYSTEM_CLOCK, ManualClock
from node.signing import hub_id_from_public_key
from tests.conftest import LiveHub, make_hub_dir, start_live_hub

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVICES = [module.DESCRIPTOR.services_by_name[name] for module, name in (
    (ingest_pb2, "Ingest"), (admin_pb2, "Admin"), (federation_pb2, "Federation"), (query_service_pb2, "Query"))]
# Signed descriptors are public: how others learn who a hub is and what it offers.
PUBLIC = {"/smartregion.v1.Federation/GetDescriptor", "/smartregion.v1.Federation/RegionCatalog"}
METHODS = [(f"/{s.full_name}/{m.name}", m) for s in SERVICES for m in s.methods]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory):
    """A hub with one registered partner (whose key the bad-signature call pretends to hold)."""
    clock = ManualClock(SYSTEM_CLOCK.now_ms())
    live = await start_live_hub(make_hub_dir(tmp_path_factory.mktemp("auth") / "hub"), clock=clock)
    key = partners.PartnerKey(Ed25519PrivateKey.generate(), "partner")
    await live.admin.AddPartner(admin_pb2.AddPartnerRequest(name="partner", org_number="971564679",
                                public_key_file=partners.public_document(key)), metadata=live.admin_metadata)
    live.partner_id = key.partner_id  # type: ignore[attr-defined]
    yield live
    await live.stop()


async def call_raw(live: LiveHub, path: str, method: MethodDescriptor, body: bytes, metadata=()) -> grpc.StatusCode:
    """Call any method with raw request bytes; the status code it ends with."""
    identity_bytes = lambda b: b  # noqa: E731
    try:
        if method.client_streaming:
            stub = live.channel.stream_unary(path, request_serializer=identity_bytes, response_deserializer=identity_bytes)
            await stub(iter([body]), metadata=metadata, timeout=10)
        else:
            stub = live.channel.unary_unary(path, request_serializer=identity_bytes, response_deserializer=identity_bytes)
            await stub(body, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def envelope_calls(live: LiveHub, path: str) -> dict[str, bytes]:
    """Unauthenticated SignedRequests for an envelope-authenticated method."""
    stranger = Ed25519PrivateKey.generate()
    stranger_id = hub_id_from_public_key(identity.raw_public(stranger.public_key()))
    own = live.hub.config.hub_id
    forged = envelope.make(stranger, live.partner_id, own, path)  # type: ignore[attr-defined]
    return {
        "missing envelope": b"",
        "garbage": b"\xff\xfe not a protobuf message",
        "garbage payload": envelope_pb2.SignedRequest(payload=b"\xff\x01", signature=b"x").SerializeToString(),
        "unknown caller": envelope.make(stranger, stranger_id, own, path).SerializeToString(),
        "bad signature": forged.SerializeToString(),  # the partner's id, signed with another key
    }


def frame_of_unknown_sensor(live: LiveHub) -> bytes:
    header = frames.FrameHeader(live.hub.identity.hub_id, secrets.token_bytes(16), 1)
    return frames.seal(secrets.token_bytes(32), header, b'[{"n":"pm25","v":1,"t":1700000000}]')


def ingest_calls(live: LiveHub, method: MethodDescriptor) -> dict[str, bytes]:
    sealed = ingest_pb2.SealedFrame(frame=frame_of_unknown_sensor(live))
    if method.client_streaming:
        return {"frame of an unknown sensor": sealed.SerializeToString()}
    return {"frame of an unknown sensor": ingest_pb2.SubmitBatchRequest(frames=[sealed]).SerializeToString()}


ADMIN_METADATA = {"no token": (), "wrong token": (("authorization", "Bearer " + "0" * 43),), "not bearer": (("authorization", "Basic x"),)}


@pytest.mark.parametrize("path, method", METHODS, ids=[path for path, _ in METHODS])
async def test_every_method_refuses_an_unauthenticated_call(hub, path, method):
    service = method.containing_service.full_name
    if path in PUBLIC:
        assert await call_raw(hub, path, method, b"") == grpc.StatusCode.OK
        return
    if service == "smartregion.v1.Admin":
        cases = {name: (b"", metadata) for name, metadata in ADMIN_METADATA.items()}
    elif service in ("smartregion.v1.Federation", "smartregion.v1.Query"):
        cases = {name: (body, ()) for name, body in envelope_calls(hub, path).items()}
    elif service == "smartregion.v1.Ingest":
        cases = {name: (body, ()) for name, body in ingest_calls(hub, method).items()}
    else:
        pytest.fail(f"{service} has no unauthenticated calls in this test: add them")
    codes = {name: await call_raw(hub, path, method, body, metadata) for name, (body, metadata) in cases.items()}
    assert codes == {name: grpc.StatusCode.UNAUTHENTICATED for name in cases}


async def test_an_unknown_service_needs_the_admin_token(hub):
    """Deny by default: a method of no known service is refused as unauthenticated, not passed on."""
    path = "/smartregion.v1.Secret/Anything"
    stub = hub.channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def audit_entries(live: LiveHub) -> list[dict]:
    return [json.loads(r.entry) for r in await live.hub.storage.read(lambda s: s.audit_rows())]


async def test_two_thousand_refusals_are_one_audit_entry_per_source_and_minute(hub):
    clock: ManualClock = hub.hub.clock
    await hub.running.federation.refusals.flush()
    before = len(await audit_entries(hub))
    path = "/smartregion.v1.Query/Run"
    method = query_service_pb2.DESCRIPTOR.services_by_name["Query"].methods_by_name["Run"]
    stranger = Ed25519PrivateKey.generate()
    stranger_id = hub_id_from_public_key(identity.raw_public(stranger.public_key()))
    body = envelope.make(stranger, stranger_id, hub.hub.config.hub_id, path, clock=clock).SerializeToString()
    for _ in range(40):  # 50 at a time: under the per-source cap of concurrent calls (64)
        codes = await asyncio.gather(*(call_raw(hub, path, method, body) for _ in range(50)))
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    assert len(await audit_entries(hub)) == before, "refusals are held, not written one by one"

    clock.advance(60)  # the minute ends; the next refusal (or the background round) writes it
    assert await call_raw(hub, path, method, body) == grpc.StatusCode.UNAUTHENTICATED
    added = (await audit_entries(hub))[before:]
    assert len(added) == 1, added
    [entry] = added
    assert entry["action"] == "auth.refused" and entry["actor"] == "source:ipv4:127.0.0.1"
    assert entry["detail"].startswith("2000 refused in the minute from ")
    assert f"2000 x {path} unauthenticated (first unknown:{stranger_id}: " in entry["detail"]

    await hub.running.federation.refusals.flush()
    [last] = (await audit_entries(hub))[before + 1:]
    assert last["detail"].startswith("1 refused")


async def test_many_sources_share_one_entry_beyond_the_bound(hub):
    """The growth bound holds however many addresses a flooder uses."""
    tally = hub.running.federation.refusals
    await tally.flush()
    before = len(await audit_entries(hub))
    for i in range(REFUSAL_SOURCES_PER_MINUTE + 50):
        await tally.count(f"ipv4:10.0.{i // 256}.{i % 256}", "unknown", "/x", "unauthenticated", "test")
    await tally.flush()
    added = (await audit_entries(hub))[before:]
    assert len(added) == REFUSAL_SOURCES_PER_MINUTE + 1
    assert added[-1]["actor"] == "source:other" and added[-1]["detail"].startswith("50 refused")


class _GatedStorage:
    """The hub's real storage, with each write held until the test opens the gate."""

    def __init__(self, storage):
        self._storage, self.gate, self.writing = storage, asyncio.Event(), asyncio.Event()

    async def write(self, fn):
        self.writing.set()
        await self.gate.wait()
        return await self._storage.write(fn)


async def test_a_refusal_counted_while_the_background_round_writes_waits_for_that_write(hub):
    """Once a refusal's count returns, every earlier minute is in the log: a count during the
    background round's write of the last minute neither races past it nor loses it."""
    clock: ManualClock = hub.hub.clock
    gated = _GatedStorage(hub.hub.storage)
    tally = RefusalTally(gated, clock)  # type: ignore[arg-type]
    before = len(await audit_entries(hub))
    await tally.count("ipv4:10.9.9.9", "unknown", "/x", "unauthenticated", "test")
    clock.advance(60)
    background = asyncio.create_task(tally.flush_due())
    await gated.writing.wait()  # the round has taken the minute and is writing it
    counted = asyncio.create_task(tally.count("ipv4:10.9.9.9", "unknown", "/x", "unauthenticated", "test"))
    await asyncio.sleep(0.05)
    assert not counted.done(), "the count must wait for the write in flight"
    gated.gate.set()
    await asyncio.gather(background, counted)
    added = (await audit_entries(hub))[before:]
    assert [e["detail"][:9] for e in added] == ["1 refused"]
    await tally.flush()
    assert len((await audit_entries(hub))[before:]) == 2


class _OnlyRun:
    async def Run(self, call, context):  # Query/Partial is missing
        raise AssertionError("never called")


async def test_registration_refuses_a_servicer_that_misses_a_method_or_a_public_method_that_is_not_one(hub):
    """A method added to the .proto without a handler stops the hub from starting, and a method
    can only be served without authentication when it is explicitly named public."""
    server = grpc.aio.server()
    authenticator = hub.running.federation.authenticator
    query = query_service_pb2.DESCRIPTOR.services_by_name["Query"]
    federation = federation_pb2.DESCRIPTOR.services_by_name["Federation"]
    with pytest.raises(TypeError, match=r"no handler for /smartregion\.v1\.Query/Partial"):
        add_service(server, query, _OnlyRun(), authenticator)
    with pytest.raises(ValueError, match="has no methods"):
        add_service(server, query, _OnlyRun(), authenticator, public=frozenset({"Runn"}))
    servicer = FederationServicer(hub.running.federation)
    with pytest.raises(TypeError, match="GetDescriptor must take a SignedRequest"):
        add_service(server, federation, servicer, authenticator)  # GetDescriptor not listed as public
    await server.stop(None)
