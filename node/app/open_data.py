"""Open data: aggregates of datasets classified `open` are published without an agreement,
as open-data portals do (GET /open/v1/...). Only this hub's own data; restricted and
personal datasets are never served here."""

from __future__ import annotations

import csv
import datetime as dt
import io

from federation.partials import Merged
from federation.query_spec import check_shape, label
from node import catalog, register
from node.api.v1 import query_pb2
from node.errors import Reason, Rejected
from node.hub import Hub
from node.storage.base import AggregateRequest

OPEN_AGGREGATES = ("count", "sum", "mean", "min", "max", "stddev")
# Open data is published per day at the finest: hourly values of a municipality with one
# station would be that station's readings.
OPEN_BUCKETS = ("day", "week", "month", "year", "window")


async def datasets(hub: Hub) -> dict:
    summaries = await hub.storage.read(lambda s: s.metric_summaries())
    municipality = register.lookup(hub.config.municipality)
    out = []
    for ds in hub.catalog.datasets.values():
        if ds.classification is not catalog.Classification.OPEN:
            continue
        metrics = []
        for m in ds.metrics.values():
            held = next((s for s in summaries if s.dataset == ds.name and s.metric == m.name), None)
            metrics.append({"metric": m.name, "unit": m.unit, "description": m.description, "readings": held.readings if held else 0,
                            "first_time_ms": held.first_time_ms if held else None, "last_time_ms": held.last_time_ms if held else None})
        out.append({"dataset": ds.name, "description": ds.description, "metrics": metrics})
    return {"publisher": f"{municipality.name} kommune ({municipality.number})", "hub_id": hub.config.hub_id,
            "licence": "Norwegian Licence for Open Government Data (NLOD) 2.0", "datasets": out,
            "usage": "/open/v1/{dataset}/{metric}?aggregate=mean&bucket=month&from=2019-01-01&to=2020-01-01&format=json|csv"}


def _day_ms(text: str, name: str) -> int:
    try:
        day = dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise Rejected(Reason.INVALID_REQUEST, f"{name} must be a date like 2019-01-01") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


async def aggregate(hub: Hub, dataset: str, metric: str, params) -> list[dict]:
    try:
        ds = hub.catalog.dataset(dataset)
    except catalog.CatalogError as exc:
        raise Rejected(Reason.NOT_FOUND, str(exc)) from None
    if ds.classification is not catalog.Classification.OPEN:
        raise Rejected(Reason.PERMISSION_DENIED,
                       f"dataset {dataset!r} is {ds.classification.value}, not open data; it is shared only under an agreement")
    aggregate_name = params.get("aggregate", "mean")
    if aggregate_name not in OPEN_AGGREGATES:
        raise Rejected(Reason.INVALID_REQUEST, f"aggregate must be one of: {', '.join(OPEN_AGGREGATES)}")
    if params.get("bucket", "month") not in OPEN_BUCKETS:
        raise Rejected(Reason.INVALID_REQUEST, f"open data is published by {', '.join(OPEN_BUCKETS)}; not finer")
    spec = query_pb2.QuerySpec(dataset=dataset, metric=metric, aggregate=aggregate_name, bucket=params.get("bucket", "month"),
                               group_by="municipality", purpose_code="open_data",
                               start_ms=_day_ms(params.get("from"), "from"), end_ms=_day_ms(params.get("to"), "to"))
    check_shape(spec)
    request = AggregateRequest(dataset, metric, spec.start_ms, spec.end_ms, spec.bucket, consent_purpose=None)
    cells = await hub.storage.read(lambda s: s.aggregate(request))
    rows = []
    for cell in cells:
        merged = Merged(cell.count, cell.sum, cell.sum_squares, cell.min, cell.max, cell.contributors)
        rows.append({"municipality": hub.config.municipality, "bucket": label(spec.bucket, cell.bucket_start_ms),
                     "bucket_start_ms": cell.bucket_start_ms, "aggregate": aggregate_name,
                     "value": merged.value(aggregate_name, 0.0), "readings": cell.count, "sensors": cell.contributors})
    return rows


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["municipality", "bucket", "bucket_start_ms", "aggregate", "value", "readings", "sensors"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
