"""Retention: readings older than their dataset's retention are deleted, by the hub itself.

A dataset's retention is `[retention.days]` in hub.toml, else the catalog's `retention_days`,
else for ever (0). An active agreement under which this hub provides a dataset *promises* the
consumer `longest_window_days` of history for it: the consumer may ask for a window that long,
ending now. A retention shorter than that is refused when it is set, and a run never deletes
what an agreement signed later promises (it keeps the longer of the two). Every run that
deletes is audited ("retention.run"), and so is every change ("retention.set").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from node import audit, catalog
from node.errors import Reason, Rejected
from node.hub import Hub
from node.storage.base import Store

log = logging.getLogger("smartregion.retention")
DAY_MS = 86_400_000
MAX_RETENTION_DAYS = 100 * 366

# dataset -> the longest history an active agreement promises (days); computed by the caller
# from the agreements (federation), which the core does not know.
Promises = dict[str, int]


@dataclass
class DatasetRetention:
    dataset: str
    retention_days: int   # 0: for ever
    promised_days: int    # 0: no promise
    cutoff_ms: int = 0    # readings before this are deleted (0: none)
    deleted: int = 0


def configured_days(hub: Hub, dataset: str) -> int:
    days = hub.config.retention.days.get(dataset)
    if days is None:
        days = hub.catalog.dataset(dataset).retention_days or 0
    return int(days)


def plan(hub: Hub, promises: Promises, now_ms: int) -> list[DatasetRetention]:
    """Each catalog dataset's retention and, if readings expire, the cutoff a run uses now."""
    plans = []
    for name in hub.catalog.datasets:
        days, promised = configured_days(hub, name), promises.get(name, 0)
        keep = max(days, promised) if days else 0
        plans.append(DatasetRetention(name, days, promised, now_ms - keep * DAY_MS if keep else 0))
    return plans


def _delete_before(dataset: str, cutoff_ms: int) -> Callable[[Store], int]:
    return lambda store: store.delete_readings_before(dataset, cutoff_ms)


async def run(hub: Hub, promises: Promises) -> list[DatasetRetention]:
    """Delete expired readings now; audit each dataset that had a retention to apply."""
    now_ms = hub.clock.now_ms()
    plans = plan(hub, promises, now_ms)
    for p in plans:
        if not p.cutoff_ms:
            continue
        p.deleted = await hub.storage.write(_delete_before(p.dataset, p.cutoff_ms))
        kept = f"; kept {p.promised_days} days as an agreement promises" if p.promised_days > p.retention_days else ""
        await audit.admin_action(hub.storage, now_ms, "retention.run", p.dataset,
                                 f"deleted {p.deleted} readings before {p.cutoff_ms} (retention {p.retention_days} days{kept})")
        log.info("retention", extra={"dataset": p.dataset, "deleted": p.deleted, "cutoff_ms": p.cutoff_ms})
    return plans


async def set_days(hub: Hub, dataset: str, days: int, promises: Promises) -> list[DatasetRetention]:
    """Set a dataset's retention in hub.toml (0: for ever); refused if an agreement promises more."""
    try:
        hub.catalog.dataset(dataset)
    except catalog.CatalogError as exc:
        raise Rejected(Reason.INVALID_REQUEST, str(exc)) from None
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise Rejected(Reason.INVALID_REQUEST, f"a retention is 0 (for ever) to {MAX_RETENTION_DAYS} days, not {days}")
    promised = promises.get(dataset, 0)
    if days and days < promised:
        await audit.admin_action(hub.storage, hub.clock.now_ms(), "retention.set", dataset, f"{days} days",
                                 Reason.PROMISED_BY_AGREEMENT.label)
        raise Rejected(Reason.PROMISED_BY_AGREEMENT,
                       f"an active agreement promises {promised} days of {dataset} (its longest window); "
                       f"a retention of {days} days would break it; nothing changed")
    on_disk = hub.hub_dir.config()
    on_disk.retention.days[dataset] = days
    hub.hub_dir.write_config(on_disk)
    hub.config.retention.days[dataset] = days
    await audit.admin_action(hub.storage, hub.clock.now_ms(), "retention.set", dataset, f"{days} days" if days else "for ever")
    return plan(hub, promises, hub.clock.now_ms())


async def run_logged(hub: Hub, promises: Callable[[], Awaitable[Promises]]) -> None:
    """One run; a failure is logged (the next interval retries), never raised."""
    try:
        await run(hub, await promises())
    except Exception:
        log.exception("retention run failed")


async def loop(hub: Hub, promises: Callable[[], Awaitable[Promises]], stopping: asyncio.Event) -> None:
    """Every `[retention] interval_seconds` a run, until `stopping` (the server runs the first one
    itself before `start` returns, so a started hub has done its start-up work)."""
    while not stopping.is_set():
        sleep = asyncio.ensure_future(hub.clock.sleep(hub.config.retention.interval_seconds))
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({sleep, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sleep, stop):
            task.cancel()
        if not stopping.is_set():
            await run_logged(hub, promises)
