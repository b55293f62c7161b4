"""Dead and frozen peers, with real hub processes: one SIGSTOPped peer does not delay
deliveries to the others, and a killed peer that comes back is reached again within seconds."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import pytest_asyncio

from federation import peers
from node.api.v1 import admin_pb2, agreement_pb2
from tests.region_helpers import ProcessHub, eventually, start_all
from tests.test_federation_region import TERMS

pytestmark = pytest.mark.asyncio(loop_scope="module")
State = agreement_pb2.AgreementState


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def region(tmp_path_factory):
    base = tmp_path_factory.mktemp("peer-failures")
    hubs = [ProcessHub(base / name, number) for name, number in (("stavanger", "1103"), ("bergen", "4601"), ("porsgrunn", "4001"))]
    await start_all(hubs)
    try:
        for a in hubs:
            for b in hubs:
                if a is not b:
                    await a.admin("AddPeer", admin_pb2.AddPeerRequest(address=b.address, hub_id=b.hub_id))
        yield hubs
    finally:
        for hub in hubs:
            if hub.process.process is not None and hub.process.process.poll() is None:
                os.kill(hub.process.process.pid, signal.SIGCONT)
            await hub.stop()


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
