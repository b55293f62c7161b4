"""Differential privacy for agreements with a budget (`dp_epsilon`: the agreement's LIFETIME
epsilon, docs/privacy.md).

The unit of privacy is the data subject (or, for datasets without subjects, the sensor): the
agreement declares `dp_max_contributions` = L, and before aggregating, the provider keeps at
most L readings of each contributor in each cell (the earliest ones) and clamps every value
to the metric's range [low, high] (as OpenDP's and Tumult's privacy units do: bound the
contribution, then add noise calibrated to that bound). Adding or removing one subject then
changes one cell's count by at most L, its sum by at most L * B with B = max(|low|, |high|),
and its number of contributors by 1.

One subject may have readings in EVERY cell of a query (a household meter reads all year), so
the cells do not hold disjoint subjects and the query is not protected by parallel
composition: over the N cells of a query, one subject changes the vector of counts by up to
N * L in L1 distance, the sums by N * L * B and the contributor counts by N. The noise is
calibrated to those whole-query sensitivities (OpenDP's vector Laplace mechanism, whose
privacy map is checked for each), which is the same as spending epsilon / N on each cell
(sequential composition). docs/privacy.md explains why this was chosen over a per-query
contribution bound, with the utility it costs. The epsilon of a query is split:

* a quarter on the noisy contributor counts, compared with the minimum group size: a cell
  whose noisy count falls below it is withheld (never decided on the exact count);
* the rest on the released figure: all of it on the counts (count) or the sums (sum), half
  each on counts and sums (mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import opendp.prelude as dp

from federation.query_spec import buckets
from federation.terms import DP_AGGREGATES, MIN_DP_EPSILON
from node.api.v1 import query_pb2
from node.catalog import Metric
from node.storage.base import CellRow

MIN_EPSILON = MIN_DP_EPSILON  # below this the noise is astronomically large: refuse rather than release noise
DEFAULT_SHARE = 10  # a query that names no epsilon spends a tenth of the lifetime budget
THRESHOLD_SHARE = 0.25  # of a query's epsilon, spent on the noisy contributor counts that decide suppression
MICRO = 1_000_000  # the budget ledger counts integer micro-epsilon

__all__ = ["DP_AGGREGATES", "MIN_EPSILON", "Calibration", "Noised", "PrivacyError", "calibrate", "clamp_bounds",
           "default_epsilon", "every_bucket", "micro", "noisy_cells"]

dp.enable_features("contrib")


class PrivacyError(ValueError):
    pass


def micro(epsilon: float) -> int:
    """Integer micro-epsilon, rounded up: the ledger never charges less than is spent."""
    return math.ceil(round(epsilon * MICRO, 6))


def clamp_bounds(metric: Metric) -> tuple[float, float]:
    if metric.minimum is None or metric.maximum is None:
        raise PrivacyError(f"metric {metric.name} has no bounded range; it cannot be released with differential privacy")
    return float(metric.minimum), float(metric.maximum)


@lru_cache(maxsize=256)
def _vector_laplace(sensitivity: float, epsilon: float) -> Any:
    """OpenDP's Laplace mechanism on a vector whose L1 distance between neighbouring datasets
    is at most `sensitivity`; its privacy map confirms the release costs at most epsilon."""
    measurement = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float),
                                    scale=sensitivity / epsilon)
    if measurement.map(sensitivity) > epsilon * (1 + 1e-9):
        raise PrivacyError("the noise would cost more than the epsilon granted")
    return measurement


def every_bucket(cells: list[CellRow], spec: query_pb2.QuerySpec) -> list[CellRow]:
    """The cells of every bucket of the window, empty ones included (zero count and sum)."""
    present = {c.bucket_start_ms: c for c in cells}
    return [present.get(start) or CellRow(start, 0, 0.0, 0.0, 0.0, 0.0, 0) for start, _ in buckets(spec.bucket, spec.start_ms, spec.end_ms)]


def default_epsilon(budget: float) -> float:
    """What a query that names no epsilon spends: a tenth of the budget (at least MIN_EPSILON)."""
    return min(budget, max(MIN_EPSILON, budget / DEFAULT_SHARE))


@dataclass(frozen=True)
class Calibration:
    """How one query's epsilon is spent over its cells: per figure, the epsilon share and the
    L1 sensitivity of the whole vector of that figure (0 = not released), and so the Laplace
    scale every cell's figure gets (sensitivity / share)."""
    cells: int
    subjects_epsilon: float
    count_epsilon: float
    sum_epsilon: float
    subjects_sensitivity: float
    count_sensitivity: float
    sum_sensitivity: float

    @staticmethod
    def _scale(sensitivity: float, epsilon: float) -> float:
        return sensitivity / epsilon if epsilon else 0.0

    @property
    def subjects_scale(self) -> float:
        return self._scale(self.subjects_sensitivity, self.subjects_epsilon)

    @property
    def count_scale(self) -> float:
        return self._scale(self.count_sensitivity, self.count_epsilon)

    @property
    def sum_scale(self) -> float:
        return self._scale(self.sum_sensitivity, self.sum_epsilon)


def calibrate(aggregate: str, epsilon: float, bounds: tuple[float, float], max_contributions: int, cells: int) -> Calibration:
    """Split `epsilon` over the figures of a query of `cells` cells, each contributor adding at
    most `max_contributions` readings to every one of them."""
    if aggregate not in DP_AGGREGATES:
        raise PrivacyError(f"under a differential-privacy budget only {', '.join(DP_AGGREGATES)} are released")
    if not epsilon >= MIN_EPSILON:
        raise PrivacyError(f"epsilon must be at least {MIN_EPSILON}")
    if max_contributions < 1:
        raise PrivacyError("the contribution bound per data subject must be at least 1")
    if cells < 1:
        raise PrivacyError("a query has at least one cell")
    subjects_eps = epsilon * THRESHOLD_SHARE
    figure_eps = epsilon - subjects_eps
    count_eps = {"count": figure_eps, "sum": 0.0, "mean": figure_eps / 2}[aggregate]
    sum_eps = figure_eps - count_eps
    per_cell = float(max_contributions)
    bound = max(abs(bounds[0]), abs(bounds[1]))
    return Calibration(cells, subjects_eps, count_eps, sum_eps, subjects_sensitivity=float(cells),
                       count_sensitivity=cells * per_cell if count_eps else 0.0,
                       sum_sensitivity=cells * per_cell * bound if sum_eps else 0.0)


def _noise(values: list[float], sensitivity: float, epsilon: float) -> list[float]:
    return list(_vector_laplace(sensitivity, epsilon)(values)) if epsilon else [0.0] * len(values)


@dataclass(frozen=True)
class Noised:
    cells: list[CellRow]        # noisy count and sum, every other figure cleared
    withheld: frozenset[int]    # bucket starts whose noisy contributor count is below the group size
    calibration: Calibration


def noisy_cells(cells: list[CellRow], aggregate: str, epsilon: float, bounds: tuple[float, float],
                max_contributions: int, min_group_size: int) -> Noised:
    """The cells of ONE query (every bucket of its window, already bounded to
    `max_contributions` readings per contributor and cell) with a noisy count and sum, and the
    cells withheld on a noisy contributor count; `epsilon` pays for all of them together."""
    c = calibrate(aggregate, epsilon, bounds, max_contributions, len(cells))
    subjects = _noise([float(cell.contributors) for cell in cells], c.subjects_sensitivity, c.subjects_epsilon)
    counts = _noise([float(cell.count) for cell in cells], c.count_sensitivity, c.count_epsilon)
    sums = _noise([float(cell.sum) for cell in cells], c.sum_sensitivity, c.sum_epsilon)
    out, withheld = [], set()
    for cell, noisy_subjects, noisy_count, noisy_sum in zip(cells, subjects, counts, sums, strict=True):
        if noisy_subjects < min_group_size:
            withheld.add(cell.bucket_start_ms)
        out.append(replace(cell, count=max(0, round(noisy_count)) if c.count_epsilon else 0, sum=noisy_sum,
                           sum_squares=0.0, min=0.0, max=0.0))
    return Noised(out, frozenset(withheld), c)
