"""Proof that a restored hub works: it starts (keys open, database migrates, servers listen on
loopback), its audit chain verifies, and it answers a query over its own gRPC port.

The check keeps the hub from talking to its peers: its background tasks are stopped before
their first round, so the restored copy never races the original (two hubs with one identity
would fork the agreement state)."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from node import audit, hubdir
from node.api.v1 import admin_pb2, admin_pb2_grpc, query_pb2
from node.app.server import start
from node.client import open_channel
from node.hub import Hub
from node.purposes import PURPOSES

DAY_MS = 86_400_000
MAX_DAYS = 3650


@dataclass
class CheckResult:
    hub_id: str
    audit_entries: int
    query: str            # what was asked, e.g. "count of air_quality/pm25 2019-01-01..2020-01-01"
    answered_readings: int
    stored_readings: int  # what the database holds in that window, for comparison


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date().isoformat()


async def _check(data_dir: Path, passphrase: bytes) -> CheckResult:
    hub = Hub.open(data_dir, passphrase)
    running = await start(hub, host="127.0.0.1", grpc_port=0, http_port=0)
    running.stopping.set()  # no federation round, no retention run: only serve
    channel = open_channel(hub.endpoint.grpc_address, hub_id=hub.config.hub_id, cert_pem=hub.identity.tls_cert_pem, aio=True)
    try:
        stub = admin_pb2_grpc.AdminStub(channel)
        metadata = (("authorization", f"Bearer {hubdir.HubDir(data_dir).admin_token()}"),)
        status = await stub.GetStatus(admin_pb2.GetStatusRequest(), metadata=metadata, timeout=30)
        exported = await stub.ExportAudit(admin_pb2.ExportAuditRequest(), metadata=metadata, timeout=30)
        head = audit.verify_export(exported.jsonl)  # raises AuditError naming the first broken entry
        if head["hub_id"] != hub.config.hub_id:
            raise audit.AuditError("the restored audit log is signed by another hub")
        counts = [c for c in status.counts if c.readings]
        if not counts:
            return CheckResult(hub.config.hub_id, head["seq"], "none (the hub holds no readings)", 0, 0)
        c = counts[0]
        end = (c.last_time_ms // DAY_MS + 1) * DAY_MS
        start_ms = max(c.first_time_ms // DAY_MS * DAY_MS, end - MAX_DAYS * DAY_MS)
        spec = query_pb2.QuerySpec(dataset=c.dataset, metric=c.metric, aggregate="count", start_ms=start_ms, end_ms=end,
                                   bucket="window", group_by="region", hub_ids=[hub.config.hub_id], purpose_code=next(iter(PURPOSES)))
        answer = await stub.RunQuery(spec, metadata=metadata, timeout=60)
        own = [p for p in answer.provenance if p.hub_id == hub.config.hub_id]
        if not own or own[0].status != "answered":
            reason = f"{own[0].status}: {own[0].reason}" if own else "no provenance"
            raise hubdir.HubDirError(f"the restored hub did not answer a query of its own data ({reason})")
        answered = sum(r.readings for r in answer.rows)
        stored = c.readings if c.first_time_ms >= start_ms else answered
        return CheckResult(hub.config.hub_id, head["seq"], f"count of {c.dataset}/{c.metric} {_day(start_ms)}..{_day(end)}",
                           answered, stored)
    finally:
        await channel.close()
        await running.stop(grace=1)


def check_restored(data_dir: Path, passphrase: bytes) -> CheckResult:
    return asyncio.run(_check(Path(data_dir), passphrase))
