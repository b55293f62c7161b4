"""What SqliteStore's table mixins share: its connection, and transactions on it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from node.storage.base import StorageFull

T = TypeVar("T")


def is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


class Connected:
    """Base of SqliteStore and of its table mixins (node/storage/federation_tables.py,
    query_tables.py, ...): one connection, opened in autocommit mode, and explicit transactions."""

    conn: sqlite3.Connection
    path: str

    def _transaction(self, work: Callable[[], T]) -> T:
        """Run `work` inside BEGIN IMMEDIATE ... COMMIT; roll back if it raises. A write the
        filesystem has no room for (the COMMIT may be where it shows) raises StorageFull."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                result = work()
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if is_full(exc):
                raise StorageFull(self.path, str(exc)) from None
            raise
        return result
