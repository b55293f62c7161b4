"""The documented release-log benchmark command (docs/benchmarks.md) runs and prints what the
document quotes: both grains, wall-clock and CPU ratios, the log's rows per asker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_release_log_benchmark_runs_and_prints_its_ratios():
    out = subprocess.run([sys.executable, "-m", "bench.release_log", "--sensors", "3", "--repetitions", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "3 sensors, 26,280 hourly readings of 2019" in out
    for grain, rows in (("day", 365), ("hour", 8760)):
        assert re.search(rf"by {grain} .*first release/baseline \d+\.\d\d, repeat/baseline \d+\.\d\d; log rows per asker {rows}\n"
                         r"    CPU \(all threads\): baseline .*first release/baseline \d+\.\d\d, repeat/baseline \d+\.\d\d", out), out


def test_the_benchmark_refuses_fewer_sensors_than_its_minimum_group_size():
    run = subprocess.run([sys.executable, "-m", "bench.release_log", "--sensors", "2"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "--sensors must be at least 3" in run.stderr
