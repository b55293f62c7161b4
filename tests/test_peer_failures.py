"""Dead and frozen peers, with real hub processes: one SIGSTOPped peer does not delay
deliveries to the others, and a killed peer that comes back is reached again within seconds.

The restart test alone cannot tell the bounded reconnect backoff from gRPC's default (after
3 s of failures both retry within seconds, and the outbox retries too), so
`test_a_peer_channel_reconnects_within_its_backoff_cap_after_a_long_outage` measures the
channel's backoff itself after seven failures, where the default would wait at least 13.4 s."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from federation import channels, peers
from federation.channels import ChannelPool
from node.api.v1 import admin_pb2, agreement_pb2
from node.clock import SYSTEM_CLOCK
from tests.region_helpers import ProcessHub, eventually, start_region, stop_frozen_or_killed
from tests.relay_helpers import Relay
from tests.test_federation_region import TERMS

pytestmark = pytest.mark.asyncio(loop_scope="module")
State = agreement_pb2.AgreementState


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def region(tmp_path_factory):
    base = tmp_path_factory.mktemp("peer-failures")
    hubs = await start_region(base, (("stavanger", "1103"), ("bergen", "4601"), ("porsgrunn", "4001")))
    try:
        yield hubs
    finally:
        await stop_frozen_or_killed(hubs)


async def proposal_reached(hub: ProcessHub, agreement_id: str) -> bool:
    return await hub.state_of(agreement_id) == State.AGREEMENT_STATE_PROPOSED


def window(days_from_2100: int) -> str:
    """Terms of their own validity window, so that proposals never overlap."""
    start = f"2100-01-{1 + days_from_2100:02d}T00:00:00Z"
    until = f"2100-01-{2 + days_from_2100:02d}T00:00:00Z"
    return TERMS.replace('from = "now"', f"from = {start}").replace("until = 2030-01-01T00:00:00Z", f"until = {until}")


async def test_a_frozen_peer_does_not_delay_deliveries_to_the_others(region):
    stavanger, bergen, porsgrunn = region
    os.kill(bergen.process.process.pid, signal.SIGSTOP)
    try:
        # A delivery to the frozen Bergen is under way (it hangs until its call times out) ...
        await stavanger.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=window(0), to=bergen.hub_id))
        await asyncio.sleep(0.5)  # let the background round start it (not a timing assertion)
        # ... and a proposal to Porsgrunn must not wait for it.
        started = time.monotonic()
        view = await stavanger.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=window(1), to=porsgrunn.hub_id))
        await eventually(lambda: proposal_reached(porsgrunn, view.terms.agreement_id), timeout=peers.CALL_TIMEOUT_S * 2)
        waited = time.monotonic() - started
        # Descriptor refreshes (every second in these hubs) go on for Porsgrunn meanwhile.
        refreshed_at = []
        async with asyncio.timeout(peers.CALL_TIMEOUT_S * 2):
            while len(set(refreshed_at)) < 3:
                listed = await stavanger.admin("ListPeers", admin_pb2.ListPeersRequest())
                refreshed_at.append(next(p.last_contact_ms for p in listed.peers if p.hub_id == porsgrunn.hub_id))
                await asyncio.sleep(0.1)
        refreshing = time.monotonic() - started - waited
    finally:
        os.kill(bergen.process.process.pid, signal.SIGCONT)
    assert waited < peers.CALL_TIMEOUT_S / 2, f"Porsgrunn waited {waited:.1f} s: behind the frozen peer's {peers.CALL_TIMEOUT_S} s call"
    assert refreshing < peers.CALL_TIMEOUT_S / 2, f"two refreshes of Porsgrunn took {refreshing:.1f} s: behind the frozen peer"


async def test_a_restarted_peer_is_reached_again_within_seconds(region):
    stavanger, bergen, _ = region
    bergen.process.kill()  # SIGKILL: no goodbye
    await bergen.channel.close()
    # While Bergen is down, Stavanger's deliveries to it fail and its channel backs off.
    view = await stavanger.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=window(2), to=bergen.hub_id))

    async def delivery_failed() -> bool:
        listed = await stavanger.admin("ListPeers", admin_pb2.ListPeersRequest())
        return any(p.hub_id == bergen.hub_id and p.last_error for p in listed.peers)

    await eventually(delivery_failed)
    await asyncio.sleep(3)  # several failed attempts: gRPC's default backoff would now be growing towards 120 s
    await asyncio.to_thread(bergen.launch)
    bergen.connect()
    started = time.monotonic()
    await eventually(lambda: proposal_reached(bergen, view.terms.agreement_id), timeout=30)
    waited = time.monotonic() - started
    assert waited < 8, f"the restarted peer was reached only after {waited:.1f} s"


async def test_a_peer_channel_reconnects_within_its_backoff_cap_after_a_long_outage(region):
    """The test that tells the bounded reconnect backoff from gRPC's default. A peer channel of
    the hub's ChannelPool (federation/channels.py) reaches Porsgrunn through a relay that is
    down: every connection attempt is accepted and closed. Once the channel has failed
    ATTEMPTS times, the relay comes back up at once and the time to the first successful call
    is measured. gRPC's default backoff (1 s x 1.6 per failure, jitter +-20 %, at most 120 s)
    would wait 16.8 s +- 20 % (at least 13.4 s) after the 7th failure; the cap of
    RECONNECT_BACKOFF_MS["max"] (5 s, so at most 6 s with jitter) must show well below that."""
    _, _, porsgrunn = region
    relay = await Relay(int(porsgrunn.address.rsplit(":", 1)[1])).start()
    relay.up = False
    pool = ChannelPool(SYSTEM_CLOCK)
    channel = pool.channel(porsgrunn.hub_id, relay.address, porsgrunn.hub_dir.tls_cert_pem().decode())
    health = health_pb2_grpc.HealthStub(channel)

    async def call_succeeds() -> bool:
        try:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            return True
        except grpc.aio.AioRpcError:
            return False

    attempts, cap_s = 7, channels.RECONNECT_BACKOFF_MS["max"] / 1000
    try:
        async with asyncio.timeout(attempts * cap_s * 1.2 + 10):
            while len(relay.refused_at) < attempts:
                assert not await call_succeeds()
                await asyncio.sleep(0.05)
        relay.up = True  # the peer is back, right after the channel's 7th failed attempt
        back = time.monotonic()
        gaps = [b - a for a, b in zip(relay.refused_at, relay.refused_at[1:], strict=False)]
        reached = None
        while time.monotonic() - back < 30:  # gRPC's default would need at least 13.4 s
            if await call_succeeds():
                reached = time.monotonic() - back
                break
            await asyncio.sleep(0.05)
    finally:
        await pool.close()
        await relay.stop()
    print(f"\nreconnect: {attempts} failed attempts {', '.join(f'{g:.1f}' for g in gaps)} s apart; "
          f"first success {reached if reached is None else round(reached, 2)} s after the peer was back "
          f"(cap {cap_s:g} s; gRPC's default would wait at least 13.4 s)")
    assert reached is not None and reached < 9, f"the peer was reached {reached} s after it was back"
    assert max(gaps) < cap_s * 1.2 + 1.5, f"the channel waited {max(gaps):.1f} s between attempts"
