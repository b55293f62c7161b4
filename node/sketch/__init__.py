"""A mergeable quantile sketch (DDSketch), in three modules with one job each:
ddsketch.py the algorithm, sql.py the same binning as SQL, wire.py the protobuf message.
`Sketch` here is the algorithm with its wire form attached, as the query side uses it."""

from __future__ import annotations

from node.api.v1 import query_pb2
from node.sketch import wire
from node.sketch.ddsketch import ALPHA, MIN_INDEXABLE, bin_of, gamma, representative
from node.sketch.ddsketch import Sketch as _Algorithm
from node.sketch.sql import bin_sql

__all__ = ["ALPHA", "MIN_INDEXABLE", "Sketch", "bin_of", "bin_sql", "gamma", "representative"]


class Sketch(_Algorithm):
    def to_proto(self) -> query_pb2.QuantileSketch:
        return wire.to_proto(self)

    @classmethod
    def from_proto(cls, message: query_pb2.QuantileSketch) -> Sketch:
        return cls(*wire.counts_of(message))
