"""compose/: the file is valid, and every smartregion command it runs exists with those options.
(No Docker engine runs here, so the containers themselves are not started by the tests.)"""

from __future__ import annotations

import functools
import shlex
import subprocess
import sys

import yaml

from tests.conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "compose" / "compose.yaml"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def invocations(service: dict) -> list[list[str]]:
    """Every smartregion command line a service runs (its command, entrypoint and healthcheck)."""
    found = []
    entrypoint = service.get("entrypoint") or ["smartregion"]
    command = service.get("command") or []
    if entrypoint[:2] == ["sh", "-c"]:
        for part in " ".join(command).split("&&"):
            words = shlex.split(part.replace("exec ", "", 1))
            if words and words[0] == "smartregion":
                found.append(words[1:])
    else:
        found.append(list(command))
    test = (service.get("healthcheck") or {}).get("test") or []
    if test[:2] == ["CMD", "smartregion"]:
        found.append(test[2:])
    return found


def help_text(words: list[str]) -> str:
    path = []
    for word in words:
        if word.startswith("-"):
            break
        path.append(word)
    return _help(tuple(path))


@functools.cache
def _help(path: tuple[str, ...]) -> str:
    result = subprocess.run([sys.executable, "-m", "node.app.cli.main", *path, "--help"], capture_output=True, text=True,
                            env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"}, cwd=REPO_ROOT)
    assert result.returncode == 0, f"`smartregion {' '.join(path)}` does not exist:\n{result.stderr}"
    return result.stdout


def test_compose_file_is_well_formed():
    doc = load()
    hubs = {name: s for name, s in doc["services"].items() if name != "setup"}
    assert len(hubs) == 5
    for name, service in hubs.items():
        assert f"{name}:/data" in service["volumes"]
        assert service["healthcheck"]["test"][:2] == ["CMD", "smartregion"]
    setup = doc["services"]["setup"]
    assert set(setup["depends_on"]) == set(hubs)
    assert all(v["condition"] == "service_healthy" for v in setup["depends_on"].values())
    mounted = {v.split(":")[0] for v in setup["volumes"]}
    assert set(hubs) <= mounted and set(mounted) <= set(doc["volumes"])
    dockerfile = (COMPOSE.parent / "Dockerfile").read_text()
    copied = [w for line in dockerfile.splitlines() if line.startswith("COPY ") for w in line.split()[1:-1]]
    assert set(copied) == {"pyproject.toml", "README.md", "node", "federation"}
    assert all((REPO_ROOT / path).exists() for path in copied)


def test_every_command_exists_with_its_options():
    checked = 0
    for name, service in load()["services"].items():
        for words in invocations(service):
            text = help_text(words)
            for option in (w for w in words if w.startswith("--")):
                assert option.split("=")[0] in text, f"service {name}: `{option}` is not an option of `smartregion {words[0]}`"
            checked += 1
    assert checked >= 11  # five inits, five serves, the set-up job (and the health checks)
