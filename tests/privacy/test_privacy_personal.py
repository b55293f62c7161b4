"""Issue 9, attacks 2 and 5, and the bad input of personal agreements.

Attack 2 tried: with 4 consenting households and k = 3, five allowed hourly queries (count,
sum, stddev, min, max) recombined into every household's exact reading. Now an agreement over
a personal dataset cannot allow stddev, min or max at all (refused at proposal), must carry a
differential-privacy budget with a per-subject contribution bound, and its answers are noisy:
recovered: nothing exact (the noise tests in tests/test_query_dp.py measure the scale).

Attack 5 tried: under DP small cells were released, the budget renewed daily and the unit was
one reading. Now: the cap of L readings per subject and cell is applied in SQL before
aggregating (measured here exactly on a live hub's store), suppression is on a noisy count
(tests/test_query_dp.py), and the budget is the agreement's lifetime (tests/test_query_dp.py)."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import partners
from node.api.v1 import admin_pb2
from node.app.sensor_client import replay
from node.senml import Reading
from node.storage.base import AggregateRequest
from tests.test_federation_region import TERMS

JAN = int(dt.datetime(2019, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
HOUR = 3_600_000
PERSONAL = (TERMS.replace('code = "environmental_monitoring"', 'code = "research"')
            .replace('datasets = ["air_quality"]', 'datasets = ["electricity"]').replace('metrics = ["pm25"]', 'metrics = ["energy"]')
            .replace("min_group_size = 1", "min_group_size = 3\nconsent_required = true"))


async def _partner(live_hub) -> str:
    partner = partners.PartnerKey(Ed25519PrivateKey.generate(), "Universitetet i Stavanger")
    await live_hub.admin.AddPartner(admin_pb2.AddPartnerRequest(name=partner.name, org_number="971564679",
                                                                public_key_file=partners.public_document(partner)),
                                    metadata=live_hub.admin_metadata)
    return partner.partner_id


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace('aggregates = ["mean", "count", "min", "max"]', 'aggregates = ["mean", "count"]'),
     "are personal: the terms must set a differential-privacy budget"),
    (lambda t: t + "", "are personal: the terms must set a differential-privacy budget"),
    (lambda t: t.replace('aggregates = ["mean", "count", "min", "max"]', 'aggregates = ["mean", "count"]')
     .replace("queries_per_day = 100", "queries_per_day = 100\ndp_epsilon = 1.0\ndp_max_contributions = 0"),
     "dp_max_contributions (the most readings one data subject adds to a cell) must be 1 to 10000, not 0"),
    (lambda t: t.replace('aggregates = ["mean", "count", "min", "max"]', 'aggregates = ["mean", "count"]')
     .replace("queries_per_day = 100", "queries_per_day = 100\ndp_epsilon = 10.5\ndp_max_contributions = 24"),
     "the differential-privacy budget 10.5 is above the ceiling of 10"),
    (lambda t: t.replace("queries_per_day = 100", "queries_per_day = 100\ndp_epsilon = 1.0\ndp_max_contributions = 24"),
     "only count, sum, mean are released, not min, max"),
])
async def test_a_personal_agreement_without_a_sound_budget_is_refused_at_proposal(live_hub, change, message):
    partner_id = await _partner(live_hub)
    partner_free = await live_hub.admin.ListAgreements(admin_pb2.ListAgreementsRequest(), metadata=live_hub.admin_metadata)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await live_hub.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(terms_toml=change(PERSONAL), to=partner_id),
                                              metadata=live_hub.admin_metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.details(), refused.value.details()
    after = await live_hub.admin.ListAgreements(admin_pb2.ListAgreementsRequest(), metadata=live_hub.admin_metadata)
    assert list(after.agreements) == list(partner_free.agreements)  # nothing stored


async def test_only_consenting_subjects_count_and_each_adds_at_most_the_bound(live_hub, tmp_path):
    """Exactly, on the hub's own store: consent filters subjects, withdrawal takes effect at the
    next query, a subject with two meters is one contributor, and the contribution bound keeps
    each subject's earliest L readings per cell."""
    subjects = {"house-a": [1.0] * 30, "house-b": [2.0] * 10, "house-c": [4.0] * 5, "house-d": [8.0] * 3}
    for subject, values in subjects.items():
        sensor = await live_hub.add_sensor(tmp_path, f"meter-{subject}", dataset="electricity", metrics=["energy"], subject_id=subject)
        await asyncio.to_thread(replay, sensor, [Reading("energy", JAN + i * HOUR, v) for i, v in enumerate(values)])
    garden = await live_hub.add_sensor(tmp_path, "meter-a-garden", dataset="electricity", metrics=["energy"], subject_id="house-a")
    await asyncio.to_thread(replay, garden, [Reading("energy", JAN + 40 * HOUR + i * HOUR, 0.5) for i in range(4)])
    for subject in ("house-a", "house-b", "house-c"):
        await live_hub.admin.GrantConsent(admin_pb2.ConsentRequest(subject_id=subject, purpose_code="research"),
                                          metadata=live_hub.admin_metadata)

    def cells(bound: int | None):
        request = AggregateRequest("electricity", "energy", JAN, JAN + 86_400_000 * 3, "window", "research",
                                   clamp=(0.0, 1e6), max_contributions=bound)
        return live_hub.hub.storage.read(lambda s: s.aggregate(request))

    [everything] = await cells(None)
    assert (everything.count, everything.sum, everything.contributors) == (30 + 4 + 10 + 5, 30 + 2 + 20 + 20, 3)  # no house-d
    [bounded] = await cells(6)  # house-a: its 6 earliest (all from the house meter), b: 6, c: 5
    assert (bounded.count, bounded.sum, bounded.contributors) == (6 + 6 + 5, 6.0 + 12.0 + 20.0, 3)
    await live_hub.admin.WithdrawConsent(admin_pb2.ConsentRequest(subject_id="house-a", purpose_code="research"),
                                         metadata=live_hub.admin_metadata)
    [after] = await cells(6)
    assert (after.count, after.sum, after.contributors) == (6 + 5, 12.0 + 20.0, 2)
