"""Attack (entry hub) against the documented partner clients: examples/python_partner.py and
the Node.js client examples/node-partner/query.mjs, the code docs/querying.md tells a
partner to run.

Tried: a dishonest entry hub (a server holding hub A's identity and certificate, so it passes
the client's pin) relays the partner's query for hubs A, B and C (`--ask-hub` x 3) to the real
hub A, then drops B's provenance entry and sealed partial and signs the summary again with
A's key (as in test_attack_entry_drops_named_hub, which shows the hub's own CLI code accepts).

RESULT: BROKE in both clients (both measured here, node v20.20.2): exit 0, `partial: false`, no missing hubs, the
region-wide mean 6.0 (A and C only) instead of 20.67 (error 71 %). (The Node client runs only
where `node` and its npm dependencies are installed; it is skipped otherwise.)
Smallest fix: both clients (python_partner.py merge/open_partials, smartregion.mjs
openPartials) and federation/query/asker.py: require the provenance to list exactly the hubs of
the signed `hub_ids`, and `partial`/`missing_hubs` to match the statuses; and say so in
docs/querying.md 6.
FIXED (askerfix): both clients check the same (python_partner.py check_complete,
smartregion.mjs checkComplete) and exit 1.
"""

from __future__ import annotations

import sys
import time

import grpc
import pytest
import pytest_asyncio
from attack_helpers import region, terms_toml

from federation import partials, partners
from node.api.v1 import query_service_pb2_grpc
from tests.conftest import PASSPHRASE
from tests.test_partner_clients import PYTHON_EXAMPLE, node_client, ok_output, run_client  # noqa: F401 (node_client: a fixture)

pytestmark = pytest.mark.asyncio(loop_scope="module")
TRUE_MEAN = (5.0 + 50.0 + 7.0) / 3


class DroppingEntryHub(query_service_pb2_grpc.QueryServicer):
    """Query.Run under hub A's identity: asks the real A, drops hub `drop`, signs again as A."""

    def __init__(self, entry, drop: str) -> None:
        self.entry, self.drop = entry, drop

    async def Run(self, request, context):
        answer = await self.entry.query.Run(request, timeout=15)
        kept = [p for p in answer.provenance if p.hub_id != self.drop]
        del answer.provenance[:]
        answer.provenance.extend(kept)
        partials.sign_answer(self.entry.live.hub.identity, answer, partials.query_digest(answer.query.payload), int(time.time() * 1000))
        return answer


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacked(tmp_path_factory):
    base = tmp_path_factory.mktemp("clients")
    key_file = base / "partner" / "angriper.key"
    key_file.parent.mkdir()
    partner = partners.keygen(key_file, "Angriper AS", PASSPHRASE.encode())
    async with region(base, terms_toml(aggregates=["mean", "count"]), {0: [[5.0] * 24], 1: [[50.0] * 24], 2: [[7.0] * 24]},
                      partner=partner) as r:
        a, b, _c = r.hubs
        server = grpc.aio.server()
        query_service_pb2_grpc.add_QueryServicer_to_server(DroppingEntryHub(a, b.id), server)
        identity = a.live.hub.identity
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(identity.tls_key_pem, identity.tls_cert_pem)]))
        await server.start()
        try:
            yield r, key_file, f"127.0.0.1:{port}"
        finally:
            await server.stop(0)


def _args(r, key_file, address) -> list[str]:
    a, b, c = r.hubs
    return ["--key", str(key_file), "--hub", address, "--hub-id", a.id, "--dataset", "air_quality", "--metric", "pm25",
            "--aggregate", "mean", "--from", "2019-01-01", "--to", "2019-01-02", "--purpose", "environmental_monitoring",
            "--ask-hub", a.id, "--ask-hub", b.id, "--ask-hub", c.id]


async def _attack(client: list[str], attacked) -> None:
    r, key_file, address = attacked
    rc, out, err = await run_client(*client, *_args(r, key_file, address))
    if rc != 0:
        return  # refused: held
    got = ok_output(rc, out, err)
    [row] = got["rows"]
    assert got["partial"] or got["missing_hubs"], (
        f"accepted as complete without hub B: mean {row['value']:g} instead of {TRUE_MEAN:.2f} "
        f"(error {abs(row['value'] - TRUE_MEAN) / TRUE_MEAN:.0%})")


async def test_the_python_example_detects_a_dropped_hub(attacked):
    await _attack([sys.executable, str(PYTHON_EXAMPLE)], attacked)


async def test_the_node_client_detects_a_dropped_hub(node_client, attacked):  # noqa: F811 (the fixture)
    await _attack(node_client, attacked)
