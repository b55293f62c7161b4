"""What a live identity-key rotation costs: the admin's RotateIdentityKey call on a serving hub,
and the first request the hub signs with its new key at a peer, which makes the peer fetch the
descriptor and follow the key history before it authenticates the request (federation/outbox.py
`follow`). The baseline is the same signed request (an empty ExchangeAgreements) from the same
hub to the same peer while the peer already knows the key, measured in the same run.

    .venv/bin/python -m bench.live_rotation          # about 15 s on 2 cores

Two hubs served in this process (grpc.aio, TLS, SQLite files, keys.json under scrypt): Stavanger
rotates, Bergen follows. Bergen runs on a ManualClock that the bench moves past the follow
bound (FOLLOW_INTERVAL_S) before each rotation and keeps at the real time (for the requests'
freshness), so that its scheduled refreshes never run and each follow is the on-demand one.
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.machine import machine_facts
from federation import envelope
from federation.outbox import EXCHANGE_METHOD, FOLLOW_INTERVAL_S
from node import hubdir
from node.api.v1 import admin_pb2, admin_pb2_grpc, agreement_pb2, federation_pb2_grpc
from node.app.server import RunningHub, start
from node.client import open_channel
from node.clock import SYSTEM_CLOCK, Clock, ManualClock
from node.hub import Hub

PASSPHRASE = b"bench-live-rotation-passphrase"


async def serve(path: Path, municipality: str, clock: Clock) -> RunningHub:
    hubdir.init_hub(path, municipality, PASSPHRASE)
    return await start(Hub.open(path, PASSPHRASE, clock), host="127.0.0.1", grpc_port=0, http_port=0)


def admin(running: RunningHub):
    hub = running.hub
    channel = open_channel(hub.endpoint.grpc_address, hub_id=hub.config.hub_id, cert_pem=hub.identity.tls_cert_pem, aio=True)
    metadata = (("authorization", f"Bearer {hub.hub_dir.admin_token()}"),)
    return channel, admin_pb2_grpc.AdminStub(channel), metadata


async def signed_exchange(sender: RunningHub, to: RunningHub) -> float:
    """One ExchangeAgreements (nothing in it) signed by the sender's current key; seconds."""
    hub, peer = sender.hub, to.hub
    signed = envelope.make(hub.identity.identity_key, hub.config.hub_id, peer.config.hub_id, EXCHANGE_METHOD,
                           agreement_exchange=agreement_pb2.AgreementExchange())
    stub = federation_pb2_grpc.FederationStub(sender.federation.channel(await peer_record(sender, peer.config.hub_id)))
    started = time.perf_counter()
    await stub.ExchangeAgreements(signed, timeout=20)
    return time.perf_counter() - started


async def peer_record(running: RunningHub, peer_id: str):
    record = await running.hub.storage.read(lambda s: s.get_peer(peer_id))
    assert record is not None
    return record


async def main(rotations: int, baseline_calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-live-rotation-") as tmp:
        for key, value in machine_facts(Path(tmp)):
            print(f"{key}: {value}")
        clock = ManualClock(SYSTEM_CLOCK.now_ms())
        stavanger = await serve(Path(tmp) / "stavanger", "1103", SYSTEM_CLOCK)
        bergen = await serve(Path(tmp) / "bergen", "4601", clock)
        channels = []
        try:
            for a, b in ((stavanger, bergen), (bergen, stavanger)):
                channel, stub, metadata = admin(a)
                channels.append(channel)
                await stub.AddPeer(admin_pb2.AddPeerRequest(address=b.hub.endpoint.grpc_address, hub_id=b.hub.config.hub_id),
                                   metadata=metadata)
            _, stavanger_admin, metadata = admin(stavanger)
            baseline, rotate_s, first_s = [], [], []
            for _ in range(rotations):
                clock.set_now_ms(SYSTEM_CLOCK.now_ms())
                for _ in range(baseline_calls):
                    baseline.append(await signed_exchange(stavanger, bergen))
                clock.advance(FOLLOW_INTERVAL_S)  # past the bound of the previous follow
                clock.set_now_ms(SYSTEM_CLOCK.now_ms())
                started = time.perf_counter()
                await stavanger_admin.RotateIdentityKey(admin_pb2.RotateIdentityKeyRequest(), metadata=metadata)
                rotate_s.append(time.perf_counter() - started)
                first_s.append(await signed_exchange(stavanger, bergen))  # Bergen follows before it authenticates
                followed = (await bergen.federation.known_caller(stavanger.hub.config.hub_id))
                assert followed is not None and followed.public_key == stavanger.hub.identity.public_key_raw
        finally:
            for channel in channels:
                await channel.close()
            await bergen.stop(grace=1)
            await stavanger.stop(grace=1)
    base = statistics.median(baseline)
    print(f"rotations: {rotations}; baseline requests: {len(baseline)}")
    print(f"signed request, key known (baseline): median {base * 1000:.1f} ms")
    print(f"RotateIdentityKey on the serving hub: median {statistics.median(rotate_s) * 1000:.0f} ms "
          f"(min {min(rotate_s) * 1000:.0f}, max {max(rotate_s) * 1000:.0f})")
    first = statistics.median(first_s)
    print(f"first request under the new key (the peer follows first): median {first * 1000:.1f} ms "
          f"= {first / base:.1f}x the baseline (min {min(first_s) * 1000:.1f}, max {max(first_s) * 1000:.1f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rotations", type=int, default=5)
    parser.add_argument("--baseline-calls", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.rotations, args.baseline_calls))
