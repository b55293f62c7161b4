"""The release log: no differencing over time (docs/privacy.md, section 2).

The rule: to one agreement LINE (the asker, a dataset and a metric: every agreement this hub
holds with the asker over the dataset, renewals and new versions included), a provider releases
each *sub-cell* — one bucket of the agreement's finest grain — with ONE content only. The log
keeps, per released sub-cell, a fingerprint of what its contributors added (who, how many
readings, their sums, extremes and times). A new cell is compared with every logged sub-cell it
overlaps, whatever the extent it was released in (a day, a week, a window): if any of them now
holds different content (a consent withdrawn, a late reading, a sensor enrolled or revoked, an
erasure), the cell is withheld. Every released cell is then a union of sub-cells whose content
never changes, so no difference of released cells is finer than the agreement's grain.

So that this freezing does not catch a day still filling up, a cell whose extent has not closed
`SETTLE_MS` before now is not released at all (withheld as still open).

Under a differential-privacy budget the log is not consulted: every release is noised and
charged against the lifetime budget, and the differences of noisy releases are what the budget
pays for.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from node.storage.base import Contribution, ReleasedSubcell

FINGERPRINT_DOMAIN = b"smartregion/v1/release-fingerprint\x00"
SETTLE_MS = 2 * 3_600_000  # a cell is released only once its extent ended this long ago
SUBCELL = 2  # scheme of a row logged per sub-cell
LEGACY = 1   # scheme of a whole-cell row of the log before schema version 8 (per agreement)
_HALF = 8    # legacy records: contributor hash, then contribution hash

ExtentKey = tuple[int, int, int]  # (scheme, start_ms, end_ms)


class Withholding(StrEnum):
    """Why the release log withholds a cell (docs/querying.md 4.2)."""

    STILL_OPEN = "still_open"                      # its extent has not closed SETTLE_MS ago
    CHANGED = "changed_since_released"             # a sub-cell released before now holds other content
    RACED = "changed_while_answering"              # the data changed while the answer was computed: ask again


def _who(contributor: str) -> bytes:
    return hashlib.sha256(FINGERPRINT_DOMAIN + b"who\x00" + contributor.encode()).digest()[:16]


def fingerprint(contributions: Sequence[Contribution]) -> bytes:
    """SHA-256 over the sorted records of one sub-cell's contributors. Sums are compared to 12
    significant digits (SQLite may add floats in another order); counts, extremes and the
    (exact, integer) sums of times change with any reading added, removed or moved."""
    records = []
    for c in contributions:
        who = _who(c.contributor)
        what = f"{c.readings}|{c.sum:.12g}|{c.sum_squares:.12g}|{c.min!r}|{c.max!r}|{c.hour_sum}|{c.ms_in_hour_sum}"
        records.append(who + hashlib.sha256(FINGERPRINT_DOMAIN + who + what.encode()).digest()[:16])
    return hashlib.sha256(FINGERPRINT_DOMAIN + b"subcell\x00" + b"".join(sorted(records))).digest()


EMPTY = fingerprint([])


def legacy_fingerprint(contributions: Sequence[Contribution]) -> bytes:
    """The fingerprints of the log before schema version 8, to compare the rows it left."""
    records = []
    for c in contributions:
        who = hashlib.sha256(FINGERPRINT_DOMAIN + c.contributor.encode()).digest()[:_HALF]
        what = hashlib.sha256(FINGERPRINT_DOMAIN + who + struct.pack(">qd", c.readings, float(c.sum or 0.0))).digest()[:_HALF]
        records.append(who + what)
    return b"".join(sorted(records))


@dataclass(frozen=True)
class Candidate:
    """A cell the query would release: its bucket start, its extent, and the sub-cell rows to log."""

    bucket_start_ms: int
    start_ms: int
    end_ms: int
    subcells: tuple[ReleasedSubcell, ...]


def decide(candidates: Sequence[Candidate], current: Mapping[ExtentKey, bytes],
           earlier: Sequence[ReleasedSubcell]) -> tuple[dict[int, Withholding], list[ReleasedSubcell]]:
    """Which candidates the log withholds, and the rows to log for the others. `current` holds
    the fingerprint, in this answer's data, of every extent in `earlier` the query computed; an
    earlier row it lacks appeared while the answer was computed (another query logged it)."""
    withheld: dict[int, Withholding] = {}
    rows: list[ReleasedSubcell] = []
    for cell in candidates:
        for row in earlier:
            if row.end_ms <= cell.start_ms or row.start_ms >= cell.end_ms:
                continue
            now = current.get((row.scheme, row.start_ms, row.end_ms))
            if now is None:
                withheld[cell.bucket_start_ms] = Withholding.RACED
                break
            if now != row.fingerprint:
                withheld[cell.bucket_start_ms] = Withholding.CHANGED
                break
        else:
            rows.extend(cell.subcells)
    return withheld, rows
