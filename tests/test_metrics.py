"""/metrics reports the hub's real state: counter and gauge values, not just their names.

Three real hubs (grpc.aio + aiohttp, SQLite), peered both ways. The hub under test ingests
frames (stored, rejected), holds agreements in three states, and has one peer that answers and
one that was stopped; each scrape of /metrics (over TLS, pinned) must show exactly those numbers.
"""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.api.v1 import admin_pb2, agreement_pb2
from node.tlsfiles import pinned_client_ssl_context
from tests.ingest_helpers import deliver as deliver_frames
from tests.ingest_helpers import fresh_readings, seal_raw
from tests.query_helpers import add_sensor, agree, deliver, settle, start_nodes, stop_nodes, terms_toml

AGREEMENT_STATES = ("proposed", "active", "revoked", "expired", "pending", "superseded")


async def scrape(node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    hub = node.live.hub
    connector = aiohttp.TCPConnector(ssl=pinned_client_ssl_context(hub.identity.tls_cert_pem))
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = dict(node.live.admin_metadata)  # /metrics needs the admin token (docs/limits.md)
        async with session.get(hub.endpoint.http_url + "/metrics", server_hostname=hub.config.hub_id, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_state(samples, name: str) -> dict[str, float]:
    return {dict(labels)["state"]: value for (n, labels), value in samples.items() if n == name}


@pytest.fixture
async def region(tmp_path):
    nodes = await start_nodes(tmp_path, (("stavanger", "1103"), ("bergen", "4601"), ("porsgrunn", "4001")))
    yield nodes
    await stop_nodes([n for n in nodes if not n.live.running.stopping.is_set()])


async def test_metrics_count_ingest_agreements_and_peers_by_their_real_values(region, tmp_path):
    stavanger, bergen, porsgrunn = region
    start = await scrape(stavanger)
    assert start[("smartregion_readings_ingested_total", ())] == 0
    assert start[("smartregion_frames_accepted_total", ())] == 0
    assert by_state(start, "smartregion_agreements") == dict.fromkeys(AGREEMENT_STATES, 0)
    assert by_state(start, "smartregion_peers") == {"reachable": 2, "unreachable": 0, "descriptor-expired": 0, "waiting-for-pin": 0}

    # Ingest: 3 frames of 7 readings in all are stored; one forged frame and one replay are refused.
    sensor = await add_sensor(stavanger, tmp_path, "kannik", "air_quality", ["pm25", "temperature"])
    await deliver(stavanger, sensor, fresh_readings(7), per_frame=3)
    forged = seal_raw(sensor, b'[{"n":"pm25","v":1.0,"t":1546300800}]', key=bytes(32))
    assert not (await deliver_frames(stavanger.live, forged, "batch")).ok
    replay = seal_raw(sensor, b'[{"n":"pm25","v":1.0,"t":1546300800}]', counter=1)
    assert not (await deliver_frames(stavanger.live, replay, "batch")).ok

    # Agreements: one active, one proposed (never accepted), one revoked.
    await agree(stavanger, bergen, terms_toml())
    await stavanger.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=terms_toml(), to=porsgrunn.id))
    revoked = await agree(stavanger, bergen, terms_toml(datasets=["traffic"], metrics=["vehicles"]))
    await stavanger.admin("RevokeAgreement", admin_pb2.RevokeAgreementRequest(agreement_id=revoked, reason="metrics test"))
    await settle(region)

    # Porsgrunn stops; Stavanger's next descriptor refresh finds it unreachable.
    await porsgrunn.channel.close()
    await porsgrunn.live.running.stop(grace=0)
    federation = stavanger.live.running.federation
    for peer in await federation.hub.storage.read(lambda s: s.list_peers()):
        await federation.outbox.refresh(peer)

    samples = await scrape(stavanger)
    assert samples[("smartregion_readings_ingested_total", ())] == 7
    assert samples[("smartregion_frames_accepted_total", ())] == 3
    rejected = {dict(labels)["reason"]: v for (n, labels), v in samples.items() if n == "smartregion_frames_rejected_total"}
    assert rejected == {"authentication_failed": 1, "replayed": 1}
    assert by_state(samples, "smartregion_agreements") == {**dict.fromkeys(AGREEMENT_STATES, 0),
                                                           "active": 1, "proposed": 1, "revoked": 1}
    assert by_state(samples, "smartregion_peers") == {"reachable": 1, "unreachable": 1, "descriptor-expired": 0, "waiting-for-pin": 0}

    # Gauges follow the state down as well as up: the agreement Bergen held active is revoked.
    active = [a for a, s in (await bergen.live.running.federation.ledger.states()).items() if s == agreement_pb2.AGREEMENT_STATE_ACTIVE]
    assert len(active) == 1
    assert by_state(await scrape(bergen), "smartregion_agreements") == {**dict.fromkeys(AGREEMENT_STATES, 0),
                                                                        "active": 1, "revoked": 1}
    await bergen.admin("RevokeAgreement", admin_pb2.RevokeAgreementRequest(agreement_id=active[0], reason="metrics test"))
    bergen_samples = await scrape(bergen)
    assert by_state(bergen_samples, "smartregion_agreements") == {**dict.fromkeys(AGREEMENT_STATES, 0), "revoked": 2}
    assert bergen_samples[("smartregion_readings_ingested_total", ())] == 0
