"""A mergeable quantile sketch with relative error `alpha` (DDSketch, Masson et al., VLDB 2019).

A value v > 0 is counted in bin ceil(log(v) / log(gamma)), gamma = (1 + alpha) / (1 - alpha);
negative values in mirrored bins; |v| below MIN_INDEXABLE in a zero count. Every value in a
bin is within a factor (1 ± alpha) of the bin's representative, so any quantile read from the
sketch is within relative error alpha of a true value at that rank. Bins add when merging,
exactly. The algorithm only: node/sketch/sql.py bins in SQLite with the same rule, so a
provider builds its sketch without raw values ever reaching Python.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

ALPHA = 0.01
MIN_INDEXABLE = 1e-9


def gamma(alpha: float = ALPHA) -> float:
    return (1 + alpha) / (1 - alpha)


def bin_of(value: float, alpha: float = ALPHA) -> tuple[int, int]:
    """(sign, key): sign is 1, -1, or 0 for the zero bin."""
    if abs(value) < MIN_INDEXABLE:
        return 0, 0
    return (1 if value > 0 else -1), math.ceil(math.log(abs(value)) / math.log(gamma(alpha)))


def representative(key: int, alpha: float = ALPHA) -> float:
    g = gamma(alpha)
    try:
        return 2 * g**key / (g + 1)
    except OverflowError:  # a coarse bin's edge past the largest double (readings near 1.8e308)
        return math.inf


@dataclass
class Sketch:
    alpha: float = ALPHA
    positive: Counter[int] = field(default_factory=Counter)
    negative: Counter[int] = field(default_factory=Counter)
    zeros: int = 0

    def add(self, value: float, count: int = 1) -> None:
        self.add_bin(*bin_of(value, self.alpha), count)

    def add_bin(self, sign: int, key: int, count: int) -> None:
        if sign > 0:
            self.positive[key] += count
        elif sign < 0:
            self.negative[key] += count
        else:
            self.zeros += count

    @property
    def count(self) -> int:
        return sum(self.positive.values()) + sum(self.negative.values()) + self.zeros

    def merge(self, other: Sketch) -> Sketch:
        if other.alpha != self.alpha:
            raise ValueError("sketches with different accuracy cannot be merged")
        return type(self)(self.alpha, self.positive + other.positive, self.negative + other.negative, self.zeros + other.zeros)

    def quantile(self, q: float) -> float:
        """The value at rank q (0..1) in sorted order; nan if empty."""
        total = self.count
        if total == 0:
            return math.nan
        rank = q * (total - 1)
        seen = 0
        ordered: Iterable[tuple[float, int]] = [
            *((-representative(k, self.alpha), c) for k, c in sorted(self.negative.items(), reverse=True)),
            (0.0, self.zeros),
            *((representative(k, self.alpha), c) for k, c in sorted(self.positive.items())),
        ]
        for value, count in ordered:
            seen += count
            if count and seen > rank:
                return value
        return value
