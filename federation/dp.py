"""Differential privacy for agreements with a budget (`dp_epsilon`: the agreement's LIFETIME
epsilon, docs/privacy.md).

The unit of privacy is the data subject (or, for datasets without subjects, the sensor): the
agreement declares `dp_max_contributions` = L, and before aggregating, the provider keeps at
most L readings of each contributor in each cell (the earliest ones) and clamps every value
to the metric's range [low, high] (as OpenDP's and Tumult's privacy units do: bound the
contribution, then add noise calibrated to that bound). Adding or removing one subject then
changes a cell's count by at most L, its sum by at most L * B with B = max(|low|, |high|), and
its number of contributors by 1. Cells of one query are disjoint in time, so the query as a
whole costs its epsilon once (parallel composition). The epsilon of a query is split:

* a quarter on a noisy count of contributors, compared with the minimum group size: a cell
  whose noisy count falls below it is withheld (never decided on the exact count);
* the rest on the released figure: all of it on the count (count) or the sum (sum), half
  each on count and sum (mean).

Noise is Laplace from OpenDP, each measurement's privacy map checked against its share.
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
THRESHOLD_SHARE = 0.25  # of a query's epsilon, spent on the noisy contributor count that decides suppression
MICRO = 1_000_000  # the budget ledger counts integer micro-epsilon

__all__ = ["DP_AGGREGATES", "MIN_EPSILON", "Noised", "PrivacyError", "clamp_bounds", "default_epsilon", "every_bucket",
           "micro", "noisy_cells"]

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
def _laplace(sensitivity: float, epsilon: float) -> Any:
    """An OpenDP Laplace measurement whose privacy map confirms it costs at most epsilon."""
    scale = sensitivity / epsilon
    measurement = dp.m.make_laplace(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=scale)
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
class Noised:
    cells: list[CellRow]        # noisy count and sum, every other figure cleared
    withheld: frozenset[int]    # bucket starts whose noisy contributor count is below the group size


def noisy_cells(cells: list[CellRow], aggregate: str, epsilon: float, bounds: tuple[float, float],
                max_contributions: int, min_group_size: int) -> Noised:
    """Cells (bounded to `max_contributions` readings per contributor already) with a noisy
    count and sum, and the cells withheld on a noisy contributor count."""
    if aggregate not in DP_AGGREGATES:
        raise PrivacyError(f"under a differential-privacy budget only {', '.join(DP_AGGREGATES)} are released")
    if not epsilon >= MIN_EPSILON:
        raise PrivacyError(f"epsilon must be at least {MIN_EPSILON}")
    if max_contributions < 1:
        raise PrivacyError("the contribution bound per data subject must be at least 1")
    threshold_eps = epsilon * THRESHOLD_SHARE
    figure_eps = epsilon - threshold_eps
    count_eps = figure_eps if aggregate == "count" else figure_eps / 2
    sum_eps = figure_eps if aggregate == "sum" else figure_eps / 2
    bound = float(max_contributions)
    sum_sensitivity = bound * max(abs(bounds[0]), abs(bounds[1]))
    subjects_noise = _laplace(1.0, threshold_eps)
    count_noise, sum_noise = _laplace(bound, count_eps), _laplace(sum_sensitivity, sum_eps)
    out, withheld = [], set()
    for cell in cells:
        if subjects_noise(float(cell.contributors)) < min_group_size:
            withheld.add(cell.bucket_start_ms)
        noisy_count = count_noise(float(cell.count)) if aggregate != "sum" else 0.0
        noisy_sum = sum_noise(float(cell.sum)) if aggregate != "count" else 0.0
        out.append(replace(cell, count=max(0, round(noisy_count)), sum=noisy_sum, sum_squares=0.0, min=0.0, max=0.0,
                           sketch_bins=[]))
    return Noised(out, frozenset(withheld))
