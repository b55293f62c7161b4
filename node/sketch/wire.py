"""The sketch as the protobuf message QuantileSketch (proto/smartregion/v1/query.proto)."""

from __future__ import annotations

from collections import Counter

from node.api.v1 import query_pb2
from node.sketch.ddsketch import ALPHA
from node.sketch.ddsketch import Sketch as Algorithm


def to_proto(sketch: Algorithm) -> query_pb2.QuantileSketch:
    return query_pb2.QuantileSketch(alpha=sketch.alpha, positive=dict(sketch.positive), negative=dict(sketch.negative),
                                    zeros=sketch.zeros)


def counts_of(message: query_pb2.QuantileSketch) -> tuple[float, Counter[int], Counter[int], int]:
    """(alpha, positive, negative, zeros) of a message; an unset alpha is the default."""
    return message.alpha or ALPHA, Counter(dict(message.positive)), Counter(dict(message.negative)), message.zeros
