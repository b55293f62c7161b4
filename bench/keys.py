"""What identity-key rotations cost: authenticating a peer's request, verifying its descriptor at
a refresh, and verifying an agreement offline, for a peer with 0, 1 and 10 rotations; the
baseline in each row is the same operation for a peer that never rotated, measured in the same
run. The request lookup is also measured without the per-descriptor cache of the current key
(federation/registry.py `_chain`), i.e. checking the history on every request.

    .venv/bin/python -m bench.keys              # 2,000 lookups, 200 verifications per case

Everything in one process: a real SQLite file holding the peer (node.storage.Storage), the
hub's Registry, federation.descriptors and federation.agreements. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from federation import agreements as ag
from federation import descriptors
from federation import terms as terms_mod
from federation.channels import ChannelPool
from federation.registry import Registry
from node import catalog, identity
from node.api.v1 import agreement_pb2
from node.clock import SYSTEM_CLOCK
from node.storage import Storage
from node.storage.base import PeerRecord

TERMS = """
[purpose]
code = "research"
description = "bench"
[data]
datasets = ["air_quality"]
metrics = ["pm25"]
aggregates = ["mean"]
group_by = ["municipality"]
smallest_bucket = "day"
longest_window_days = 31
min_group_size = 1
queries_per_day = 10
[validity]
from = "now"
until = 2099-01-01T00:00:00Z
"""


def rotated(times: int) -> tuple[identity.HubIdentity, identity.HubIdentity]:
    genesis = current = identity.generate()
    for _ in range(times):
        current = current.rotated()
    return genesis, current


async def per_call(work, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await work()
    return (time.perf_counter() - started) / calls * 1e6


def per_call_sync(work, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - started) / calls * 1e6


async def lookup_costs(storage: Storage, registry: Registry, current: identity.HubIdentity, calls: int) -> tuple[float, float]:
    now = SYSTEM_CLOCK.now_ms()
    signed = descriptors.issue(current, "4601", "127.0.0.1:1", "", now, datasets=catalog.DEFAULT)
    record = PeerRecord(hub_id=current.hub_id_text, municipality="4601", public_key=current.genesis_public_key,
                        tls_cert_pem=current.tls_cert_pem.decode(), grpc_address="127.0.0.1:1", http_url="",
                        descriptor=signed.SerializeToString(), descriptor_valid_until_ms=now + 10**9, added_at_ms=now,
                        last_contact_ms=now)
    await storage.write(lambda s: s.upsert_peer(record))

    async def cached() -> None:
        caller = await registry.known_caller(current.hub_id_text)
        assert caller is not None and caller.public_key == current.public_key_raw

    async def uncached() -> None:
        peer = await storage.read(lambda s: s.get_peer(current.hub_id_text))
        assert peer is not None
        chain = descriptors.stored_chain(peer.descriptor)
        assert chain is not None and chain.current == current.public_key_raw

    return await per_call(cached, calls), await per_call(uncached, calls)


def verification_costs(current: identity.HubIdentity, other: identity.HubIdentity, calls: int) -> tuple[float, float]:
    now = SYSTEM_CLOCK.now_ms()
    signed = descriptors.issue(current, "4601", "127.0.0.1:1", "", now, datasets=catalog.DEFAULT)
    known = descriptors.verify_descriptor(signed, current.hub_id_text, current.tls_cert_pem, now).chain
    descriptor_us = per_call_sync(lambda: descriptors.verify_descriptor(signed, current.hub_id_text, current.tls_cert_pem,
                                                                        now, known), calls)

    def party(i: identity.HubIdentity) -> agreement_pb2.Party:
        return agreement_pb2.Party(kind=agreement_pb2.PARTY_KIND_HUB, id=i.hub_id_text, public_key=i.genesis_public_key, name="x")
    terms = terms_mod.from_toml(terms_mod.parse_toml(TERMS), party(current), party(other), now_ms=now)
    evidence = ag.countersign(ag.propose(terms, current.hub_id_text, current.identity_key, current.key_history),
                              other.hub_id_text, other.identity_key)
    document = evidence.to_document()
    agreement_us = per_call_sync(lambda: ag.from_document(document), calls)
    return descriptor_us, agreement_us


async def main(calls: int, verifications: int) -> None:
    other = identity.generate()
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(Path(tmp) / "hub.db")
        registry = Registry(storage, other.hub_id_text, "1103", SYSTEM_CLOCK, ChannelPool(SYSTEM_CLOCK),
                            audit=_no_audit, on_new_peer=_no_new_peer)
        rows = {}
        await lookup_costs(storage, registry, rotated(0)[1], calls // 4)  # warm-up: caches, SQLite pages
        for rotations in (0, 1, 10):
            _, current = rotated(rotations)
            cached, uncached = await lookup_costs(storage, registry, current, calls)
            descriptor_us, agreement_us = verification_costs(current, other, verifications)
            rows[rotations] = (cached, uncached, descriptor_us, agreement_us)
        storage.close()
    base = rows[0]
    print("rotations | request lookup µs (cached) | without cache | descriptor verify µs | agreement verify µs")
    for rotations, (cached, uncached, descriptor_us, agreement_us) in rows.items():
        print(f"{rotations:>9} | {cached:8.1f} ({cached / base[0]:.2f}x) | {uncached:8.1f} ({uncached / base[1]:.2f}x) | "
              f"{descriptor_us:8.1f} ({descriptor_us / base[2]:.2f}x) | {agreement_us:8.1f} ({agreement_us / base[3]:.2f}x)")
    print("(ratios against the same operation for a peer that never rotated, this run)")


async def _no_audit(*args, **kwargs) -> None:
    return None


async def _no_new_peer(hub_id: str) -> None:
    return None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--verifications", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.verifications))
