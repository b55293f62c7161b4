"""Regressions for defects found in review: concurrent agreement changes, unbounded caller
input, partials releasing more than the aggregate needs, weeks that months cut through."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import agreements as ag
from federation import partners
from federation.ledger import LedgerHooks
from federation.partner_client import PartnerSession
from node.api.v1 import admin_pb2, envelope_pb2, federation_pb2_grpc, query_pb2
from node.app.sensor_client import replay
from node.senml import Reading
from tests.conftest import sign_agreement, start_peered
from tests.test_federation_region import TERMS


def ms(year: int, month: int, day: int = 1) -> int:
    return int(dt.datetime(year, month, day, tzinfo=dt.UTC).timestamp() * 1000)


@pytest.mark.parametrize("held", ["revocation", "countersignature"])
async def test_a_revocation_racing_a_countersignature_is_never_lost(live_hub, held):
    """The admin revokes while the partner's countersignature arrives. The interleaving is
    forced: the change that reaches the ledger first is held between its read and its write
    until the other has either run to its end (were changes not transactions) or is waiting
    for the first. Both the revocation and the countersignature must be kept."""
    key = partners.PartnerKey(Ed25519PrivateKey.generate(), "racer")
    await live_hub.admin.AddPartner(admin_pb2.AddPartnerRequest(name="racer", org_number="971564679",
                                    public_key_file=partners.public_document(key)), metadata=live_hub.admin_metadata)
    view = await live_hub.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(terms_toml=TERMS, to=key.partner_id),
                                                 metadata=live_hub.admin_metadata)
    agreement_id = view.terms.agreement_id
    ledger = live_hub.running.federation.ledger
    first_read, release, second_waits = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def between_read_and_write():
        if not first_read.is_set():
            first_read.set()
            await release.wait()

    async def waiting():
        second_waits.set()

    async with PartnerSession(key, live_hub.hub.endpoint.grpc_address, live_hub.hub.config.hub_id) as session:
        signed = ag.countersign((await session.agreements())[0].evidence, key.partner_id, key.key)

        async def revoke():
            return await live_hub.admin.RevokeAgreement(admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason="stop"),
                                                        metadata=live_hub.admin_metadata)

        async def countersign():
            return await session.exchange([signed.to_document()])

        first, second = (revoke, countersign) if held == "revocation" else (countersign, revoke)
        ledger.hooks = LedgerHooks(between_read_and_write=between_read_and_write, waiting=waiting)
        try:
            first_task = asyncio.create_task(first())
            await first_read.wait()
            second_task = asyncio.create_task(second())
            waits = asyncio.create_task(second_waits.wait())
            await asyncio.wait([second_task, waits], return_when=asyncio.FIRST_COMPLETED)
            waits.cancel()
            release.set()
            await asyncio.gather(first_task, second_task)
        finally:
            ledger.hooks = LedgerHooks()
    final = await live_hub.admin.GetAgreement(admin_pb2.AgreementRef(agreement_id=agreement_id), metadata=live_hub.admin_metadata)
    assert len(final.revocations) == 1, "the revocation was lost"
    assert len(final.signatures) == 2, "the countersignature was lost"
    assert final.state == ag.State.AGREEMENT_STATE_REVOKED


async def test_an_oversized_caller_id_is_refused_without_filling_the_audit_log(live_hub):
    stub = federation_pb2_grpc.FederationStub(live_hub.channel)
    payload = envelope_pb2.Request(caller_id="x" * 2_000_000).SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ExchangeAgreements(envelope_pb2.SignedRequest(payload=payload), timeout=10)
    # Refused on its size before it is parsed (node/app/grpc_limits.py), with the reason trailer.
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(err.value.details()) < 1000
    assert dict(err.value.trailing_metadata())["smartregion-reason"] == "request_too_large"
    rows = await live_hub.hub.storage.read(lambda s: s.audit_rows())
    assert all(len(r.entry) < 2000 for r in rows)


ONLY = TERMS.replace('aggregates = ["mean", "count", "min", "max"]', 'aggregates = ["mean", "count", "min", "max", "stddev"]')


@pytest.fixture
async def provider_and_consumer(tmp_path):
    consumer, provider = await start_peered(tmp_path, "1103", "4601")
    try:
        sensor = await provider.add_sensor(tmp_path, "station", metrics=["pm25"])
        outlier = [Reading("pm25", ms(2019, 1) + h * 3_600_000, 5.0 + 400.0 * (h == 77)) for h in range(24 * 31)]
        await asyncio.to_thread(replay, sensor, outlier)
        yield consumer, provider
    finally:
        await consumer.stop()
        await provider.stop()


def month_spec(aggregate: str, provider) -> query_pb2.QuerySpec:
    return query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate=aggregate, start_ms=ms(2019, 1), end_ms=ms(2019, 2),
                               bucket="month", group_by="municipality", purpose_code="environmental_monitoring",
                               hub_ids=[provider.hub.config.hub_id])


@pytest.mark.parametrize("aggregate, value", [
    ("mean", 5.0 + 400.0 / (24 * 31)), ("count", 24 * 31), ("min", 5.0), ("max", 405.0), ("stddev", None)])
async def test_a_per_municipality_partial_releases_only_its_final_value(provider_and_consumer, aggregate, value):
    """Issue 9: a per-municipality cell carries the provider's final value and its counts, never
    the sums, squares or extremes it was computed from (which recombine into single readings)."""
    consumer, provider = provider_and_consumer
    await sign_agreement(provider, consumer, ONLY)
    answer = await consumer.admin.RunQuery(month_spec(aggregate, provider), metadata=consumer.admin_metadata)
    [cell] = query_pb2.PartialResult.FromString(answer.provenance[0].partial.partial).cells
    assert (cell.sum, cell.sum_squares, cell.min, cell.max) == (0, 0, 0, 0)
    assert cell.count == 24 * 31
    if value is not None:
        assert cell.value == pytest.approx(value)


async def test_months_are_refused_under_a_weekly_agreement(provider_and_consumer):
    """Months are not made of whole weeks: a month minus its released weeks would give days."""
    consumer, provider = provider_and_consumer
    await sign_agreement(provider, consumer, TERMS.replace('smallest_bucket = "month"', 'smallest_bucket = "week"'))
    spec = month_spec("mean", provider)
    spec.start_ms, spec.end_ms = ms(2019, 4), ms(2019, 7)  # both Mondays: aligned to weeks and to months
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await consumer.admin.RunQuery(spec, metadata=consumer.admin_metadata)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "whole weeks" in err.value.details()
