"""A second peer claiming a municipality that is already peered (or this hub's own) is
refused (issue 11: before, it was pinned without warning and its cells merged with the real
one's)."""

from __future__ import annotations

import grpc
import pytest
from conftest import make_hub_dir, start_live_hub

from node.api.v1 import admin_pb2


async def add_peer(a, b):
    return await a.admin.AddPeer(admin_pb2.AddPeerRequest(address=b.hub.endpoint.grpc_address, hub_id=b.hub.config.hub_id),
                                 metadata=a.admin_metadata)


async def test_a_second_hub_for_an_already_peered_municipality_is_refused(tmp_path):
    hubs = [await start_live_hub(make_hub_dir(tmp_path / name, number))
            for name, number in (("stavanger", "1103"), ("sandnes", "1108"), ("impostor", "1108"), ("twin", "1103"))]
    stavanger, sandnes, impostor, twin = hubs
    try:
        await add_peer(stavanger, sandnes)
        for claimant, words in ((impostor, "already stands for"), (twin, "this hub's own")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await add_peer(stavanger, claimant)
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and words in err.value.details()
        listed = await stavanger.admin.ListPeers(admin_pb2.ListPeersRequest(), metadata=stavanger.admin_metadata)
        assert [p.hub_id for p in listed.peers] == [sandnes.hub.config.hub_id]
        # Re-adding the same peer (e.g. a new address) is still fine; after removing it, the new hub may take its place.
        await add_peer(stavanger, sandnes)
        await stavanger.admin.RemovePeer(admin_pb2.RemovePeerRequest(hub_id=sandnes.hub.config.hub_id),
                                         metadata=stavanger.admin_metadata)
        await add_peer(stavanger, impostor)
    finally:
        for hub in hubs:
            await hub.stop()
