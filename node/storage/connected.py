"""What SqliteStore's table mixins share: its connection, and transactions on it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Connected:
    """Base of SqliteStore and of its table mixins (node/storage/federation_tables.py,
    query_tables.py): one connection, opened in autocommit mode, and explicit transactions."""

    conn: sqlite3.Connection

    def _transaction(self, work: Callable[[], T]) -> T:
        """Run `work` inside BEGIN IMMEDIATE ... COMMIT; roll back if it raises."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = work()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result
