"""Refused unauthenticated calls: what a flood of them costs the hub, with refusals counted per
source and minute (node/audit.py RefusalTally) against the baseline of one audit entry per
refusal (the tally flushed after every count, as the hub wrote them before issue 11).

    .venv/bin/python -m bench.refusals            # 2,000 refused Query/Run calls per side
    .venv/bin/python -m bench.refusals --calls 500

Both sides run in the same process, one after the other, against the same real hub (grpc.aio
server on loopback, TLS, real SQLite file with synchronous=FULL): the same signed request from
an unknown caller, 100 calls in flight at a time. Printed: calls per second and audit entries
added per side, and their ratios. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import envelope
from node import hubdir, identity
from node.app.server import start
from node.audit import RefusalTally
from node.client import open_channel
from node.hub import Hub
from node.signing import hub_id_from_public_key

PASSPHRASE = b"bench-passphrase-0123456789"
RUN = "/smartregion.v1.Query/Run"


async def flood(channel: grpc.aio.Channel, body: bytes, calls: int, in_flight: int = 100) -> float:
    stub = channel.unary_unary(RUN, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    async def one() -> None:
        try:
            await stub(body, timeout=30)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
        else:
            raise AssertionError("an unauthenticated call was answered")

    started = time.perf_counter()
    for first in range(0, calls, in_flight):
        await asyncio.gather(*(one() for _ in range(min(in_flight, calls - first))))
    return time.perf_counter() - started


async def audit_entries(hub: Hub) -> int:
    return len(await hub.storage.read(lambda s: s.audit_rows()))


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "hub"
        hubdir.init_hub(data_dir, "1103", PASSPHRASE)
        hub = Hub.open(data_dir, PASSPHRASE)
        running = await start(hub, host="127.0.0.1", grpc_port=0, http_port=0)
        channel = open_channel(hub.endpoint.grpc_address, hub_id=hub.config.hub_id, cert_pem=hub.identity.tls_cert_pem, aio=True)
        stranger = Ed25519PrivateKey.generate()
        stranger_id = hub_id_from_public_key(identity.raw_public(stranger.public_key()))
        body = envelope.make(stranger, stranger_id, hub.config.hub_id, RUN).SerializeToString()
        tally = running.federation.refusals
        results = {}
        try:
            await flood(channel, body, 100)  # warm up: connection, caches
            await tally.flush()
            for side in ("baseline: one entry per refusal", "counted per source and minute"):
                before = await audit_entries(hub)
                if side.startswith("baseline"):
                    original = RefusalTally.count

                    async def count_and_write(self: RefusalTally, *args: str, _original=original) -> None:  # type: ignore[no-untyped-def]
                        await _original(self, *args)
                        await self.flush()

                    setattr(RefusalTally, "count", count_and_write)  # noqa: B010  # the baseline's behaviour
                    try:
                        seconds = await flood(channel, body, calls)
                    finally:
                        setattr(RefusalTally, "count", original)  # noqa: B010
                else:
                    seconds = await flood(channel, body, calls)
                await tally.flush()
                results[side] = (calls / seconds, await audit_entries(hub) - before)
        finally:
            await channel.close()
            await running.stop(grace=1)
    for side, (rate, entries) in results.items():
        print(f"{side:34s} {rate:8.0f} refused calls/s   {entries:6d} audit entries for {calls} calls")
    (base_rate, base_entries), (rate, entries) = results.values()
    print(f"ratio counted/baseline: throughput x{rate / base_rate:.2f}, audit entries x{entries / base_entries:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    asyncio.run(main(parser.parse_args().calls))
