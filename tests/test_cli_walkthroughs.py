"""Every CLI walk-through of README.md and docs/federation.md, run as documented.

The commands are read from the documents, not copied: each `smartregion ...` line of a
walk-through's code blocks (continuation lines joined, `# comments` dropped) is run as a
subprocess in a scratch directory, against real hub processes started with the documented
`smartregion serve` (node.app.launcher runs exactly that command). What differs from a person's
run is substituted: the ids the documents show (hub ids, partner id, agreement ids) by the ids
this run created, the documented ports by free ones, README's placeholders by real values.
Where the document shows output (`#   ...` lines under a command), its text must appear in the
command's output (`...` stands for elided text). Every command must succeed, except the
refusals the documents describe, which must fail with their documented message.

So a document that drifts from the code — a renamed option, a changed message, a step that no
longer works — fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node.app.launcher import HubProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
FEDERATION = REPO_ROOT / "docs" / "federation.md"
PASSPHRASE = "walk-through-passphrase-0123456789"
UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HEX32 = re.compile(r"\b[0-9a-f]{32}\b")
COMMAND_TIMEOUT_S = 60


# -- reading the documents --------------------------------------------------------------------------

@dataclass
class Step:
    """One documented command: its words, the output lines shown under it, and the comments
    above it (which say what happens around it, e.g. that a hub is stopped)."""

    argv: list[str]
    shown: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)
    line: str = ""  # as written (continuations joined)


def code_blocks(text: str, info: str = r"(?:sh)?") -> list[str]:
    return re.findall(rf"^```{info}[ \t]*\n(.*?)^```[ \t]*$", text, re.MULTILINE | re.DOTALL)


def section(text: str, heading: str) -> str:
    """The text from `heading` (a markdown heading line) to the next heading of its level or above."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text[text.index(heading):].splitlines(keepends=True)
    out, fenced = [lines[0]], False
    for line in lines[1:]:
        fenced ^= line.startswith("```")
        if not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        out.append(line)
    return "".join(out)


def steps_of(block: str, known: Callable[[str], str] = str) -> list[Step]:
    """The block's commands; `known` substitutes what is already known in each line first
    (README's placeholders such as <Bergen's hub id> are not shell words)."""
    steps: list[Step] = []
    comments: list[str] = []
    lines = iter(block.splitlines())
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#   ") and steps and not comments:
            steps[-1].shown.append(stripped[4:].strip())
            continue
        if stripped.startswith("#") or not stripped:
            if stripped:
                comments.append(stripped)
            continue
        while stripped.endswith("\\"):
            stripped = stripped[:-1] + " " + next(lines).strip()
        argv = shlex.split(known(stripped), comments=True)
        if argv[0] == "export" and argv[1].startswith("SMARTREGION_PASSPHRASE="):
            continue  # the walk gives every command its passphrase in the environment
        assert argv[0] == "smartregion", f"not a smartregion command: {stripped}"
        steps.append(Step(argv[1:], before=comments, line=stripped))
        comments = []
    return steps


def toml_blocks_by_name(text: str) -> dict[str, str]:
    """Section 5.4's worked examples: (`NAME.toml` ... ```toml block)."""
    found = re.findall(r"\(`([a-z-]+\.toml)`.*?^```toml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return dict(found)


# -- running them ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(text: str) -> str:
    return " ".join(text.split())


def shown_in(shown: str, output: str) -> bool:
    """Does the output contain the documented line, `...`/`…` standing for elided text?"""
    fragments = [one_line(f) for f in re.split(r"\.\.\.|…", shown)]
    pattern = ".*?".join(re.escape(f) for f in fragments if f)
    table_free = re.sub("[\u2500-\u257f]", " ", output)  # rich's table borders
    return re.search(pattern, one_line(table_free)) is not None


@dataclass
class Walk:
    """A scratch directory where documented commands run, and what they created."""

    cwd: Path
    subst: dict[str, str] = field(default_factory=dict)
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)  # (previous word, word) -> word
    hubs: dict[str, HubProcess] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTREGION_")}
        env.update(SMARTREGION_PASSPHRASE=PASSPHRASE, COLUMNS="200")
        return env

    def learned(self, documented: str, real: str) -> None:
        """`documented` (an id in the document) is `real` in this run; so are their 8-digit prefixes."""
        self.subst[documented] = real
        if HEX32.fullmatch(documented):
            self.subst[documented[:8]] = real[:8]

    def substitute(self, text: str) -> str:
        for documented, real in self.subst.items():
            text = text.replace(documented, real)
        return text

    def run(self, argv: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess:
        argv = [self.tokens.get((before, word), word) for before, word in zip(["", *argv], argv, strict=False)]
        argv = [self.substitute(a) for a in argv]
        redirect = None
        if ">" in argv:  # `... > answer.json`, as a shell would
            argv, redirect = argv[: argv.index(">")], self.cwd / argv[argv.index(">") + 1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "node.app.cli.main", *argv], cwd=self.cwd, env=self.env(),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        self.log.append(f"{time.monotonic() - started:5.2f}s smartregion {shlex.join(argv)} -> {result.returncode}")
        assert "Traceback" not in result.stderr + result.stdout, result.stderr
        if expect_ok:
            assert result.returncode == 0, f"smartregion {shlex.join(argv)}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            if redirect:
                redirect.write_text(result.stdout)
        else:
            assert result.returncode != 0, f"expected a refusal: smartregion {shlex.join(argv)}\n{result.stdout}"
        return result

    def run_step(self, step: Step, learn: Callable[[Step, subprocess.CompletedProcess], None] | None = None) -> subprocess.CompletedProcess:
        """Run it; `learn` takes ids from its output before the shown output is compared."""
        # Placeholders learnt since the block was read are words only once substituted.
        argv = shlex.split(self.substitute(step.line), comments=True)[1:] if step.line else step.argv
        result = self.run(argv)
        if learn:
            learn(step, result)
        for shown in step.shown:
            assert shown_in(self.substitute(shown), result.stdout), (
                f"smartregion {shlex.join(step.argv)}: the document shows\n  {self.substitute(shown)}\nbut it printed\n{result.stdout}")
        return result

    def serve(self, name: str) -> None:
        """`smartregion serve --data-dir NAME` in the background (keep it running)."""
        config = (self.cwd / name / "hub.toml").read_text()
        grpc_port = int(re.search(r"grpc_port = (\d+)", config)[1])
        http_port = int(re.search(r"http_port = (\d+)", config)[1])
        hub = self.hubs.get(name) or HubProcess(self.cwd / name, PASSPHRASE, grpc_port=grpc_port, http_port=http_port)
        self.hubs[name] = hub.start()

    def settle(self, timeout: float = 20.0) -> None:
        """Until every running hub has delivered its agreement changes (they go asynchronously) —
        or, to a stopped hub, tried once and failed."""
        deadline = time.monotonic() + timeout
        down = {hub_id_of(self.cwd / name) for name, hub in self.hubs.items() if not alive(hub)}
        for name, hub in self.hubs.items():
            if not alive(hub):
                continue
            while any(peer not in down or attempts == 0 for peer, attempts in outbox(self.cwd / name)):
                assert time.monotonic() < deadline, f"{name} still has deliveries pending: {outbox(self.cwd / name)}"
                time.sleep(0.05)

    def stop_all(self) -> None:
        HubProcess.stop_all(list(self.hubs.values()), timeout=10)


def outbox(data_dir: Path) -> list[tuple[str, int]]:
    """(peer, failed attempts) of the hub's pending deliveries, read from its database (read-only)."""
    conn = sqlite3.connect(f"file:{data_dir / 'hub.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT peer_id, attempts FROM outbox").fetchall()
    finally:
        conn.close()


def alive(hub: HubProcess) -> bool:
    return hub.process is not None and hub.process.poll() is None


def hub_id_of(data_dir: Path) -> str:
    return re.search(r"^\s*id = \"([0-9a-f]{32})\"", (data_dir / "hub.toml").read_text(), re.MULTILINE)[1]


def walk_through(walk: Walk, blocks: list[str], hooks: dict[str, Callable[[Step], None]],
                 after: Callable[[Step, subprocess.CompletedProcess], None]) -> None:
    """Run every step of the blocks in order. `hooks`: a comment fragment -> what it says happens
    (run before the step under that comment); `after` learns ids from each step's output."""
    for block in blocks:
        for step in steps_of(block):
            for comment in step.before:
                for fragment, hook in hooks.items():
                    if fragment in comment:
                        hook(step)
            if step.argv[0] == "serve":
                walk.serve(walk.substitute(step.argv[step.argv.index("--data-dir") + 1]))
                continue
            walk.run_step(step, after)
            if step.argv[:2] in (["agreement", "propose"], ["agreement", "accept"], ["agreement", "revoke"], ["partner", "accept"]):
                walk.settle()


# -- docs/federation.md, section 9 --------------------------------------------------------------

DOC_HUB_IDS = {"Stavanger": "9d00cea3093e10db8de322069703c594", "Bergen": "52de16f31c930e24ea5ebe6decbf3fc7"}
DOC_PORTS = ("50161", "8261", "50162", "8262")


@pytest.fixture
def walk(tmp_path):
    walk = Walk(tmp_path)
    yield walk
    walk.stop_all()
    print("\n".join(walk.log))


def test_the_federation_walk_through_runs_as_documented(walk):
    text = FEDERATION.read_text(encoding="utf-8")
    nine = section(text, "## 9. Walk-through: Stavanger, Bergen and a university")
    blocks = code_blocks(nine, "")
    assert len(blocks) >= 8, "the walk-through's code blocks"
    for name, toml in toml_blocks_by_name(section(text, "### 5.4 Writing terms: the TOML file")).items():
        (walk.cwd / name).write_text(toml, encoding="utf-8")
    assert {p.name for p in walk.cwd.glob("*.toml")} == {"air-quality-to-bergen.toml", "traffic-from-stavanger.toml", "research-uis.toml"}
    for port in DOC_PORTS:
        walk.subst[port] = str(free_port())
    documented_agreements = list(dict.fromkeys(UUID.findall(nine)))  # in order of appearance
    documented_partner = re.search(r"Partner id ([0-9a-f]{32})", nine)[1]

    def learn(step: Step, result: subprocess.CompletedProcess) -> None:
        if step.argv[0] == "init":
            created = re.search(r"Created hub ([0-9a-f]{32}) for (\w+)", result.stdout)
            walk.learned(DOC_HUB_IDS[created[2]], created[1])
            # The terms name Stavanger's documented id (worked example 2's provider).
            for toml in walk.cwd.glob("*.toml"):
                toml.write_text(walk.substitute(toml.read_text()))
        elif step.argv[:2] == ["partner", "keygen"]:
            walk.learned(documented_partner, re.search(r"Partner id ([0-9a-f]{32})", result.stdout)[1])
        elif step.argv[:2] == ["agreement", "propose"]:
            real = UUID.search(result.stdout)[0]
            documented = documented_agreements[sum(1 for d in documented_agreements if d in walk.subst)]
            walk.subst[documented] = real
        elif step.argv[:2] == ["agreement", "accept"] and walk.substitute(step.argv[-1]) == walk.substitute(documented_agreements[0]):
            # "Proposing the same file again is refused while the first is live"
            walk.settle()
            refused = walk.run(["agreement", "propose", "--data-dir", "stavanger", "--terms", "air-quality-to-bergen.toml",
                                "--to", walk.subst[DOC_HUB_IDS["Bergen"]]], expect_ok=False)
            assert "ALREADY_EXISTS" in refused.stderr, refused.stderr
            first = walk.substitute(documented_agreements[0])
            assert f"overlaps agreement {first} for the same parties, dataset and time" in one_line(refused.stderr)

    def bergen_stopped(_: Step) -> None:
        walk.hubs["bergen"].stop(timeout=10)

    def bergen_started(_: Step) -> None:
        walk.serve("bergen")
        walk.settle()

    walk_through(walk, blocks, {"Bergen's hub is stopped": bergen_stopped, "Bergen's hub is started again": bergen_started}, learn)

    stavanger, bergen = (walk.subst[DOC_HUB_IDS[n]] for n in ("Stavanger", "Bergen"))
    # The refusals the walk-through describes, as described.
    refused = walk.run(["peer", "add", "--data-dir", "stavanger", "--address", f"127.0.0.1:{walk.subst['50162']}",
                        "--hub-id", "0" * 32], expect_ok=False)
    bergen_address = f"127.0.0.1:{walk.subst['50162']}"
    assert f"PERMISSION_DENIED: the server at {bergen_address} is hub {bergen}, not hub {'0' * 32}" in one_line(refused.stderr)
    refused = walk.run(["partner", "agreements", "--key", "uis.key", "--hub", f"127.0.0.1:{walk.subst['50161']}", "--hub-id", bergen],
                       expect_ok=False)
    assert f"the server at 127.0.0.1:{walk.subst['50161']} is hub {stavanger}, not hub {bergen}" in one_line(refused.stderr)
    # "Changing, say, min_group_size in the readable terms gives does NOT verify ..."
    exported = (walk.cwd / "a-bergen.json").read_text()
    assert '"min_group_size": 3' in exported
    (walk.cwd / "a-tampered.json").write_text(exported.replace('"min_group_size": 3', '"min_group_size": 1'))
    refused = walk.run(["agreement", "verify", "a-tampered.json"], expect_ok=False)
    assert "does NOT verify: the readable terms differ from the signed terms" in one_line(refused.stdout + refused.stderr)
    # "The document fields of the two exports are identical."
    docs = [json.loads((walk.cwd / f).read_text())["document"] for f in ("a-stavanger.json", "a-bergen.json")]
    assert docs[0] == docs[1]


# -- README.md --------------------------------------------------------------------------------------

# README's admin proposes "terms.toml" to the partner, whose query it then answers. The README
# leaves the file to the reader (docs/federation.md 5.4): these terms allow exactly that query.
README_TERMS = """\
[purpose]
code = "research"
description = "Monthly PM2.5 per municipality for a master's thesis"

[data]
datasets = ["air_quality"]
metrics = ["pm25"]
aggregates = ["mean", "count"]
group_by = ["municipality", "time_bucket"]
smallest_bucket = "month"
longest_window_days = 366
min_group_size = 1
queries_per_day = 10

[validity]
until = 2030-12-31
"""


def test_the_readme_walk_throughs_run_as_documented(walk):
    """For a municipality's admin, for a partner and for an auditor, in that order, against a
    hub made as the README says and a neighbour to pin (made with the same commands)."""
    text = README.read_text(encoding="utf-8")
    admin_blocks = code_blocks(section(text, "## For a municipality's admin"))
    partner_blocks = code_blocks(section(text, "## For a partner (business, university)"))
    auditor_blocks = code_blocks(section(text, "## For an auditor"))
    assert (len(admin_blocks), len(partner_blocks), len(auditor_blocks)) == (2, 1, 1)

    walk.run(["init", "--data-dir", "bergen", "--municipality", "Bergen", "--grpc-port", "0", "--http-port", "0"])
    walk.serve("bergen")
    (walk.cwd / "srv").mkdir()
    (walk.cwd / "terms.toml").write_text(README_TERMS)
    walk.subst.update({
        "/srv/hub": "srv/hub", "bergen.example:50051": walk.hubs["bergen"].endpoint["grpc_address"],
        "<Bergen's hub id>": hub_id_of(walk.cwd / "bergen"),
    })
    shutil.copy(REPO_ROOT / "node" / "data" / "air-quality-norway" / "Valand.csv", walk.cwd)  # the sensor's CSV, at hand
    grpc_port, http_port = free_port(), free_port()

    def learn(step: Step, result: subprocess.CompletedProcess) -> None:
        if step.argv[0] == "init":
            # The documented default ports (50051, 8080) may be taken on a shared machine.
            config_file = walk.cwd / "srv" / "hub" / "hub.toml"
            config = re.sub(r"grpc_port = \d+", f"grpc_port = {grpc_port}", config_file.read_text())
            config_file.write_text(re.sub(r"http_port = \d+", f"http_port = {http_port}", config))
            hub_id = re.search(r"Created hub ([0-9a-f]{32})", result.stdout)[1]
            walk.subst.update({"<id>": hub_id, "stavanger.example:50051": f"127.0.0.1:{grpc_port}"})
            walk.tokens.update({("--hub", "..."): f"127.0.0.1:{grpc_port}", ("--hub-id", "..."): hub_id})
        elif step.argv[:2] == ["partner", "keygen"]:
            walk.subst["<hub or partner id>"] = re.search(r"Partner id ([0-9a-f]{32})", result.stdout)[1]
        elif step.argv[:2] == ["agreement", "propose"]:
            walk.subst["<agreement id>"] = UUID.search(result.stdout)[0]
        elif step.argv[:2] == ["sensor", "add"]:
            walk.subst["<sensor id>"] = re.search(r"Enrolled sensor ([0-9a-f]{32})", result.stdout)[1]

    # The partner makes its key before the admin registers it ("send uis.key.pub.json to each
    # hub's admin"): its keygen line runs first.
    partner_steps = steps_of(partner_blocks[0])
    keygen = partner_steps.pop(0)
    assert keygen.argv[:2] == ["partner", "keygen"]
    walk.run_step(keygen, learn)
    admin_steps = [step for block in admin_blocks for step in steps_of(block, walk.substitute)]
    export = next(s for s in admin_steps if s.argv[:2] == ["agreement", "export"])
    admin_steps.remove(export)  # exported once the partner has countersigned (below)
    for step in admin_steps:
        if step.argv[0] == "serve":
            walk.serve("srv/hub")
            continue
        walk.run_step(step, learn)
    for step in partner_steps:
        walk.run_step(step, learn)
        if step.argv[:2] == ["partner", "accept"]:
            walk.run_step(export, learn)
    for step in steps_of(auditor_blocks[0]):
        walk.run_step(step, learn)

    # What the commands did, checked through the hub itself.
    answer = json.loads((walk.cwd / "answer.json").read_text())
    assert answer["rows"] and {r["group"] for r in answer["rows"]} == {"1103"}, answer["rows"][:2]
    assert answer["unsigned"]["key_check"] == {walk.subst["<id>"]: "current key checked online"}
    # The partner's runs remember the hub's key history beside its key (docs/querying.md 4.5).
    known = walk.cwd / "uis.key.known-hubs.json"
    assert known.stat().st_mode & 0o777 == 0o600
    assert list(json.loads(known.read_text())["hubs"]) == [walk.subst["<id>"]]
    status = json.loads(walk.run(["status", "--data-dir", "srv/hub", "--json"]).stdout)
    assert sum(int(c["readings"]) for c in status["counts"]) > 8000
    consents = json.loads(walk.run(["consent", "list", "--data-dir", "srv/hub", "--json"]).stdout)
    assert [(c["subject_id"], c["purpose_code"]) for c in consents] == [("household-17", "research")]
