"""The folder layout is the layering (docs/architecture.md §1): the hub core (`node/`) imports
neither federation nor the processes that wire it; federation never imports those processes;
domain code never imports the gRPC *server* API. Read from the code's own imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules(package: str) -> list[Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "api/v1" not in p.as_posix()]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _layer(path: Path) -> str:
    relative = path.relative_to(ROOT).as_posix()
    if relative.startswith("node/app/"):
        return "app"
    return relative.split("/", 1)[0]  # "node" (core) or "federation"


FORBIDDEN = {
    "node": ("federation", "node.app"),
    "federation": ("node.app",),
}


def _upward_imports(path: Path, layer: str) -> list[str]:
    return [
        f"{path.name} ({layer}) imports {name}"
        for name in sorted(_imports(path))
        for banned in FORBIDDEN.get(layer, ())
        if name == banned or name.startswith(banned + ".")
    ]


def test_core_and_federation_never_import_upward() -> None:
    found = [v for package in ("node", "federation") for path in _modules(package) for v in _upward_imports(path, _layer(path))]
    assert found == []


def test_domain_code_never_imports_the_grpc_server_api() -> None:
    # grpc.aio as a *client* (channels, stubs) is allowed in federation; the server side is app's.
    offenders = []
    for package in ("node", "federation"):
        for path in _modules(package):
            if _layer(path) == "app":
                continue
            source = path.read_text(encoding="utf-8")
            for marker in ("grpc.aio.server", "ServicerContext", "ServerInterceptor", "add_insecure_port", "add_secure_port"):
                if marker in source:
                    offenders.append(f"{path.relative_to(ROOT)}: {marker}")
    assert offenders == []


@pytest.mark.parametrize(("layer", "line"), [
    ("node", "import node.app.server"),
    ("node", "from federation import service"),
    ("federation", "from node.app.cli import main"),
])
def test_the_checker_sees_an_upward_import(tmp_path: Path, layer: str, line: str) -> None:
    """The test above can fail: an upward import in a file of a lower layer is reported."""
    probe = tmp_path / "probe.py"
    probe.write_text(line + "\n", encoding="utf-8")
    assert _upward_imports(probe, layer)
    assert not _upward_imports(probe, "app")
