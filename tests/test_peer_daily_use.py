"""`peer add` at the wrong kind of port, against real servers on loopback: a hub's HTTP port
(TLS, HTTP/1.1, the same certificate as its gRPC port) and a plain HTTP server are each named
as what they are, and nothing is pinned; the unknown-caller refusal is told apart from a
network failure."""

from __future__ import annotations

import grpc
import pytest
from aiohttp import web
from conftest import make_hub_dir, start_live_hub

from federation import peers
from node.api.v1 import admin_pb2
from node.tlsfiles import pinned_client_ssl_context


@pytest.fixture
async def two_hubs(tmp_path):
    hubs = [await start_live_hub(make_hub_dir(tmp_path / name, number)) for name, number in (("stavanger", "1103"), ("bergen", "4601"))]
    yield hubs
    for hub in hubs:
        await hub.stop()


async def add_peer(live, address: str, hub_id: str):
    return await live.admin.AddPeer(admin_pb2.AddPeerRequest(address=address, hub_id=hub_id), metadata=live.admin_metadata)


async def test_the_http_port_of_a_hub_is_named_as_such(two_hubs):
    stavanger, bergen = two_hubs
    http_address = bergen.hub.endpoint.http_url.removeprefix("https://")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await add_peer(stavanger, http_address, bergen.hub.config.hub_id)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "answers HTTP/1.1, not gRPC" in refused.value.details() and "gRPC port" in refused.value.details()
    listed = await stavanger.admin.ListPeers(admin_pb2.ListPeersRequest(include_removed=True), metadata=stavanger.admin_metadata)
    assert not listed.peers


async def test_a_plain_http_server_is_named_as_such():
    app = web.Application()
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(peers.PeerError, match="answers plain HTTP, without TLS"):
            await peers.fetch_certificate(f"127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def test_a_hub_that_has_not_pinned_us_is_waiting_not_unreachable(two_hubs):
    stavanger, bergen = two_hubs
    added = await add_peer(stavanger, bergen.hub.endpoint.grpc_address, bergen.hub.config.hub_id)
    assert added.state == peers.WAITING_FOR_PIN
    listed = await stavanger.admin.ListPeers(admin_pb2.ListPeersRequest(), metadata=stavanger.admin_metadata)
    assert [p.state for p in listed.peers] == [peers.WAITING_FOR_PIN]
    from federation.query_service import QueryService
    from node.app.dashboard.data import DashboardData

    federation = stavanger.running.federation
    shown = await DashboardData(federation, QueryService(federation)).peers()  # what the dashboard's peer table shows
    assert [p["state_text"] for p in shown] == ["waiting for them to pin us"]
    back = await add_peer(bergen, stavanger.hub.endpoint.grpc_address, stavanger.hub.config.hub_id)
    assert back.state == "reachable"


def test_only_an_unknown_caller_refusal_means_waiting():
    assert peers.refusal_state("UNAUTHENTICATED: caller 'ab' is not a peer or partner of this hub") == peers.WAITING_FOR_PIN
    assert peers.refusal_state("UNAUTHENTICATED: hub ab was removed as a peer of this hub at 2026") == peers.REMOVED_BY_THEM
    assert peers.refusal_state("UNAUTHENTICATED: the signature does not verify") is None
    assert peers.refusal_state("UNAVAILABLE: caller 'ab' is not a peer or partner of this hub") is None
    assert peers.refusal_state("UNAVAILABLE: failed to connect to all addresses") is None


async def test_the_dashboard_chart_drops_a_peer_as_soon_as_its_agreement_is_revoked(tmp_path):
    """The chart is cached for an hour, but not past a change of the peers it may ask."""

    import aiohttp
    from query_helpers import agree, deliver, eventually, ms, settle, start_nodes, state_is, stop_nodes, terms_toml

    from node import hubdir
    from node.api.v1 import agreement_pb2
    from node.senml import Reading

    stavanger, bergen = nodes = await start_nodes(tmp_path, (("stavanger", "1103"), ("bergen", "4601")))
    try:
        for node in nodes:
            sensor = await node.live.add_sensor(tmp_path, f"station-{node.municipality}", metrics=["pm25"])
            await deliver(node, sensor, [Reading("pm25", ms(2019, 3, 2), 10.0), Reading("pm25", ms(2019, 4, 2), 12.0)])
        agreement_id = await agree(bergen, stavanger, terms_toml(longest_window_days=366))  # Bergen provides, Stavanger's chart asks it
        hub = stavanger.live.hub
        context = pinned_client_ssl_context(hub.identity.tls_cert_pem)
        async with aiohttp.ClientSession() as http:
            async with http.post(hub.endpoint.http_url + "/api/login", json={"token": hubdir.HubDir(stavanger.live.data_dir).admin_token()},
                                 ssl=context, server_hostname=hub.config.hub_id) as login:
                cookie = f"sr_session={login.cookies['sr_session'].value}"

            async def chart() -> dict:
                async with http.get(hub.endpoint.http_url + "/api/chart", ssl=context, server_hostname=hub.config.hub_id,
                                    headers={"Cookie": cookie}) as response:
                    assert response.status == 200
                    return await response.json()

            before = await chart()
            assert {p["hub_id"]: p["status"] for p in before["provenance"]} == {stavanger.id: "answered", bergen.id: "answered"}
            assert {s["group"] for s in before["series"]} == {"1103", "4601"}
            await bergen.admin("RevokeAgreement", admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason="ended"))
            await eventually(lambda: state_is(stavanger, agreement_id, agreement_pb2.AGREEMENT_STATE_REVOKED),
                             what="the revocation to reach Stavanger")
            await settle(nodes)
            after = await chart()  # well within the hour the chart is otherwise cached for
            assert [p["hub_id"] for p in after["provenance"]] == [stavanger.id]
            assert [s["group"] for s in after["series"]] == ["1103"]
    finally:
        await stop_nodes(nodes)
