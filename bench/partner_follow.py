"""What a partner's check of every hub's CURRENT key costs (federation/partner_client.py): a
query asked with PartnerSession.ask, which follows each answering hub other than the entry from
its own address (one RegionCatalog from the entry, then each hub's certificate and descriptor,
in parallel) before it checks the partials' keys, against the baseline measured in the same
run: the same query opened, verified and merged on the same pinned channel without following
(asker.ask, the offline rule).

    .venv/bin/python -m bench.partner_follow          # about 10 s on 2 cores

Three hubs served in this process (grpc.aio, TLS, SQLite files, keys.json under scrypt), all
peered, a partner with an agreement at each. "first ask" is a new session's first answer
(the followed histories are fetched); "later ask" a further answer in the same session
(within FOLLOW_INTERVAL_S nothing is fetched again). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.machine import machine_facts
from federation import partners
from federation.known_hubs import KnownHubs
from federation.partner_client import CHECKED_ONLINE, PartnerSession
from federation.query import asker
from node import hubdir
from node.api.v1 import admin_pb2, admin_pb2_grpc, query_pb2
from node.app.server import RunningHub, start
from node.client import open_channel
from node.clock import SYSTEM_CLOCK
from node.hub import Hub

PASSPHRASE = b"bench-partner-follow-passphrase"
TOWNS = ("1103", "4601", "4001")
TERMS = f"""\
[purpose]
code = "research"
description = "benchmark"

[data]
datasets = ["air_quality"]
metrics = ["pm25"]
aggregates = ["mean", "count"]
group_by = ["municipality", "time_bucket"]
smallest_bucket = "day"
longest_window_days = 31
min_group_size = 1
queries_per_day = 100000

[validity]
from = "now"
until = {(dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")}
"""


async def serve(path: Path, municipality: str) -> RunningHub:
    hubdir.init_hub(path, municipality, PASSPHRASE)
    return await start(Hub.open(path, PASSPHRASE, SYSTEM_CLOCK), host="127.0.0.1", grpc_port=0, http_port=0)


def admin(running: RunningHub):
    hub = running.hub
    channel = open_channel(hub.endpoint.grpc_address, hub_id=hub.config.hub_id, cert_pem=hub.identity.tls_cert_pem, aio=True)
    return channel, admin_pb2_grpc.AdminStub(channel), (("authorization", f"Bearer {hub.hub_dir.admin_token()}"),)


def query() -> query_pb2.QuerySpec:
    day = int(dt.datetime(2019, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    return query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=day, end_ms=day + 86_400_000,
                               bucket="day", group_by="municipality", purpose_code="research", deadline_ms=10_000)


async def main(repetitions: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-partner-follow-") as tmp:
        for key, value in machine_facts(Path(tmp)):
            print(f"{key}: {value}")
        hubs = [await serve(Path(tmp) / town, town) for town in TOWNS]
        admins = [admin(h) for h in hubs]
        partner = partners.PartnerKey(Ed25519PrivateKey.generate(), "Bench AS")
        try:
            for a, (_, stub, metadata) in zip(hubs, admins, strict=True):
                for b in hubs:
                    if b is not a:
                        await stub.AddPeer(admin_pb2.AddPeerRequest(address=b.hub.endpoint.grpc_address,
                                                                    hub_id=b.hub.config.hub_id), metadata=metadata)
                await stub.AddPartner(admin_pb2.AddPartnerRequest(name=partner.name, org_number="971564679",
                                                                  public_key_file=partners.public_document(partner)),
                                      metadata=metadata)
                offered = await stub.ProposeAgreement(admin_pb2.ProposeAgreementRequest(terms_toml=TERMS, to=partner.partner_id),
                                                      metadata=metadata)
                async with PartnerSession(partner, a.hub.endpoint.grpc_address, a.hub.config.hub_id) as session:
                    await session.accept(offered.terms.agreement_id)
            entry = hubs[0].hub
            address, hub_id = entry.endpoint.grpc_address, entry.config.hub_id
            baseline, first, later = [], [], []
            for _ in range(repetitions):
                async with PartnerSession(partner, address, hub_id, known_hubs=KnownHubs(Path(tmp) / "k.json")) as session:
                    started = time.perf_counter()
                    await asker.ask(session.channel, partner.key, partner.partner_id, hub_id, query())
                    baseline.append(time.perf_counter() - started)
                async with PartnerSession(partner, address, hub_id, known_hubs=KnownHubs(Path(tmp) / "k.json")) as session:
                    started = time.perf_counter()
                    answer = await session.ask(query())
                    first.append(time.perf_counter() - started)
                    assert {p.key_check for p in answer.provenance} == {CHECKED_ONLINE}, [p.key_check for p in answer.provenance]
                    started = time.perf_counter()
                    await session.ask(query())
                    later.append(time.perf_counter() - started)
        finally:
            for channel, _, _ in admins:
                await channel.close()
            for running in hubs:
                await running.stop(grace=1)
    base = statistics.median(baseline)
    print(f"hubs: {len(TOWNS)}; repetitions: {repetitions}")
    print(f"answer without following (asker.ask, baseline): median {base * 1000:.1f} ms")
    for name, samples in (("first ask of a session (follows 2 hubs)", first), ("later ask of the session", later)):
        m = statistics.median(samples)
        print(f"{name}: median {m * 1000:.1f} ms = {m / base:.2f}x the baseline "
              f"(min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main(args.repetitions))
