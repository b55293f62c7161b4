"""What the dashboard shows, gathered from the hub's own domain services (never raw readings
of other hubs: the chart is a federated query the hub runs under its own agreements)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import operator

from federation import agreements as ag
from federation.dp import MICRO
from federation.peers import STATE_TEXT
from federation.query_service import QueryService
from federation.query_spec import label
from federation.service import Federation
from federation.terms import bucket_allowed
from node import admin, catalog, register, rotation
from node.api.v1 import query_pb2
from node.clock import utc_day
from node.hub import Hub

CHART_CACHE_SECONDS = 3600  # each refresh is a real query, counted against peers' quotas
CHART_PURPOSE = "environmental_monitoring"
PUBLIC_COORDINATE_DECIMALS = 2
CROSS_BORDER_ACTIONS = ("query.partial", "query.run", "agreement.exchange", "agreement.propose", "agreement.accept",
                        "agreement.revoke", "peer.add", "peer.remove", "partner.add", "/smartregion.v1.Federation/ExchangeAgreements",
                        "/smartregion.v1.Query/Run", "/smartregion.v1.Query/Partial", "auth.refused")


def _year_start_ms(year: int) -> int:
    return int(dt.datetime(year, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


def certificate_overview(hub: Hub) -> dict | None:
    """The served certificate's expiry; `warning` from 30 days before it (node/rotation.py)."""
    if not hub.endpoint.tls:
        return None
    state = rotation.certificate_state(hub.identity, hub.clock)
    issuer_ms = hub.identity.issuer_expires_ms  # None: a hub made before the issuer (node/identity.py)
    return {"not_after_ms": state.expires_at_ms, "days_left": round(state.days_left, 1),
            "warning": state.describe() if state.renewal_due else None, "key_rotations": len(hub.identity.key_history),
            "issuer_days_left": None if issuer_ms is None else round((issuer_ms - hub.clock.now_ms()) / rotation.DAY_MS, 1)}


class DashboardData:
    def __init__(self, federation: Federation, queries: QueryService) -> None:
        self.federation = federation
        self.queries = queries
        self.hub = federation.hub
        self._chart: tuple[float, list[str], dict] | None = None  # (made at, the peers asked, the chart)
        self._chart_lock = asyncio.Lock()  # one refresh at a time, however many pages are open

    async def overview(self) -> dict:
        st = await admin.status(self.hub)
        hub = self.hub
        municipality = register.lookup(hub.config.municipality)
        return {
            "hub_id": hub.config.hub_id, "municipality": municipality.number, "municipality_name": municipality.name,
            "county": municipality.county_name, "version": hub.version, "started_at_ms": hub.started_at_ms,
            "grpc_address": hub.endpoint.grpc_address, "http_url": hub.endpoint.http_url, "tls": hub.endpoint.tls,
            "health": "serving", "sensors_active": st.sensors_active, "sensors_revoked": st.sensors_revoked,
            "counts": [vars(c) for c in st.counts], "rejections": st.rejections,
            "identity_public_key": hub.identity.public_key_raw.hex(),
            "certificate": certificate_overview(hub),
        }

    async def sensors(self, public: bool = False) -> list[dict]:
        """Every sensor. For the public (read-only dashboard without login) a sensor of a
        personal dataset or with a data subject (a household meter) shows no label and its
        position only to PUBLIC_COORDINATE_DECIMALS decimals (about 1 km), not its address."""
        rows = await admin.list_sensors(self.hub, include_revoked=True)
        devices = await admin.lorawan_devices(self.hub)  # LoRaWAN devices; every other sensor seals its frames
        out = []
        for s in rows:
            personal = bool(s.subject_id) or self.hub.catalog.dataset(s.dataset).classification == catalog.Classification.PERSONAL
            hide = public and personal
            device = devices.get(s.sensor_id)
            out.append({"sensor_id": s.sensor_id, "label": "" if hide else s.label, "dataset": s.dataset, "metrics": s.metrics,
                        "confidentiality": device.confidentiality if device else "end-to-end",
                        "lorawan_dev_eui": "" if hide or device is None else device.dev_eui,
                        "readings": s.readings, "last_seen_ms": s.last_seen_ms, "frames_rejected": s.frames_rejected,
                        "active": s.active, "personal": personal,
                        "latitude": round(s.latitude, PUBLIC_COORDINATE_DECIMALS) if hide else s.latitude,
                        "longitude": round(s.longitude, PUBLIC_COORDINATE_DECIMALS) if hide else s.longitude})
        return out

    async def peers(self) -> list[dict]:
        return [{"hub_id": p.hub_id, "municipality": p.municipality, "municipality_name": register.lookup(p.municipality).name,
                 "address": p.grpc_address, "state": state, "state_text": STATE_TEXT.get(state, state),
                 "last_contact_ms": p.last_contact_ms, "latency_ms": p.latency_ms,
                 "last_error": p.last_error, "pending_deliveries": pending}
                for p, state, pending in await self.federation.registry.list_peers(include_removed=False)]

    async def agreements(self) -> list[dict]:
        day = utc_day(self.federation.clock.now_ms())
        out = []
        for info in await self.federation.book.list():
            t = info.evidence.terms
            used, _ = await self.hub.storage.read(operator.methodcaller("quota_used", t.agreement_id, day))
            out.append({
                "agreement_id": t.agreement_id, "version": t.version, "role": info.role,
                "counterparty": info.counterparty.name or info.counterparty.id, "counterparty_id": info.counterparty.id,
                "purpose": t.purpose_code, "datasets": list(t.datasets), "metrics": list(t.metrics),
                "aggregates": list(t.aggregates), "smallest_bucket": t.smallest_bucket, "min_group_size": t.min_group_size,
                "state": ag.STATE_NAMES[info.state], "signatures_verified": sorted(info.evidence.signatures),
                "fully_signed": info.evidence.fully_signed(), "valid_until_ms": t.valid_until_ms,
                "queries_today": used, "queries_per_day": t.queries_per_day,
                **await self._privacy_budget(t.agreement_id, t.dp_epsilon),
            })
        return out

    async def _privacy_budget(self, agreement_id: str, epsilon: float) -> dict:
        """The agreement's LIFETIME differential-privacy budget from the ledger (the figures
        `smartregion agreement budget ID` and each answer show); spent and remaining are known
        only where the ledger is kept, at the provider (None at the consumer)."""
        if not epsilon:
            return {"dp_budget": 0.0, "dp_spent": None, "dp_remaining": None}
        budget = await self.queries.provider.budget(agreement_id)
        providing = budget.role == "provider"
        return {"dp_budget": budget.budget_micro / MICRO,
                "dp_spent": budget.spent_micro / MICRO if providing else None,
                "dp_remaining": budget.remaining_micro / MICRO if providing else None}

    async def audit(self, limit: int = 50) -> list[dict]:
        rows = await self.hub.storage.read(lambda s: s.audit_rows(limit=500, newest_first=True))
        entries = []
        for row in rows:
            entry = json.loads(row.entry)
            if entry["action"] in CROSS_BORDER_ACTIONS:
                entries.append({"seq": row.seq, **entry})
            if len(entries) >= limit:
                break
        return entries

    async def _chart_peers(self, metric: str) -> list[str]:
        """Peers whose agreement with this hub (as consumer) allows this chart outright; never
        one with a privacy budget, which a page view must not spend."""
        states = await self.federation.ledger.states()
        eligible = []
        for e in await self.federation.ledger.all():
            t = e.terms
            if (t.consumer.id == self.hub.config.hub_id and states[e.agreement_id] == ag.State.AGREEMENT_STATE_ACTIVE
                    and not t.dp_epsilon and t.purpose_code == CHART_PURPOSE and "air_quality" in t.datasets
                    and metric in t.metrics and "mean" in t.aggregates and "municipality" in t.group_by
                    and "time_bucket" in t.group_by and bucket_allowed("month", t.smallest_bucket)):
                eligible.append(t.provider.id)
        return eligible

    async def regional_chart(self, metric: str = "pm25") -> dict:
        """Monthly mean per municipality for the latest year this hub holds data for, asked of
        this hub and the peers whose agreements allow it (at most once an hour, and again as soon
        as those peers change: a peer whose agreement was revoked leaves the chart at once)."""
        async with self._chart_lock:
            peers = await self._chart_peers(metric)
            now = self.federation.clock.monotonic()
            if self._chart and self._chart[1] == peers and now - self._chart[0] < CHART_CACHE_SECONDS:
                return self._chart[2]
            chart = await self._regional_chart(metric, peers)
            self._chart = (now, peers, chart)
            return chart

    async def _regional_chart(self, metric: str, peers: list[str]) -> dict:
        counts = await self.hub.storage.read(lambda s: s.metric_summaries())
        latest = max((c.last_time_ms for c in counts if c.dataset == "air_quality" and c.metric == metric), default=None)
        if latest is None:
            return {"title": "No air-quality data yet", "buckets": [], "series": [], "provenance": []}
        year = dt.datetime.fromtimestamp(latest / 1000, dt.UTC).year
        spec = query_pb2.QuerySpec(dataset="air_quality", metric=metric, aggregate="mean", start_ms=_year_start_ms(year),
                                   end_ms=_year_start_ms(year + 1), bucket="month", group_by="municipality",
                                   purpose_code=CHART_PURPOSE, deadline_ms=5000,
                                   hub_ids=[self.hub.config.hub_id, *peers])
        answer = await self.queries.run_as_hub(spec)
        buckets = sorted({r.bucket_start_ms for r in answer.rows})
        series: dict[str, dict] = {}
        for r in answer.rows:
            s = series.setdefault(r.group, {"group": r.group, "name": register.lookup(r.group).name, "values": [None] * len(buckets)})
            s["values"][buckets.index(r.bucket_start_ms)] = None if r.suppressed else round(r.value, 3)
        chart = {
            "title": f"Monthly mean {metric} per municipality, {year}",
            "buckets": [label("month", b) for b in buckets],
            "series": sorted(series.values(), key=lambda s: s["name"]),
            "provenance": [{"hub_id": p.hub_id, "municipality": p.municipality, "status": p.status, "reason": p.reason}
                           for p in answer.provenance],
            "partial": answer.partial,
        }
        return chart

    async def map(self) -> dict:
        peers = {p["municipality"]: p for p in await self.peers()}
        own = self.hub.config.municipality
        points = []
        for m in register.all_municipalities():
            role = "self" if m.number == own else ("peer" if m.number in peers else "")
            points.append({"number": m.number, "name": m.name, "lat": m.lat, "lon": m.lon, "role": role,
                           "state": peers[m.number]["state"] if m.number in peers else ("serving" if role == "self" else "")})
        return {"municipalities": points}
