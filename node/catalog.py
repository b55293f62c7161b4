"""The datasets and metrics a hub knows, with their units and privacy classification.

Classification decides what may leave the hub: `open` aggregates are published without an
agreement, `restricted` ones only under an agreement, `personal` ones only under an agreement
and only for data subjects who consented to its purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Classification(str, Enum):
    OPEN = "open"
    RESTRICTED = "restricted"
    PERSONAL = "personal"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # SenML unit symbol (RFC 8428 / RFC 8798)
    description: str
    minimum: float | None = None  # physically plausible range; outside it is rejected
    maximum: float | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    classification: Classification
    description: str
    metrics: dict[str, Metric]
    retention_days: int | None = None  # default retention (node/retention.py); None: kept for ever


def _metrics(*items: Metric) -> dict[str, Metric]:
    return {m.name: m for m in items}


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "air_quality",
            Classification.OPEN,
            "Outdoor air quality and weather at monitoring stations",
            _metrics(
                Metric("pm25", "ug/m3", "Fine particulate matter PM2.5", -50, 2000),
                Metric("pm10", "ug/m3", "Particulate matter PM10", -50, 5000),
                Metric("no2", "ug/m3", "Nitrogen dioxide", -50, 5000),
                Metric("temperature", "Cel", "Air temperature", -80, 70),
                Metric("wind_speed", "m/s", "Wind speed", 0, 120),
                Metric("rain", "mm", "Precipitation in the hour", 0, 500),
            ),
        ),
        Dataset(
            "traffic",
            Classification.RESTRICTED,
            "Vehicle and bicycle counts at counting points",
            _metrics(
                Metric("vehicles", "count", "Vehicles passing in the interval", 0, 1e6),
                Metric("bicycles", "count", "Bicycles passing in the interval", 0, 1e6),
            ),
        ),
        Dataset(
            "water_consumption",
            Classification.PERSONAL,
            "Household water meters (one data subject per meter)",
            _metrics(Metric("water_volume", "m3", "Water used in the interval", 0, 1e4)),
        ),
        Dataset(
            "electricity",
            Classification.PERSONAL,
            "Household electricity meters (one data subject per meter)",
            _metrics(Metric("energy", "kWh", "Energy used in the interval", 0, 1e6)),
        ),
    )
}


class CatalogError(ValueError):
    pass


def dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise CatalogError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def check_metrics(dataset_name: str, metric_names: list[str]) -> list[str]:
    """Validate metric names for a dataset; return them de-duplicated, in the given order."""
    ds = dataset(dataset_name)
    if not metric_names:
        raise CatalogError("a sensor measures at least one metric")
    unknown = [m for m in metric_names if m not in ds.metrics]
    if unknown:
        raise CatalogError(
            f"dataset {dataset_name!r} has no metric {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(ds.metrics)}"
        )
    return list(dict.fromkeys(metric_names))
