"""Files that hold secrets or state: created 0600, written atomically, fsynced.

The temporary file has an unpredictable name and is created with O_CREAT|O_EXCL|O_NOFOLLOW,
so nobody who can write to the directory can make the hub write through a symlink or into
a file they opened beforehand. Errors name the file (a full disk says which file it hit)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _named(exc: OSError, path: Path) -> OSError:
    return type(exc)(exc.errno, exc.strerror, str(path))


def write_private_file(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Atomically replace `path` with `data`, mode 0600. With exclusive, refuse to overwrite."""
    path = Path(path)
    if exclusive and path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, _CREATE_FLAGS, 0o600)
    except OSError as exc:
        raise _named(exc, tmp) from None
    try:
        try:
            os.fchmod(fd, 0o600)  # exact, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)  # fails if `path` appeared meanwhile; never replaces it
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _named(exc, path) from None
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_private_dir(path: Path) -> None:
    Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
