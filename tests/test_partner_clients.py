"""Partner clients outside the hub's code base, against a live hub: the Node.js client in
examples/node-partner/ and the Python example of docs/querying.md (examples/python_partner.py)
must get exactly the rows the hub's own Python client gets for the same query.

The hub runs in this process (grpc.aio), so the clients run as asyncio subprocesses while the
event loop keeps serving. The Node tests skip only when `node` is not installed; their npm
dependencies are installed from examples/node-partner/package-lock.json (`make examples`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from federation import answers, partials, partners
from federation.partner_client import PartnerSession
from federation.query import asker
from node.api.v1 import admin_pb2, agreement_pb2, ingest_pb2, query_pb2, query_service_pb2_grpc
from node.senml import Reading
from tests.conftest import PASSPHRASE, REPO_ROOT, LiveHub, make_hub_dir, start_live_hub
from tests.node_helpers import NODE_CLIENT, node_partner_client

PYTHON_EXAMPLE = REPO_ROOT / "examples" / "python_partner.py"
CLIENT_TIMEOUT_S = 60


def utc_ms(year: int, month: int, day: int = 1, hour: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, tzinfo=dt.UTC).timestamp() * 1000)


def research_terms(min_group_size: int) -> str:
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"""
[purpose]
code = "research"
description = "Fine particulate matter and health, a university study"
[data]
datasets = ["air_quality"]
metrics = ["pm25"]
aggregates = ["mean", "count", "min", "max", "stddev", "quantile"]
group_by = ["municipality", "time_bucket"]
smallest_bucket = "month"
longest_window_days = 366
min_group_size = {min_group_size}
queries_per_day = 100
[validity]
from = "now"
until = {until}
"""


# Three stations in January 2019 (released), one in February (fewer than min_group_size = 2
# contributors: suppressed). January holds 11 readings: a quantile's coarse bins need >= 10.
READINGS = {
    "station-a": [(utc_ms(2019, 1, 3, 10), 7.5), (utc_ms(2019, 1, 17, 4), 12.25), (utc_ms(2019, 1, 18, 4), 11.0),
                  (utc_ms(2019, 1, 19, 4), 10.5), (utc_ms(2019, 2, 9, 8), 30.0)],
    "station-b": [(utc_ms(2019, 1, 5, 12), 3.0), (utc_ms(2019, 1, 21), 9.75), (utc_ms(2019, 1, 22), 10.25),
                  (utc_ms(2019, 1, 23), 8.5)],
    "station-c": [(utc_ms(2019, 1, 30, 23), 21.5), (utc_ms(2019, 1, 31, 1), 11.5), (utc_ms(2019, 1, 31, 2), 9.0)],
}


@dataclass
class World:
    live: LiveHub
    key_file: Path
    partner: partners.PartnerKey
    agreement_id: str

    @property
    def address(self) -> str:
        return self.live.hub.endpoint.grpc_address

    @property
    def hub_id(self) -> str:
        return self.live.hub.config.hub_id

    def client_args(self, *query: str) -> list[str]:
        return ["--key", str(self.key_file), "--hub", self.address, "--hub-id", self.hub_id, *query]


@pytest.fixture
async def world(tmp_path) -> World:
    """A live hub with readings, a registered partner, and an active research agreement."""
    live = await start_live_hub(make_hub_dir(tmp_path / "hub", "1103"))
    try:
        for name, points in READINGS.items():
            sensor = await live.add_sensor(tmp_path, name, metrics=["pm25"])
            sealed = sensor.seal([[Reading("pm25", t, v) for t, v in points]])
            response = await live.ingest.SubmitBatch(
                ingest_pb2.SubmitBatchRequest(frames=[ingest_pb2.SealedFrame(frame=f) for f in sealed]), timeout=20)
            assert sum(r.readings_stored for r in response.receipts) == len(points)

        key_file = tmp_path / "partner" / "uis.key"
        key_file.parent.mkdir()
        partner = partners.keygen(key_file, "Universitetet i Stavanger", PASSPHRASE.encode())
        await live.admin.AddPartner(admin_pb2.AddPartnerRequest(
            name="Universitetet i Stavanger", org_number="971564679",
            public_key_file=partners.public_file_path(key_file).read_bytes()), metadata=live.admin_metadata)
        offered = await live.admin.ProposeAgreement(admin_pb2.ProposeAgreementRequest(
            terms_toml=research_terms(min_group_size=2), to=partner.partner_id), metadata=live.admin_metadata)
        async with PartnerSession(partner, live.hub.endpoint.grpc_address, live.hub.config.hub_id) as session:
            outcome = await session.accept(offered.terms.agreement_id)
        assert outcome.state == agreement_pb2.AGREEMENT_STATE_ACTIVE
        yield World(live, key_file, partner, offered.terms.agreement_id)
    finally:
        await live.stop()


async def python_answer(world: World, spec: query_pb2.QuerySpec):
    """The same query asked through the hub's own partner code (what `smartregion query run` does)."""
    async with PartnerSession(world.partner, world.address, world.hub_id) as session:
        return await asker.ask(session.channel, world.partner.key, world.partner.partner_id, world.hub_id, spec)


def client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTREGION_")}
    env["SMARTREGION_PASSPHRASE"] = PASSPHRASE
    return env


async def run_client(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run a client without blocking the event loop the hub is served from."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO_ROOT, env=env or client_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{argv[:2]} did not finish within {CLIENT_TIMEOUT_S}s") from None
    return process.returncode, out.decode(), err.decode()


def ok_output(rc: int, out: str, err: str) -> dict:
    assert rc == 0, f"the client failed (exit {rc}):\n{err}"
    return json.loads(out)


@pytest.fixture(scope="session")
def node_client() -> list[str]:
    return node_partner_client()


QUERIES = {
    # Monthly means per municipality: January released, February suppressed (one station).
    "mean-by-month": (["--aggregate", "mean", "--from", "2019-01-01", "--to", "2019-03-01", "--bucket", "month",
                       "--group-by", "municipality"],
                      dict(aggregate="mean", start_ms=utc_ms(2019, 1), end_ms=utc_ms(2019, 3), bucket="month",
                           group_by="municipality")),
    "median-window": (["--aggregate", "quantile", "--quantile", "0.5", "--from", "2019-01-01", "--to", "2019-02-01",
                       "--group-by", "municipality"],
                      dict(aggregate="quantile", quantile=0.5, start_ms=utc_ms(2019, 1), end_ms=utc_ms(2019, 2),
                           bucket="window", group_by="municipality")),
    "median-region": (["--aggregate", "quantile", "--quantile", "0.5", "--from", "2019-01-01", "--to", "2019-02-01"],
                      dict(aggregate="quantile", quantile=0.5, start_ms=utc_ms(2019, 1), end_ms=utc_ms(2019, 2),
                           bucket="window", group_by="region")),
    "stddev-filtered": (["--aggregate", "stddev", "--from", "2019-01-01", "--to", "2019-02-01", "--bucket", "month",
                         "--municipality", "1103", "--deadline-ms", "5000"],
                        dict(aggregate="stddev", start_ms=utc_ms(2019, 1), end_ms=utc_ms(2019, 2), bucket="month",
                             group_by="region", municipalities=["1103"], deadline_ms=5000)),
}
COMMON_ARGS = ["--dataset", "air_quality", "--metric", "pm25", "--purpose", "research"]


def spec_of(fields: dict) -> query_pb2.QuerySpec:
    return query_pb2.QuerySpec(dataset="air_quality", metric="pm25", purpose_code="research", **fields)


async def assert_same_rows_as_python(world: World, client: list[str], tmp_path: Path, *, save: bool,
                                     env: dict[str, str] | None = None) -> dict[str, dict]:
    """Each query of QUERIES through `client` and through the hub's own code: the same rows.
    Returns the client's outputs by query name."""
    outputs = {}
    for name, (args, fields) in QUERIES.items():
        extra = ["--save", str(tmp_path / f"{name}.json")] if save else []
        got = ok_output(*await run_client(*client, *world.client_args(*COMMON_ARGS, *args, *extra), env=env))
        expected = await python_answer(world, spec_of(fields))
        assert expected.rows, f"{name}: the reference answer is empty; the test data is wrong"
        if name == "median-region":  # the coarse-sketch merge really runs in the client
            assert not expected.rows[0].suppressed and expected.rows[0].value > 0
        assert got["rows"] == answers.readable_rows(expected), name
        assert got["partial"] is False and got["missing_hubs"] == []
        assert got["answered_by"] == world.hub_id
        [source] = got["provenance"]
        assert source == {"hub_id": world.hub_id, "municipality": "1103", "status": "answered", "reason": "",
                          "agreement_id": world.agreement_id, "signature_verified": True}, name
        if save:  # the Node client's answer file verifies offline, like `smartregion query verify`
            verified = answers.verify((tmp_path / f"{name}.json").read_bytes())
            assert verified.verified_hubs == [world.hub_id]
        outputs[name] = got
    return outputs


async def assert_refuses_the_wrong_purpose(world: World, client: list[str], env: dict[str, str] | None = None) -> None:
    """The agreement is for research, not commercial development: the hub refuses, the client
    prints the status and reason label and exits 1."""
    args = [a if a != "research" else "commercial_development" for a in world.client_args(*COMMON_ARGS, *QUERIES["mean-by-month"][0])]
    rc, out, err = await run_client(*client, *args, env=env)
    assert (rc, out) == (1, ""), err
    assert "PERMISSION_DENIED (permission_denied)" in err and "purpose 'commercial_development'" in err, err


async def test_node_client_gets_the_rows_python_gets(node_client, world, tmp_path):
    outputs = await assert_same_rows_as_python(world, node_client, tmp_path, save=True)
    january, february = outputs["mean-by-month"]["rows"]
    in_january = [v for points in READINGS.values() for t, v in points if t < utc_ms(2019, 2)]
    assert (january["bucket"], january["readings"], january["contributors"]) == ("2019-01", len(in_january), 3)
    assert january["value"] == pytest.approx(sum(in_january) / len(in_january))
    assert february == {"group": "1103", "bucket": "2019-02", "bucket_start_ms": utc_ms(2019, 2), "value": None,
                        "readings": 0, "contributors": 0, "suppressed": True, "noisy": False}


# Runs the example with the hub's own packages made unimportable, so it must use the modules
# generated from proto/ exactly as docs/querying.md tells a partner to.
WITHOUT_HUB_CODE = ("import runpy, sys; sys.modules['node'] = sys.modules['federation'] = None; "
                    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.parametrize("modules", ["shipped", "generated"])
async def test_python_example_gets_the_rows_python_gets(world, tmp_path, modules):
    client = [sys.executable, str(PYTHON_EXAMPLE)]
    if modules == "generated":
        generated = tmp_path / "generated"
        generated.mkdir()
        protos = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "proto" / "smartregion" / "v1").glob("*.proto"))
        rc, _, err = await run_client(sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={generated}",
                                      f"--grpc_python_out={generated}", *protos)
        assert rc == 0, err
        client = [sys.executable, "-c", WITHOUT_HUB_CODE, str(PYTHON_EXAMPLE)]
        env = {**client_env(), "PYTHONPATH": str(generated)}
    else:
        env = client_env()
    await assert_same_rows_as_python(world, client, tmp_path, save=False, env=env)
    await assert_refuses_the_wrong_purpose(world, client, env=env)


async def test_node_client_reports_refusals(node_client, world, tmp_path):
    query = [*COMMON_ARGS, *QUERIES["mean-by-month"][0]]
    await assert_refuses_the_wrong_purpose(world, node_client)

    # A window not on month boundaries (UTC): refused before any agreement is consulted.
    misaligned = [a if a != "2019-03-01" else "2019-03-02" for a in world.client_args(*query)]
    rc, _out, err = await run_client(*node_client, *misaligned)
    assert rc == 1 and "INVALID_ARGUMENT (invalid_request)" in err and "month boundaries" in err, err

    # Pinning another hub id: the client refuses to talk before sending anything.
    other = "0" * 32
    pinned_wrong = [a if a != world.hub_id else other for a in world.client_args(*query)]
    rc, _out, err = await run_client(*node_client, *pinned_wrong)
    assert rc == 1 and f"is hub {world.hub_id}, not hub {other}" in err, err

    # The wrong passphrase: the keystore does not open.
    rc, _out, err = await run_client(*node_client, *world.client_args(*query),
                                    env={**client_env(), "SMARTREGION_PASSPHRASE": "not-the-passphrase-at-all"})
    assert rc == 1 and "wrong passphrase" in err, err

    # A partner the hub does not know: unauthenticated.
    stranger = tmp_path / "stranger.key"
    partners.keygen(stranger, "Stranger AS", PASSPHRASE.encode())
    as_stranger = [a if a != str(world.key_file) else str(stranger) for a in world.client_args(*query)]
    rc, _out, err = await run_client(*node_client, *as_stranger)
    assert rc == 1 and "UNAUTHENTICATED (unauthenticated)" in err, err


class DishonestEntryHub(query_service_pb2_grpc.QueryServicer):
    """Serves Query.Run with the real hub's identity and certificate (so it passes the pin), asks
    the real hub, and alters the answer before returning it."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.tamper = None

    async def Run(self, request, context):
        answer = await query_service_pb2_grpc.QueryStub(self.world.live.channel).Run(request, timeout=15)
        self.tamper(answer)
        return answer


def resign(world: World, answer) -> None:
    partials.sign_answer(world.live.hub.identity, answer, partials.query_digest(answer.query.payload), int(time.time() * 1000))


def change_a_status_reason(world: World, answer) -> None:
    answer.provenance[0].reason = "the entry hub's own words"


def count_a_hub_twice(world: World, answer) -> None:
    """List one hub's genuine sealed partial twice and sign it all as the entry hub."""
    answer.provenance.add().CopyFrom(answer.provenance[0])
    resign(world, answer)


def alter_a_sealed_partial(world: World, answer) -> None:
    """The entry hub cannot read the partial; flipping a byte and signing anew must not pass."""
    sealed = bytearray(answer.provenance[0].sealed_partial)
    sealed[-1] ^= 1
    answer.provenance[0].sealed_partial = bytes(sealed)
    resign(world, answer)


def claim_another_agreement(world: World, answer) -> None:
    answer.provenance[0].agreement_id = "urn:uuid:00000000-0000-4000-8000-000000000000"
    resign(world, answer)


TAMPERINGS = {
    change_a_status_reason: "differs from what the entry hub signed",
    count_a_hub_twice: "is listed twice in the answer",
    alter_a_sealed_partial: "does not open with this query's key",
    claim_another_agreement: "agreement",
}


@pytest.fixture(params=["node", "python"])
def any_client(request) -> list[str]:
    if request.param == "node":
        return request.getfixturevalue("node_client")
    return [sys.executable, str(PYTHON_EXAMPLE)]


async def test_clients_refuse_an_answer_the_hubs_did_not_sign(any_client, world):
    dishonest = DishonestEntryHub(world)
    server = grpc.aio.server()
    query_service_pb2_grpc.add_QueryServicer_to_server(dishonest, server)
    identity = world.live.hub.identity
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(identity.tls_key_pem, identity.tls_cert_pem)]))
    await server.start()
    try:
        args = ["--key", str(world.key_file), "--hub", f"127.0.0.1:{port}", "--hub-id", world.hub_id,
                *COMMON_ARGS, *QUERIES["mean-by-month"][0]]
        dishonest.tamper = lambda answer: None
        ok_output(*await run_client(*any_client, *args))  # passed through unchanged: accepted
        for tamper, message in TAMPERINGS.items():
            dishonest.tamper = lambda answer, tamper=tamper: tamper(world, answer)
            rc, out, err = await run_client(*any_client, *args)
            assert (rc, out) == (1, ""), f"{tamper.__name__}: accepted"
            assert message in err, f"{tamper.__name__}: {err}"
    finally:
        await server.stop(0)


GUIDE = REPO_ROOT / "docs" / "querying.md"
QUOTED_FILES = {
    "python": [PYTHON_EXAMPLE],
    "js": [NODE_CLIENT / "smartregion.mjs", NODE_CLIENT / "query.mjs"],
}


def test_the_guide_quotes_the_tested_clients_verbatim():
    """Every ```python and ```js block of docs/querying.md is a verbatim part of the example
    clients the tests above run, so the guide cannot drift from working code."""
    blocks = re.findall(r"^```(python|js)\n(.*?)^```$", GUIDE.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert {language for language, _ in blocks} == set(QUOTED_FILES)
    sources = {language: [p.read_text(encoding="utf-8") for p in paths] for language, paths in QUOTED_FILES.items()}
    for language, block in blocks:
        assert any(block in source for source in sources[language]), (
            f"this {language} block of {GUIDE.name} is not in {[p.name for p in QUOTED_FILES[language]]}:\n{block}")


def mixture_cases() -> list[tuple[list[query_pb2.CoarseSketch], float]]:
    """Region-wide quantile components (several hubs' sub-cell sketches) of every kind: counts
    from 1 to 2^40 (the bisection, beyond what placing would finish), negative, zero-holding and
    wide (level > 8) bins, and q from 0 to 1."""
    rng = random.Random(20191)
    cases = []
    for _ in range(120):
        sketches = []
        for _ in range(rng.randint(1, 5)):
            at, intervals = rng.randint(-3000, 3000), []
            for _ in range(rng.randint(1, 10)):
                level = rng.randint(3, 10)
                index = -(-at // (1 << level))
                intervals.append(query_pb2.CoarseBin(level=level, index=index, count=rng.choice([1, 3, 10, 77, 2**40])))
                at = ((index + 1) << level) + rng.randint(0, 50)
            sketches.append(query_pb2.CoarseSketch(intervals=intervals))
        cases.append((sketches, rng.choice([0.0, 1.0, rng.random()])))
    return cases


def test_the_example_clients_read_the_mixture_as_the_hub_does(node_client):
    """The mixture of every hub's sub-cell sketches (docs/querying.md 7.6), read by the Python
    example (exactly partials.mixture_quantile's value) and by the Node client (to its pow's last
    bit: V8's and the C library's differ there, as the guide says)."""
    loader = importlib.util.spec_from_file_location("python_partner", PYTHON_EXAMPLE)
    assert loader is not None and loader.loader is not None
    example = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(example)
    cases = mixture_cases()
    hub = [partials.mixture_quantile(sketches, q) for sketches, q in cases]
    assert [example.mixture_quantile(sketches, q) for sketches, q in cases] == hub
    as_json = json.dumps([[[{"intervals": [{"level": b.level, "index": b.index, "count": b.count} for b in s.intervals]}
                            for s in sketches], q] for sketches, q in cases])
    script = ("import { mixtureQuantile } from './smartregion.mjs';"
              "let input = ''; process.stdin.on('data', (d) => { input += d; });"
              "process.stdin.on('end', () => console.log(JSON.stringify(JSON.parse(input).map(([s, q]) => mixtureQuantile(s, q)))));")
    done = subprocess.run([node_client[0], "--input-type=module", "-e", script], input=as_json, capture_output=True, text=True,
                          cwd=NODE_CLIENT, timeout=CLIENT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    node = json.loads(done.stdout)
    assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300) for a, b in zip(node, hub, strict=True)), (node, hub)
    # whole rows: two hubs' cells, one with sub-cell sketches, one with its merge only
    days, other = cases[7][0], cases[8][0]
    spec = query_pb2.QuerySpec(aggregate="quantile", quantile=0.3, group_by="region", bucket="window", start_ms=0, end_ms=1)
    cells = [query_pb2.Cell(group="region", count=9, contributors=2, coarse=partials.merged(days), subcells=days),
             query_pb2.Cell(group="region", count=9, contributors=2, coarse=other[0])]
    [row] = partials.merge([query_pb2.PartialResult(cells=[c]) for c in cells], spec)
    assert row.value == partials.mixture_quantile([*days, other[0]], 0.3) != partials.coarse_quantile(partials.merged(days), 0.3)
    [example_row] = example.merge([query_pb2.PartialResult(cells=[c]) for c in cells], spec)
    assert example_row["value"] == row.value

    def plain(s: query_pb2.CoarseSketch) -> dict:
        return {"intervals": [{"level": b.level, "index": b.index, "count": b.count} for b in s.intervals]}
    as_json = json.dumps([{"cells": [{"group": "region", "bucket_start_ms": 0, "count": c.count, "contributors": 2,
                                      "suppressed": False, "coarse": plain(c.coarse), "subcells": [plain(s) for s in c.subcells]}]}
                          for c in cells])
    script = ("import { mergePartials } from './smartregion.mjs';"
              "let input = ''; process.stdin.on('data', (d) => { input += d; });"
              "process.stdin.on('end', () => console.log(JSON.stringify(mergePartials(JSON.parse(input),"
              " { bucket: 'window', group_by: 'region', aggregate: 'quantile', quantile: 0.3 }))));")
    done = subprocess.run([node_client[0], "--input-type=module", "-e", script], input=as_json, capture_output=True, text=True,
                          cwd=NODE_CLIENT, timeout=CLIENT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    [node_row] = json.loads(done.stdout)
    assert math.isclose(node_row["value"], row.value, rel_tol=1e-12), (node_row, row.value)
