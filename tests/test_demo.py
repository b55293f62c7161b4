"""`smartregion demo --exit` completes, and the monthly PM2.5 means it prints are the ones
computed directly from the station CSVs."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections import defaultdict

from federation import answers
from node.app import region
from node.app.broker import mosquitto_binary
from node.register import lookup


def csv_monthly_means() -> dict[tuple[str, str], float]:
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    for station in region.STATIONS:
        with open(region.station_csv(station), newline="") as f:
            for row in csv.DictReader(f):
                if row["pm25"].strip() and row["date"].startswith("2019-"):
                    sums[(station.municipality, row["date"][:7])].append(float(row["pm25"]))
    return {key: sum(values) / len(values) for key, values in sums.items()}


def test_demo_walkthrough_prints_the_csv_means(tmp_path):
    directory = tmp_path / "region"
    result = subprocess.run([sys.executable, "-m", "node.app.cli.main", "demo", "--exit", "--dir", str(directory)],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, COLUMNS="200"))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "5 of 5 hubs answered" in out
    if mosquitto_binary():  # the LoRaWAN station: the network saw ciphertext, the hub stored the readings
        assert re.search(r"744 uplinks through the network's MQTT broker .* the network sees FRMPayload [0-9a-f]+", out)
        assert re.search(r"The Porsgrunn hub unwrapped each session key, decrypted and stored \d+ readings", out)
    assert re.search(r"Refused \(PERMISSION_DENIED\): .*bucket 'hour' is finer than agreement", out)

    header = next(line for line in out.splitlines() if re.search(r"\W month \W", line))
    names = re.findall(r"[A-ZÆØÅ][a-zæøå]+", header)
    municipalities = [next(s.municipality for s in region.STATIONS if lookup(s.municipality).name == n) for n in names]
    expected = csv_monthly_means()
    printed = 0
    for line in out.splitlines():
        match = re.match(r"\W*(2019-\d\d)\W+(.*)", line)
        if not match:
            continue
        values = [float(v) for v in re.findall(r"-?\d+\.\d{3}", match.group(2))]
        assert len(values) == 5, line
        for municipality, value in zip(municipalities, values, strict=True):
            assert value == round(expected[(municipality, match.group(1))], 3), (municipality, match.group(1))
            printed += 1
    assert printed == 60

    # The saved answer carries every hub's signature and verifies offline.
    verified = answers.verify((directory / "answer-monthly-pm25.json").read_bytes())
    assert len(verified.verified_hubs) == 5
    # The demo keeps the data directories for the user to explore.
    assert all((directory / s.slug / "hub.db").exists() for s in region.STATIONS)
