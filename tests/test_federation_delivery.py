"""Delivery keeps going when the peer refuses one document: a revocation still reaches it."""

from __future__ import annotations

import asyncio
import time

from federation import agreements as ag
from federation import terms as terms_mod
from node.api.v1 import admin_pb2, agreement_pb2
from node.clock import SYSTEM_CLOCK, ManualClock
from tests.conftest import make_hub_dir, start_live_hub
from tests.test_federation_region import TERMS

State = agreement_pb2.AgreementState


async def until(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_a_refused_document_does_not_block_a_revocation(tmp_path):
    clock = ManualClock(SYSTEM_CLOCK.now_ms())  # both hubs' time: moved on below instead of slept through
    a = await start_live_hub(make_hub_dir(tmp_path / "a", "1103"), clock=clock)
    b = await start_live_hub(make_hub_dir(tmp_path / "b", "4601"), clock=clock)
    try:
        for x, y in ((a, b), (b, a)):
            await x.admin.AddPeer(admin_pb2.AddPeerRequest(address=y.hub.endpoint.grpc_address, hub_id=y.hub.config.hub_id),
                                  metadata=x.admin_metadata)
        # A holds a proposal to B that expired before B ever saw it: B will refuse it for good.
        fed = a.running.federation
        doc = terms_mod.parse_toml(TERMS.replace("[data]", "[data]").replace('"pm25"', '"temperature"'))
        stale = terms_mod.from_toml(doc, fed.own_party(), await fed.registry.party(b.hub.config.hub_id), clock.now_ms())
        stale.valid_from_ms = clock.now_ms() - 10_000
        stale.valid_until_ms = clock.now_ms() + 300
        evidence = ag.propose(stale, fed.own_id, a.hub.identity.identity_key)
        await fed.ledger.add_new(evidence, notify=[])  # stored, not sent
        clock.advance(1.0)  # now expired, at both hubs

        view = await a.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(terms_toml=TERMS, to=b.hub.config.hub_id),
                                              metadata=a.admin_metadata)
        agreement_id = view.terms.agreement_id

        async def b_has(state):
            try:
                got = await b.admin.GetAgreement(admin_pb2.AgreementRef(agreement_id=agreement_id), metadata=b.admin_metadata)
            except Exception:
                return False
            return got.state == state

        await until(lambda: b_has(State.AGREEMENT_STATE_PROPOSED))
        await b.admin.AcceptAgreement(admin_pb2.AgreementRef(agreement_id=agreement_id), metadata=b.admin_metadata)

        await a.admin.RevokeAgreement(admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason="test"),
                                      metadata=a.admin_metadata)
        await until(lambda: b_has(State.AGREEMENT_STATE_REVOKED))
        rows = await a.hub.storage.read(lambda s: s.audit_rows())
        assert any(b'"agreement.deliver"' in r.entry and evidence.agreement_id.encode() in r.entry for r in rows)
    finally:
        await a.stop()
        await b.stop()
