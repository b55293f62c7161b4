"""The datasets and metrics a hub knows, with their units and privacy classification.

The catalog is hub configuration: `catalog.toml` in the hub's data directory, or the shipped
default (node/data/catalog.toml) when there is none. It is validated completely when loaded
(`load`, `smartregion catalog check`); a hub does not start with a broken catalog.

Classification decides what may leave the hub: `open` aggregates are published without an
agreement, `restricted` ones only under an agreement, `personal` ones only under an agreement
and only for data subjects who consented to its purpose.

The module-level `DATASETS`, `dataset()` and `check_metrics()` answer for the shipped default;
code that serves one hub uses that hub's catalog (`Hub.catalog`).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path

CATALOG_FILE = "catalog.toml"
MAX_CATALOG_BYTES = 1024 * 1024
MAX_DATASETS = 200
MAX_METRICS_PER_DATASET = 100
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# SenML units: RFC 8428 §12.1 and the additions and secondary units of RFC 8798.
SENML_UNITS = frozenset(
    [
        "m", "kg", "g", "s", "A", "K", "cd", "mol", "Hz", "rad", "sr", "N", "Pa", "J", "W", "C", "V", "F",
        "Ohm", "S", "Wb", "T", "H", "Cel", "lm", "lx", "Bq", "Gy", "Sv", "kat", "m2", "m3", "l", "m/s",
        "m/s2", "m3/s", "l/s", "W/m2", "cd/m2", "bit", "bit/s", "lat", "lon", "pH", "dB", "dBW", "Bspl",
        "count", "/", "%", "%RH", "%EL", "EL", "1/s", "1/min", "beat/min", "beats", "S/m", "B", "VA", "VAs",
        "var", "vars", "J/m", "kg/m3", "deg", "NTU", "ms", "min", "h", "MHz", "kW", "kVA", "kvar", "Ah", "Wh",
        "kWh", "varh", "kvarh", "kVAh", "Wh/km", "KiB", "GB", "Mbit/s", "B/s", "MB/s", "mV", "mA", "dBm",
        "ug/m3", "mm/h", "m/h", "ppm", "/100", "/1000", "hPa", "mm", "cm", "km", "km/h"
    ]
)


class Classification(str, Enum):  # noqa: UP042 (StrEnum would change str() of members)
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
    retention_days: int = 3650  # raw readings older than this may be deleted
    fiware_type: str = ""  # the FIWARE Smart Data Models entity type it follows, if any


class CatalogError(ValueError):
    pass


_DATASET_KEYS = {"name", "classification", "description", "metrics", "retention_days", "fiware_type"}
_METRIC_KEYS = {"name", "unit", "description", "minimum", "maximum"}


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise CatalogError(f"{where}: name {value!r} must be lowercase letters, digits and _ (at most 63, starting with a letter)")
    return value


def _text(value: object, where: str, limit: int = 500) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise CatalogError(f"{where} must be a text of at most {limit} characters")
    return value


def _bound(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CatalogError(f"{where} must be a finite number")
    return float(value)


def _unknown_keys(table: dict[str, object], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise CatalogError(f"{where}: unknown field {', '.join(map(repr, extra))}; allowed: {', '.join(sorted(allowed))}")


def _metric(raw: object, dataset_name: str) -> Metric:
    if not isinstance(raw, dict):
        raise CatalogError(f"dataset {dataset_name!r}: each metric is a table {{ name = ..., unit = ... }}")
    name = _name(raw.get("name"), f"dataset {dataset_name!r}, a metric")
    where = f"dataset {dataset_name!r}, metric {name!r}"
    _unknown_keys(raw, _METRIC_KEYS, where)
    unit = raw.get("unit")
    if unit not in SENML_UNITS:
        raise CatalogError(f"{where}: unit {unit!r} is not a SenML unit (RFC 8428, RFC 8798), e.g. Cel, ug/m3, m3, kWh, dB, ppm, count")
    minimum, maximum = _bound(raw.get("minimum"), f"{where}: minimum"), _bound(raw.get("maximum"), f"{where}: maximum")
    if minimum is not None and maximum is not None and minimum >= maximum:
        raise CatalogError(f"{where}: minimum {minimum} is not below maximum {maximum}")
    return Metric(name, str(unit), _text(raw.get("description", ""), f"{where}: description"), minimum, maximum)


def _dataset(raw: object, index: int) -> Dataset:
    if not isinstance(raw, dict):
        raise CatalogError(f"dataset {index}: expected a [[dataset]] table")
    name = _name(raw.get("name"), f"dataset {index}")
    where = f"dataset {name!r}"
    _unknown_keys(raw, _DATASET_KEYS, where)
    try:
        classification = Classification(raw.get("classification"))
    except ValueError:
        got = raw.get("classification")
        raise CatalogError(f"{where}: classification must be one of open, restricted, personal; got {got!r}") from None
    retention = raw.get("retention_days", 3650)
    if isinstance(retention, bool) or not isinstance(retention, int) or not 1 <= retention <= 36500:
        raise CatalogError(f"{where}: retention_days must be a whole number of days from 1 to 36500; got {retention!r}")
    raw_metrics = raw.get("metrics")
    if not isinstance(raw_metrics, list) or not raw_metrics:
        raise CatalogError(f"{where}: give at least one metric (metrics = [ {{ name = ..., unit = ... }} ])")
    if len(raw_metrics) > MAX_METRICS_PER_DATASET:
        raise CatalogError(f"{where}: at most {MAX_METRICS_PER_DATASET} metrics")
    metrics: dict[str, Metric] = {}
    for item in raw_metrics:
        metric = _metric(item, name)
        if metric.name in metrics:
            raise CatalogError(f"{where}: metric {metric.name!r} is defined twice")
        metrics[metric.name] = metric
    return Dataset(
        name, classification, _text(raw.get("description", ""), f"{where}: description"), metrics, retention,
        _text(raw.get("fiware_type", ""), f"{where}: fiware_type", 100),
    )


@dataclass(frozen=True)
class Catalog:
    datasets: dict[str, Dataset]
    source: str = "default"  # where it was loaded from, for messages

    def dataset(self, name: str) -> Dataset:
        try:
            return self.datasets[name]
        except KeyError:
            raise CatalogError(f"unknown dataset {name!r}; known: {', '.join(sorted(self.datasets))}") from None

    def check_metrics(self, dataset_name: str, metric_names: list[str]) -> list[str]:
        """Validate metric names for a dataset; return them de-duplicated, in the given order."""
        ds = self.dataset(dataset_name)
        if not metric_names:
            raise CatalogError("a sensor measures at least one metric")
        unknown = [m for m in metric_names if m not in ds.metrics]
        if unknown:
            raise CatalogError(
                f"dataset {dataset_name!r} has no metric {', '.join(map(repr, unknown))}; known: {', '.join(ds.metrics)}"
            )
        return list(dict.fromkeys(metric_names))

    def to_dict(self) -> dict[str, object]:
        """The catalog as published to peers and partners (GET /v1/catalog)."""
        return {
            "datasets": [
                {
                    "name": d.name, "fiware_type": d.fiware_type, "classification": d.classification.value,
                    "description": d.description, "retention_days": d.retention_days,
                    "metrics": [{"name": m.name, "unit": m.unit, "description": m.description, "minimum": m.minimum,
                                 "maximum": m.maximum} for m in d.metrics.values()],
                }
                for d in self.datasets.values()
            ]
        }


def parse(text: str, source: str = "catalog") -> Catalog:
    """Parse and validate a catalog document; raise CatalogError naming the first problem."""
    if len(text.encode()) > MAX_CATALOG_BYTES:
        raise CatalogError(f"{source}: a catalog is at most {MAX_CATALOG_BYTES} bytes")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source} is not valid TOML: {exc}") from None
    _unknown_keys(doc, {"dataset"}, source)
    raw_datasets = doc.get("dataset")
    if not isinstance(raw_datasets, list) or not raw_datasets:
        raise CatalogError(f"{source}: define at least one [[dataset]]")
    if len(raw_datasets) > MAX_DATASETS:
        raise CatalogError(f"{source}: at most {MAX_DATASETS} datasets")
    datasets: dict[str, Dataset] = {}
    metric_owner: dict[str, str] = {}
    for index, raw in enumerate(raw_datasets):
        try:
            ds = _dataset(raw, index)
        except CatalogError as exc:
            raise CatalogError(f"{source}: {exc}") from None
        if ds.name in datasets:
            raise CatalogError(f"{source}: dataset {ds.name!r} is defined twice")
        for metric in ds.metrics:
            if metric in metric_owner:
                raise CatalogError(f"{source}: metric {metric!r} is defined twice (in {metric_owner[metric]!r} and {ds.name!r})")
            metric_owner[metric] = ds.name
        datasets[ds.name] = ds
    return Catalog(datasets, source)


def default_text() -> str:
    return resources.files("node.data").joinpath(CATALOG_FILE).read_text(encoding="utf-8")


def load(path: Path) -> Catalog:
    """The catalog in `path`, validated."""
    try:
        return parse(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError:
        raise CatalogError(f"{path} is not UTF-8 text") from None


def for_data_dir(data_dir: Path) -> Catalog:
    """The hub's catalog: DATA_DIR/catalog.toml if it exists, else the shipped default."""
    path = Path(data_dir) / CATALOG_FILE
    return load(path) if path.exists() else DEFAULT


DEFAULT = parse(default_text(), "default catalog")
DATASETS: dict[str, Dataset] = DEFAULT.datasets


def dataset(name: str) -> Dataset:
    return DEFAULT.dataset(name)


def check_metrics(dataset_name: str, metric_names: list[str]) -> list[str]:
    return DEFAULT.check_metrics(dataset_name, metric_names)
