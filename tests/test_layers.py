"""The layering rules of docs/architecture.md, checked on the source (ast), not by convention.

* `node/` (the hub's core) never imports `federation` or `node.app`; `federation` never imports
  `node.app` (imports inside functions count too).
* No domain module (node/, federation/, outside node/app and node/api) uses the gRPC *server*
  API; the modules the document names as gRPC-free do not import grpc at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_API = {"server", "ServicerContext", "ServerInterceptor", "ssl_server_credentials", "add_generic_rpc_handlers"}
GRPC_FREE = ["node/ingest.py", "node/frames.py", "node/senml.py", "node/sensors.py", "node/admin.py", "node/identity.py",
             "node/keystore.py", "node/errors.py"]


def modules(*roots: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    found = [p for root in roots for p in sorted((REPO_ROOT / root).rglob("*.py"))]
    return [p for p in found if not any(p.relative_to(REPO_ROOT).as_posix().startswith(e) for e in exclude)]


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def uses_of(path: Path, name: str) -> set[str]:
    """Attributes used on `name` (e.g. grpc.aio.server -> {"aio", "server"})."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == name:
                found |= set(chain)
    return found


CORE = modules("node", exclude=("node/app", "node/api"))
FEDERATION = modules("federation")


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_the_core_imports_neither_federation_nor_the_app(path):
    bad = {m for m in imported(path) if m.split(".")[0] == "federation" or m.startswith("node.app")}
    assert not bad, f"{path.relative_to(REPO_ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", FEDERATION, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_federation_does_not_import_the_app(path):
    bad = {m for m in imported(path) if m.startswith("node.app")}
    assert not bad, f"{path.relative_to(REPO_ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", CORE + FEDERATION, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_domain_code_does_not_use_the_grpc_server_api(path):
    server_names = {m.rsplit(".", 1)[-1] for m in imported(path) if m.startswith("grpc")} & SERVER_API
    assert not server_names and not uses_of(path, "grpc") & SERVER_API, f"{path.relative_to(REPO_ROOT)} uses the gRPC server API"


@pytest.mark.parametrize("module", GRPC_FREE)
def test_the_modules_the_document_calls_grpc_free_are(module):
    assert not {m for m in imported(REPO_ROOT / module) if m.split(".")[0] == "grpc"}, module
