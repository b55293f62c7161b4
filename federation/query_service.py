"""Moved: federation/query/ (fanout: the entry hub; provider: Query.Partial; asker: open and merge)."""

from federation.query.fanout import QueryService
from federation.query.provider import PARTIAL_METHOD, RUN_METHOD

__all__ = ["PARTIAL_METHOD", "RUN_METHOD", "QueryService"]
