"""`smartregion demo`: a region of five municipalities on this machine, one command.

Five hubs (separate processes, TLS) each enrol their air-quality station as a sensor with its
own key and ingest a year of its real readings, sealed. The hubs peer, every hub offers its
aggregates to the others and to a research partner, and the partner asks the region for
monthly mean PM2.5 per municipality — then for something no agreement allows."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from federation import answers, partners
from node import hubdir
from node.api.v1 import query_pb2
from node.app import demo_lorawan, region
from node.app.broker import mosquitto_binary
from node.app.launcher import HubProcess
from node.register import lookup

DEMO_MARKER = ".smartregion-demo"
# Demo hubs only: a real hub's passphrase comes from its operator (docs/operations.md).
DEMO_PASSPHRASE = "demo-passphrase-not-for-production"
PARTNER = ("Universitetet i Stavanger", "971564679")
console = Console(markup=False)  # station and hub names are printed as written


def _fresh_directory(directory: Path) -> None:
    if directory.exists():
        if not (directory / DEMO_MARKER).exists():
            raise FileExistsError(f"{directory} exists and was not made by the demo; choose another --dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / DEMO_MARKER).write_text("made by `smartregion demo`; deleted and re-made by the next run\n")


def _step(number: int, text: str) -> None:
    console.print(Text.assemble((f"{number}.", "bold cyan"), " ", text))


class RichSteps(region.Steps):
    """Numbered steps and progress bars on the terminal."""

    def __init__(self, first: int) -> None:
        self.number = first
        self._progress: Progress | None = None

    def step(self, text: str) -> None:
        _step(self.number, text)
        self.number += 1

    def progress(self, description: str, total: int):
        self._progress = Progress(TextColumn("   {task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=console)
        self._progress.start()
        task = self._progress.add_task(description, total=total)
        return lambda n: self._progress.advance(task, n)

    def done(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def start_hubs(directory: Path, before_start=None) -> tuple[list[region.RegionHub], list[HubProcess]]:
    hubs = [region.RegionHub(station, directory / station.slug) for station in region.STATIONS]
    for hub in hubs:
        config, _ = hubdir.init_hub(hub.data_dir, hub.station.municipality, DEMO_PASSPHRASE.encode())
        hub.hub_id = config.hub_id
    if before_start is not None:
        before_start(hubs)
    processes = [HubProcess(hub.data_dir, DEMO_PASSPHRASE) for hub in hubs]
    with ThreadPoolExecutor(len(processes)) as pool:
        list(pool.map(lambda p: p.start(timeout=60), processes))
    for hub, process in zip(hubs, processes, strict=True):
        hub.address = process.endpoint["grpc_address"]
        hub.extra["http_url"] = process.endpoint["http_url"]
    return hubs, processes


def print_monthly_table(answer) -> None:
    by_month: dict[str, dict[str, query_pb2.Row]] = {}
    for row in answer.rows:
        by_month.setdefault(row.bucket_label, {})[row.group] = row
    groups = [s.municipality for s in region.STATIONS]
    table = Table("month", *(lookup(g).name for g in groups), title="Mean PM2.5 (µg/m³) per municipality, 2019")
    for month, cells in sorted(by_month.items()):
        table.add_row(month, *(("suppressed" if cells[g].suppressed else f"{cells[g].value:.3f}") if g in cells else "-" for g in groups))
    console.print(table)
    answered = sum(1 for p in answer.provenance if p.status == "answered")
    console.print(f"   {answered} of {len(answer.provenance)} hubs answered, each under its own signed agreement with the partner;"
                  f" each partial result is signed by its hub{' (partial answer)' if answer.partial else ''}.")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_demo(directory: Path, keep_running: bool) -> None:
    directory = directory.resolve()
    _fresh_directory(directory)
    started = time.monotonic()
    _step(1, "Creating five hubs (own keys, TLS certificate, storage) and starting them as separate processes")
    stations: list[demo_lorawan.LorawanStation] = []

    def add_lorawan_station(hubs: list[region.RegionHub]) -> None:
        if mosquitto_binary() is None:
            console.print("   (no LoRaWAN station: Debian's mosquitto is not installed; `make demo` installs it)")
            return
        stations.append(demo_lorawan.prepare(directory, next(h for h in hubs if h.station.slug == "porsgrunn")))

    hubs, processes = start_hubs(directory, add_lorawan_station)
    try:
        for hub in hubs:
            console.print(f"   {lookup(hub.station.municipality).name:12} hub {hub.hub_id}  gRPC {hub.address}")

        partner_dir = directory / "partner"
        partner_dir.mkdir()
        key_file = partner_dir / "uis.key"
        partner = partners.keygen(key_file, PARTNER[0], DEMO_PASSPHRASE.encode())
        steps = RichSteps(first=2)
        region.setup_region(hubs, directory, region.Partner(partner, key_file, *PARTNER), steps)

        for station in stations:
            steps.step("A LoRaWAN weather station in Porsgrunn: its uplinks cross a regional LoRaWAN network (ChirpStack's MQTT "
                       "integration) that cannot read them; only the Porsgrunn hub holds the join server's KEK")
            count, _ = demo_lorawan.run(station, console.print)
            console.print(f"   The Porsgrunn hub unwrapped each session key, decrypted and stored {count} readings "
                          "(sensor list shows it as end-to-end, LoRaWAN)")
        entry = hubs[0]
        steps.step(f"The partner asks the region, through the {lookup(entry.station.municipality).name} hub:"
                   " monthly mean PM2.5 per municipality in 2019")
        answer = asyncio.run(region.ask_as_partner(partner, entry, region.monthly_pm25_spec()))
        answer_file = directory / "answer-monthly-pm25.json"
        answer_file.write_bytes(answers.to_json(answer))
        print_monthly_table(answer)
        console.print(f"   Saved with its signatures to {answer_file}; check it offline: smartregion query verify {answer_file}")

        steps.step("The partner asks for hourly values of one sensor (Valand, Stavanger) — no agreement allows that")
        refused = region.monthly_pm25_spec(bucket="hour", municipalities=[entry.station.municipality],
                                           end_ms=region.day_ms(region.YEAR_START) + 86_400_000)
        try:
            asyncio.run(region.ask_as_partner(partner, entry, refused))
            console.print("   unexpectedly answered")
        except grpc.RpcError as exc:
            console.print(f"   Refused ({exc.code().name}): {exc.details()}")

        console.print(f"\nThe region is up ({time.monotonic() - started:.0f} s).")
        if keep_running:
            console.print("Dashboards (log in with the token in DATA_DIR/admin.token):")
            for hub in hubs:
                console.print(f"   {lookup(hub.station.municipality).name:12} {hub.extra['http_url']}/   data dir {hub.data_dir}")
            console.print(f"Try: smartregion agreement list --data-dir {hubs[0].data_dir}")
        else:
            console.print(f"The data directories stay in {directory}. To serve one again: SMARTREGION_PASSPHRASE="
                          f"{DEMO_PASSPHRASE} smartregion serve --data-dir {hubs[0].data_dir} --grpc-port 0 --http-port 0")
        if keep_running:
            console.print("The region keeps running; press Ctrl-C to stop it.")
            # Installed explicitly: a process started in the background of a script inherits
            # SIGINT as ignored, and SIGTERM would otherwise end it without stopping its hubs.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _interrupt)
            try:
                while all(p.process is not None and p.process.poll() is None for p in processes):
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
    finally:
        HubProcess.stop_all(processes)
        for station in stations:
            station.stop()
        console.print("Hubs stopped. Their data directories are kept in " + str(directory))
