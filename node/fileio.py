"""Files that hold secrets or state: created 0600, written atomically, fsynced."""

from __future__ import annotations

import os
from pathlib import Path


def write_private_file(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Atomically replace `path` with `data`, mode 0600. With exclusive, refuse to overwrite."""
    path = Path(path)
    if exclusive and path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # exact, whatever the umask
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_private_dir(path: Path) -> None:
    Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
