"""What both benchmarks print about the machine they ran on."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from pathlib import Path

import cryptography
import grpc


def machine_facts(workdir: Path) -> list[tuple[str, str]]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(len(os.sched_getaffinity(0)))
    return [
        ("nproc", f"{nproc} ({cpu})" if cpu else nproc),
        ("memory", _mem_total()),
        ("os", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("sqlite", sqlite3.sqlite_version),
        ("grpcio / cryptography", f"{grpc.__version__} / {cryptography.__version__}"),
        ("work directory", f"{workdir} ({_filesystem(workdir)})"),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    return "?"


def _filesystem(path: Path) -> str:
    best, fstype = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount, kind = parts[1], parts[2]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, fstype = mount, kind
    except OSError:
        pass
    return fstype
