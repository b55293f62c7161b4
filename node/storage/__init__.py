"""Storage behind a small interface: domain code awaits `Storage.write` / `Storage.read`.

All writes go through one thread holding one connection, so the hub is the only writer and
SQLite never sees writer contention; reads use their own connections (WAL lets them run
beside the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from node.storage.base import StorageError, StorageFull, Store
from node.storage.sqlite import SqliteStore

T = TypeVar("T")


def _free_bytes(directory: Path) -> int | None:
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


class Storage:
    def __init__(self, path: Path, factory: Callable[[Path], Store] = SqliteStore, readers: int = 2) -> None:
        self.path = Path(path)
        self._factory = factory
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._reader_pool = ThreadPoolExecutor(readers, thread_name_prefix="store-reader")
        self._local = threading.local()
        self._stores: list[Store] = []
        self._lock = threading.Lock()
        # Create (and migrate) the database before anything reads it.
        try:
            self._writer_pool.submit(self._store).result()
        except (sqlite3.Error, OSError) as exc:
            self._writer_pool.shutdown(wait=False)
            self._reader_pool.shutdown(wait=False)
            free = _free_bytes(self.path.parent)
            detail = f"{exc} ({free:,} bytes free on its filesystem)" if free is not None else str(exc)
            if isinstance(exc, StorageFull) or free == 0:
                raise StorageFull(str(self.path), detail) from None
            raise StorageError(f"cannot open the database {self.path}: {detail}") from None

    def _store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self._factory(self.path)
            with self._lock:
                self._stores.append(store)
        return store

    async def write(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, lambda: fn(self._store()))

    async def read(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, lambda: fn(self._store()))

    def close(self) -> None:
        def close_local() -> None:
            store = getattr(self._local, "store", None)
            if store is not None:
                store.close()
                self._local.store = None

        self._writer_pool.submit(close_local).result()
        self._writer_pool.shutdown(wait=True)
        # Reader threads' connections: close from any thread is allowed (check_same_thread=False).
        self._reader_pool.shutdown(wait=True)
        with self._lock:
            for store in self._stores:
                with contextlib.suppress(Exception):  # closing is best effort; one failure must not keep others open
                    store.close()
            self._stores.clear()
