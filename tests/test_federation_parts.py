"""The federation's parts under a controllable clock: the per-peer circuit breaker, the
channel reset on contact, descriptor lifetimes, dashboard sessions, the cap on open
proposals and an idempotent accept. Time is moved with ManualClock, never slept through."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import agreements as ag
from federation import channels, descriptors, ledger, partners
from federation import terms as terms_mod
from federation.channels import ChannelPool
from federation.partner_client import PartnerSession
from node import hubdir
from node.api.v1 import admin_pb2, agreement_pb2
from node.app.dashboard.routes import SESSION_COOKIE, SESSION_SECONDS
from node.clock import SYSTEM_CLOCK, ManualClock
from tests.conftest import make_hub_dir, start_live_hub
from tests.ingest_helpers import client_ssl_context
from tests.test_federation_region import TERMS

DAY_S = 24 * 3600


# -- circuit breaker ------------------------------------------------------------------------

def test_the_breaker_opens_on_failure_retries_after_a_bounded_delay_and_closes_on_contact():
    clock = ManualClock()
    pool = ChannelPool(clock)
    assert not pool.is_failing("peer")
    pool.record_failure("peer")
    assert pool.is_failing("peer") and not pool.is_failing("other"), "one peer's failure is its own"
    clock.advance(channels.BREAKER_RETRY_S - 0.01)
    assert pool.is_failing("peer")
    clock.advance(0.02)
    assert not pool.is_failing("peer"), "a call is let through after the retry delay"
    pool.record_failure("peer")  # that call failed too: the delay doubles
    clock.advance(channels.BREAKER_RETRY_S * 2 - 0.01)
    assert pool.is_failing("peer")
    clock.advance(0.02)
    assert not pool.is_failing("peer")
    for _ in range(20):
        pool.record_failure("peer")
    clock.advance(channels.BREAKER_MAX_RETRY_S + 0.01)
    assert not pool.is_failing("peer"), "the delay is bounded"
    pool.record_failure("peer")
    pool.record_success("peer")
    assert not pool.is_failing("peer"), "any contact closes it"
    pool.record_failure("peer")
    pool.heard_from("peer")
    assert not pool.is_failing("peer"), "a call from the peer closes it"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_failing_channel_is_replaced_when_the_peer_is_heard_from(tmp_path):
    cert = hubdir.HubDir(make_hub_dir(tmp_path / "hub")).tls_cert_pem().decode()
    pool = ChannelPool(ManualClock())
    address = f"127.0.0.1:{free_port()}"  # nothing listens: the channel fails and backs off
    channel = pool.channel("peer", address, cert)
    assert pool.channel("peer", address, cert) is channel, "one channel per peer"
    state = channel.get_state(try_to_connect=True)
    async with asyncio.timeout(20):
        while state != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            await channel.wait_for_state_change(state)
            state = channel.get_state()
    pool.heard_from("peer")
    assert pool.channel("peer", address, cert) is not channel, "the next call gets a fresh channel, not the backoff"
    healthy = pool.channel("peer", address, cert)
    pool.heard_from("peer")
    assert pool.channel("peer", address, cert) is healthy, "a channel that is not failing is kept"
    await pool.close()


def test_peer_channels_back_off_at_most_a_few_seconds():
    options = dict(channels.peer_channel_options("peer"))
    assert options["grpc.max_reconnect_backoff_ms"] <= 5000 and options["grpc.initial_reconnect_backoff_ms"] <= 1000


# -- against a hub on a ManualClock ---------------------------------------------------------

@pytest.fixture
async def clocked(tmp_path):
    clock = ManualClock(SYSTEM_CLOCK.now_ms())
    live = await start_live_hub(make_hub_dir(tmp_path / "hub"), clock=clock)
    yield live, clock
    await live.stop()


async def test_the_descriptor_is_re_signed_at_half_its_lifetime_and_expires_after_seven_days(clocked):
    live, clock = clocked
    federation = live.running.federation
    first = federation.descriptor()
    clock.advance(3.5 * DAY_S - 1)
    assert federation.descriptor() is first, "more than half its lifetime left: served as it is"
    clock.advance(2)
    second = federation.descriptor()
    assert second is not first
    issued = lambda signed: descriptors.federation_pb2.NodeDescriptor.FromString(signed.descriptor)  # noqa: E731
    assert issued(second).issued_at_ms == clock.now_ms()
    assert issued(second).valid_until_ms == clock.now_ms() + 7 * DAY_S * 1000
    cert, hub_id = live.hub.identity.tls_cert_pem, live.hub.config.hub_id
    descriptors.verify_descriptor(second, hub_id, cert, issued(second).valid_until_ms - 1)
    with pytest.raises(descriptors.DescriptorError, match="expired"):
        descriptors.verify_descriptor(second, hub_id, cert, issued(second).valid_until_ms)


async def test_a_dashboard_session_ends_after_its_lifetime(clocked):
    live, clock = clocked
    url = live.hub.endpoint.http_url
    ssl = client_ssl_context(live)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/login", json={"token": hubdir.HubDir(live.data_dir).admin_token()}, ssl=ssl,
                             server_hostname=live.hub.config.hub_id) as response:
            assert response.status == 200
            cookie = response.cookies[SESSION_COOKIE].value

        async def overview_status() -> int:
            async with http.get(f"{url}/api/overview", cookies={SESSION_COOKIE: cookie}, ssl=ssl,
                                server_hostname=live.hub.config.hub_id) as response:
                return response.status

        assert await overview_status() == 200
        clock.advance(SESSION_SECONDS - 1)
        assert await overview_status() == 200
        clock.advance(2)
        assert await overview_status() == 401


# -- agreements -----------------------------------------------------------------------------

async def add_partner(live) -> partners.PartnerKey:
    key = partners.PartnerKey(Ed25519PrivateKey.generate(), "partner")
    await live.admin.AddPartner(admin_pb2.AddPartnerRequest(name="partner", org_number="971564679",
                                public_key_file=partners.public_document(key)), metadata=live.admin_metadata)
    return key


def future_terms(day: int) -> str:
    return TERMS.replace('from = "now"', f"from = 2100-01-{1 + day:02d}T00:00:00Z").replace(
        "until = 2030-01-01T00:00:00Z", f"until = 2100-01-{2 + day:02d}T00:00:00Z")


async def test_open_proposals_per_counterparty_are_capped(live_hub, monkeypatch):
    monkeypatch.setattr(ledger, "MAX_OPEN_PROPOSALS", 3)
    key, other = await add_partner(live_hub), await add_partner(live_hub)
    for day in range(3):
        await live_hub.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(terms_toml=future_terms(day), to=key.partner_id),
                                              metadata=live_hub.admin_metadata)
    # The partner's own proposal to the hub is refused too: the cap is on the counterparty's book.
    own = await live_hub.admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=live_hub.admin_metadata)
    hub_party = agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=own.hub_id,
                                    public_key=bytes.fromhex(own.identity_public_key), name=own.municipality_name)
    partner_party = agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_PARTNER, id=key.partner_id,
                                        public_key=key.key.public_key().public_bytes_raw(), name="partner")
    terms = terms_mod.from_toml(terms_mod.parse_toml(future_terms(5)), hub_party, partner_party, SYSTEM_CLOCK.now_ms())
    async with PartnerSession(key, live_hub.hub.endpoint.grpc_address, own.hub_id) as session:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await session.exchange([ag.propose(terms, key.partner_id, key.key).to_document()])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "open agreement proposals" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live_hub.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(terms_toml=future_terms(9), to=key.partner_id),
                                              metadata=live_hub.admin_metadata)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(err.value.trailing_metadata()).get("smartregion-reason") == "too_many_proposals"
    # Another counterparty is not affected.
    await live_hub.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(terms_toml=future_terms(0), to=other.partner_id),
                                          metadata=live_hub.admin_metadata)


async def test_accepting_an_accepted_agreement_again_reports_success(live_hub):
    """A retried `agreement accept` whose first attempt took effect (the answer was lost)."""
    key = await add_partner(live_hub)
    own = await live_hub.admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=live_hub.admin_metadata)
    hub_party = agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=own.hub_id,
                                    public_key=bytes.fromhex(own.identity_public_key), name=own.municipality_name)
    partner_party = agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_PARTNER, id=key.partner_id,
                                        public_key=key.key.public_key().public_bytes_raw(), name="partner")
    terms = terms_mod.from_toml(terms_mod.parse_toml(TERMS), hub_party, partner_party, SYSTEM_CLOCK.now_ms())
    async with PartnerSession(key, live_hub.hub.endpoint.grpc_address, own.hub_id) as session:
        await session.exchange([ag.propose(terms, key.partner_id, key.key).to_document()])
    ref = admin_pb2.AgreementRef(agreement_id=terms.agreement_id)
    first = await live_hub.admin.AcceptAgreement(ref, metadata=live_hub.admin_metadata)
    again = await live_hub.admin.AcceptAgreement(ref, metadata=live_hub.admin_metadata)
    assert first.state == again.state == ag.State.AGREEMENT_STATE_ACTIVE
    assert len(again.signatures) == 2 and [h.event for h in again.history].count("signed by provider") == 1
    await live_hub.admin.RevokeAgreement(admin_pb2.RevokeAgreementRequest(agreement_id=terms.agreement_id, reason="end"),
                                         metadata=live_hub.admin_metadata)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live_hub.admin.AcceptAgreement(ref, metadata=live_hub.admin_metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "revoked" in err.value.details()





# -- delivery backoff -----------------------------------------------------------------------

async def test_delivery_backoff_doubles_to_its_cap_and_resets_when_the_peer_is_heard_from(tmp_path):
    clock = ManualClock(SYSTEM_CLOCK.now_ms())
    a = await start_live_hub(make_hub_dir(tmp_path / "a", "1103"), clock=clock)
    b = await start_live_hub(make_hub_dir(tmp_path / "b", "4601"), clock=clock)
    try:
        await a.admin.AddPeer(admin_pb2.AddPeerRequest(address=b.hub.endpoint.grpc_address, hub_id=b.hub.config.hub_id),
                              metadata=a.admin_metadata)
        b_id = b.hub.config.hub_id
        await b.stop()  # the peer is gone: every delivery to it fails
        outbox = a.running.federation.outbox
        outbox.retry_base_seconds, outbox.retry_max_seconds = 1.0, 8.0

        async def pending():
            return (await a.hub.storage.read(lambda s: s.pending_deliveries())).get(b_id)

        async def attempts_reach(n: int):
            async with asyncio.timeout(20):
                while (delivery := await pending()) is None or delivery.attempts < n:
                    await asyncio.sleep(0.05)  # polling the other task's progress; the hub's time stands still
            return delivery

        await outbox.schedule(b_id)
        for attempt, delay_s in enumerate([1, 2, 4, 8, 8], start=1):
            delivery = await attempts_reach(attempt)
            assert delivery.attempts == attempt and delivery.next_attempt_ms - clock.now_ms() == delay_s * 1000
            clock.advance(delay_s - 0.001)
            assert not await a.hub.storage.read(lambda s: s.due_deliveries(clock.now_ms())), "not due before its time"
            clock.advance(0.001)
            outbox.wake()
        delivery = await attempts_reach(6)
        await a.running.federation.outbox.heard_from(b_id)  # as when the peer calls or its refresh succeeds
        delivery = await pending()
        assert delivery.attempts == 0 and delivery.next_attempt_ms == clock.now_ms()
    finally:
        await a.stop()
