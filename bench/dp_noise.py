"""Differential-privacy noise benchmark: what drawing a DP query's noise costs a providing hub.

    .venv/bin/python -m bench.dp_noise            # about a minute on 2 cores

A query of N cells is noised as whole vectors (federation/dp.py: OpenDP's vector Laplace
mechanism, one call per figure for all N cells). The baseline, measured in the same run, is
one OpenDP scalar Laplace call per cell and figure (how federation/dp.py drew noise before
the whole-query calibration). Printed: seconds per query and per cell, and the ratio
baseline / vector, for N = 1 (one window), 31 (a month by day), 365 (a year by day) and
8 760 (a year by hour), for `mean` (three figures: contributors, count, sum).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import opendp.prelude as opendp

from bench.machine import machine_facts
from federation import dp
from node.storage.base import CellRow

SIZES = (1, 31, 365, 8_760)
BOUNDS = (-80.0, 70.0)


def _cells(n: int) -> list[CellRow]:
    return [CellRow(i * 3_600_000, 24, 120.0, 0.0, 0.0, 0.0, 5) for i in range(n)]


def vector(cells: list[CellRow]) -> None:
    dp.noisy_cells(cells, "mean", 1.0, BOUNDS, 24, 3)


def per_cell_baseline(cells: list[CellRow]) -> None:
    """Three scalar OpenDP Laplace draws for every cell (what each cell got before)."""
    scalar = opendp.m.make_laplace(opendp.atom_domain(T=float, nan=False), opendp.absolute_distance(T=float), scale=100.0)
    for cell in cells:
        scalar(float(cell.contributors)), scalar(float(cell.count)), scalar(cell.sum)


def seconds(work, cells: list[CellRow], budget_s: float = 3.0) -> float:
    """Median-free and simple: repeat until `budget_s` has passed (at least once); mean time."""
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < budget_s:
        work(cells)
        runs += 1
    return (time.perf_counter() - start) / runs


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, value in machine_facts(Path(tmp)):
            print(f"{name:>10}: {value}")
    print(f"{'cells':>6} {'vector s/query':>15} {'per-cell s/query':>17} {'vector us/cell':>15} {'ratio':>6}")
    for n in SIZES:
        cells = _cells(n)
        v, b = seconds(vector, cells), seconds(per_cell_baseline, cells)
        print(f"{n:>6} {v:>15.4f} {b:>17.4f} {v / n * 1e6:>15.1f} {b / v:>6.2f}")


if __name__ == "__main__":
    main()
