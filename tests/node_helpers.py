"""The Node.js partner client (examples/node-partner) for the tests that run it.

Its npm dependencies are installed from the lock file when missing or older than it, under a
file lock: pytest-xdist workers share the directory, and `npm ci` empties node_modules before it
fills it, so a worker running the client while another installs would find half a package."""

from __future__ import annotations

import fcntl
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

NODE_CLIENT = REPO_ROOT / "examples" / "node-partner"


def node_partner_client() -> list[str]:
    """`node query.mjs`, its dependencies installed (what `make examples` does)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js partner client (examples/node-partner) cannot run")
    with open(NODE_CLIENT / ".npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        installed = NODE_CLIENT / "node_modules" / ".package-lock.json"  # written last by npm ci
        if not installed.is_file() or installed.stat().st_mtime < (NODE_CLIENT / "package-lock.json").stat().st_mtime:
            npm = shutil.which("npm")
            assert npm, "node is installed but npm is not: cannot install examples/node-partner's dependencies"
            done = subprocess.run(
                [npm, "ci", "--prefix", str(NODE_CLIENT), "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"`npm ci --prefix {NODE_CLIENT}` failed:\n{done.stdout}\n{done.stderr}"
    return [node, str(NODE_CLIENT / "query.mjs")]
