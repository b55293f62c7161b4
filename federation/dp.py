"""Differential privacy for agreements with a budget (`dp_epsilon`, per UTC day).

Each released cell's count and sum get Laplace noise from OpenDP. The unit of privacy is one
reading (event-level): adding or removing one reading changes a cell's count by at most 1 and
its sum by at most B = max(|low|, |high|), because values are clamped to the metric's range
in SQL before summing. Cells of one query are disjoint in time, so the query as a whole costs
its epsilon once (parallel composition). A mean spends half of epsilon on the count and half
on the sum; a count or a sum spends all of it on that one figure.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import opendp.prelude as dp

from federation.query_spec import buckets
from node.catalog import Metric
from node.storage.base import CellRow

DP_AGGREGATES = ("count", "sum", "mean")
MIN_EPSILON = 1e-3  # below this the noise is astronomically large: refuse rather than release noise
DEFAULT_SHARE = 10  # a query that names no epsilon spends a tenth of the daily budget

dp.enable_features("contrib")


class PrivacyError(ValueError):
    pass


def clamp_bounds(metric: Metric) -> tuple[float, float]:
    if metric.minimum is None or metric.maximum is None:
        raise PrivacyError(f"metric {metric.name} has no bounded range; it cannot be released with differential privacy")
    return float(metric.minimum), float(metric.maximum)


@lru_cache(maxsize=256)
def _laplace(sensitivity: float, epsilon: float):
    """An OpenDP Laplace measurement whose privacy map confirms it costs at most epsilon."""
    scale = sensitivity / epsilon
    measurement = dp.m.make_laplace(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=scale)
    if measurement.map(sensitivity) > epsilon * (1 + 1e-9):
        raise PrivacyError("the noise would cost more than the epsilon granted")
    return measurement


def every_bucket(cells: list[CellRow], spec) -> list[CellRow]:
    """The cells of every bucket of the window, empty ones included (zero count and sum)."""
    present = {c.bucket_start_ms: c for c in cells}
    return [present.get(start) or CellRow(start, 0, 0.0, 0.0, 0.0, 0.0, 0) for start, _ in buckets(spec.bucket, spec.start_ms, spec.end_ms)]


def default_epsilon(budget: float) -> float:
    """What a query that names no epsilon spends: a tenth of the daily budget (at least MIN_EPSILON)."""
    return min(budget, max(MIN_EPSILON, budget / DEFAULT_SHARE))


def noisy_cells(cells: list[CellRow], aggregate: str, epsilon: float, bounds: tuple[float, float]) -> list[CellRow]:
    """Cells with a noisy count and sum; every other figure cleared."""
    if aggregate not in DP_AGGREGATES:
        raise PrivacyError(f"under a differential-privacy budget only {', '.join(DP_AGGREGATES)} are released")
    if not epsilon >= MIN_EPSILON:
        raise PrivacyError(f"epsilon must be at least {MIN_EPSILON}")
    count_eps = epsilon if aggregate == "count" else epsilon / 2
    sum_eps = epsilon if aggregate == "sum" else epsilon / 2
    sum_sensitivity = max(abs(bounds[0]), abs(bounds[1]))
    count_noise, sum_noise = _laplace(1.0, count_eps), _laplace(sum_sensitivity, sum_eps)
    out = []
    for cell in cells:
        noisy_count = count_noise(float(cell.count)) if aggregate != "sum" else 0.0
        noisy_sum = sum_noise(float(cell.sum)) if aggregate != "count" else 0.0
        out.append(replace(cell, count=max(0, round(noisy_count)), sum=noisy_sum, sum_squares=0.0, min=0.0, max=0.0,
                           sketch_bins=[]))
    return out
