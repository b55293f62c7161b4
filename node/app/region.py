"""Setting up a region: enrol stations, replay their readings, peer every pair of hubs, and
negotiate agreements between hubs and with a research partner. Used by `smartregion demo`
(hub processes on this machine) and by the compose job (hubs in containers)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import grpc

from federation.known_hubs import KnownHubs, path_beside
from federation.partner_client import PartnerSession
from federation.partners import PartnerKey, public_file_path
from federation.peers import channel_to, fetch_certificate
from federation.query import asker
from node.api.v1 import admin_pb2, query_pb2
from node.app.sensor_client import Sensor, SensorCredential, read_station_csv, replay
from node.client import AdminClient
from node.fileio import write_private_file


@dataclass(frozen=True)
class Station:
    name: str
    csv: str
    municipality: str
    slug: str
    lat: float  # approximate station position
    lon: float


STATIONS = (
    Station("Valand", "Valand.csv", "1103", "stavanger", 58.9634, 5.7280),
    Station("Klosterhaugen", "Klosterhaugen.csv", "4601", "bergen", 60.3925, 5.3116),
    Station("Knarrdalstranda", "Knarrdalstranda.csv", "4001", "porsgrunn", 59.1460, 9.6500),
    Station("Nygaardsgata", "Nygaardsgata.csv", "3107", "fredrikstad", 59.2130, 10.9380),
    Station("Nedre Langgate", "Nedre-Langgate.csv", "3905", "tonsberg", 59.2670, 10.4080),
)
AIR_METRICS = ["pm25", "temperature", "wind_speed", "rain"]
YEAR_START, YEAR_END = dt.date(2019, 1, 1), dt.date(2020, 1, 1)

_TERMS = """
[purpose]
code = "{purpose}"
description = "{description}"
[data]
datasets = ["air_quality"]
metrics = ["pm25", "temperature", "wind_speed", "rain"]
aggregates = ["count", "sum", "mean", "min", "max", "stddev", "quantile"]
group_by = ["municipality", "time_bucket"]
smallest_bucket = "day"
longest_window_days = 366
min_group_size = 1
queries_per_day = 1000
[validity]
from = "now"
until = {until}
"""


def terms(purpose: str, description: str) -> str:
    until = dt.date.today().replace(year=dt.date.today().year + 1).isoformat()
    return _TERMS.format(purpose=purpose, description=description, until=until)


def station_csv(station: Station) -> Path:
    return Path(str(resources.files("node.data").joinpath("air-quality-norway", station.csv)))


def day_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


@dataclass
class RegionHub:
    station: Station
    data_dir: Path
    hub_id: str = ""
    address: str = ""
    sensor_id: str = ""
    extra: dict = field(default_factory=dict)

    def admin(self, timeout: float = 60.0) -> AdminClient:
        return AdminClient(self.data_dir, timeout=timeout)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def enrol(hub: RegionHub, credentials_dir: Path) -> SensorCredential:
    """Enrol the hub's station as a sensor with its own key; return its credential."""
    with hub.admin() as admin:
        response = admin.call("AddSensor", admin_pb2.AddSensorRequest(
            dataset="air_quality", metrics=AIR_METRICS, latitude=hub.station.lat,
            longitude=hub.station.lon, label=hub.station.name))
    path = credentials_dir / f"{hub.station.slug}.credential.json"
    write_private_file(path, response.credential_json)
    hub.sensor_id = response.sensor.sensor_id
    return SensorCredential.load(path)


def replay_year(credential: SensorCredential, station: Station, advance: Callable[[int], None]) -> int:
    readings = list(read_station_csv(station_csv(station), credential.metrics, YEAR_START, YEAR_END))
    summary = replay(Sensor(credential), readings, progress=advance)
    return summary.readings_stored


def count_readings(station: Station) -> int:
    return sum(1 for _ in read_station_csv(station_csv(station), AIR_METRICS, YEAR_START, YEAR_END))


def peer_all(hubs: list[RegionHub]) -> None:
    for a in hubs:
        with a.admin() as admin:
            for b in hubs:
                if a is not b:
                    admin.call("AddPeer", admin_pb2.AddPeerRequest(address=b.address, hub_id=b.hub_id))


def _has_agreement(hub: RegionHub, agreement_id: str) -> bool:
    with hub.admin() as admin:
        try:
            admin.call("GetAgreement", admin_pb2.AgreementRef(agreement_id=agreement_id))
            return True
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise


def share_between_hubs(hubs: list[RegionHub], on_signed: Callable[[], None] = lambda: None) -> int:
    """Every hub offers its air-quality aggregates to every other; each countersigns."""
    pending = []
    for provider in hubs:
        with provider.admin() as admin:
            for consumer in hubs:
                if consumer is not provider:
                    view = admin.call("ProposeAgreement", admin_pb2.ProposeAgreementRequest(
                        terms_toml=terms("environmental_monitoring", "Regional air-quality overview for the municipalities"),
                        to=consumer.hub_id))
                    pending.append((consumer, view.terms.agreement_id))
    for consumer, agreement_id in pending:
        wait_until(functools.partial(_has_agreement, consumer, agreement_id), f"agreement {agreement_id} to reach {consumer.station.slug}")
        with consumer.admin() as admin:
            admin.call("AcceptAgreement", admin_pb2.AgreementRef(agreement_id=agreement_id))
        on_signed()
    return len(pending)


def share_with_partner(hubs: list[RegionHub], partner: PartnerKey, partner_key_file: Path, name: str, org_number: str) -> int:
    """Each hub registers the partner's public key and offers it an agreement; the partner
    countersigns each with its own key."""
    offered = []
    for hub in hubs:
        with hub.admin() as admin:
            admin.call("AddPartner", admin_pb2.AddPartnerRequest(
                name=name, org_number=org_number, public_key_file=public_file_path(partner_key_file).read_bytes()))
            view = admin.call("ProposeAgreement", admin_pb2.ProposeAgreementRequest(
                terms_toml=terms("research", "Air quality and health across the region (research project)"),
                to=partner.partner_id))
            offered.append((hub, view.terms.agreement_id))

    async def countersign_all():
        for hub, agreement_id in offered:
            async with PartnerSession(partner, hub.address, hub.hub_id,
                                      known_hubs=KnownHubs(path_beside(partner_key_file))) as session:
                await session.accept(agreement_id)

    asyncio.run(countersign_all())
    return len(offered)


def monthly_pm25_spec(**overrides) -> query_pb2.QuerySpec:
    spec = query_pb2.QuerySpec(dataset="air_quality", metric="pm25", aggregate="mean", start_ms=day_ms(YEAR_START),
                               end_ms=day_ms(YEAR_END), bucket="month", group_by="municipality", purpose_code="research",
                               deadline_ms=10_000)
    for key, value in overrides.items():
        setattr(spec, key, value) if not isinstance(value, list) else getattr(spec, key).extend(value)
    return spec


async def ask_as_partner(partner: PartnerKey, hub: RegionHub, spec: query_pb2.QuerySpec):
    cert = await fetch_certificate(hub.address)
    async with channel_to(hub.address, hub.hub_id, cert) as channel:
        return await asker.ask(channel, partner.key, partner.partner_id, hub.hub_id, spec)


@dataclass
class Partner:
    key: PartnerKey
    key_file: Path
    name: str
    org_number: str


def station_for(municipality: str) -> Station:
    for station in STATIONS:
        if station.municipality == municipality:
            return station
    covered = ", ".join(s.municipality for s in STATIONS)
    raise ValueError(f"no demo station in municipality {municipality}; the region demo covers {covered}")


class Steps:
    """How a region set-up reports progress: a no-op by default; the demo shows rich output."""

    def step(self, text: str) -> None: ...
    def progress(self, description: str, total: int) -> Callable[[int], None]:
        return lambda n: None
    def done(self) -> None: ...


def setup_region(hubs: list[RegionHub], work_dir: Path, partner: Partner, steps: Steps | None = None) -> None:
    """Enrol and replay every station, peer all hubs, sign hub-to-hub and partner agreements."""
    steps = steps or Steps()
    steps.step("Enrolling each station as a sensor with its own 256-bit key, replaying 2019 sealed per sensor")
    credentials = work_dir / "credentials"
    credentials.mkdir(parents=True, exist_ok=True)
    advance = steps.progress("readings", sum(count_readings(h.station) for h in hubs))
    for hub in hubs:
        replay_year(enrol(hub, credentials), hub.station, advance)
    steps.done()
    steps.step("Peering every pair of hubs (each pins the others' hub ids)")
    peer_all(hubs)
    steps.step("Signing agreements: every hub shares air-quality aggregates with the others")
    signed = steps.progress("agreements", len(hubs) * (len(hubs) - 1))
    share_between_hubs(hubs, on_signed=lambda: signed(1))
    steps.done()
    steps.step(f"A research partner ({partner.name}) has its own key; every hub offers it an agreement; it countersigns")
    share_with_partner(hubs, partner.key, partner.key_file, partner.name, partner.org_number)
