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

import bisect
import functools
import hashlib
import math
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


@functools.lru_cache(maxsize=65_536)
def _who(contributor: str) -> bytes:
    return hashlib.sha256(FINGERPRINT_DOMAIN + b"who\x00" + contributor.encode()).digest()[:16]


def _quantized(x: float) -> tuple[int, int]:
    """`x` to 40 significant bits (about 12 digits): SQLite may add floats in another order."""
    if not math.isfinite(x):  # a sum of squares can overflow; beyond any float's exponent
        return 0, 2001 if x > 0 else 2002 if x < 0 else 2003
    mantissa, exponent = math.frexp(x)
    return round(mantissa * _MANTISSA), exponent


_MANTISSA = float(1 << 40)
_RECORD = struct.Struct(">qqhqhddqq")


def fingerprint(contributions: Sequence[Contribution]) -> bytes:
    """SHA-256 over the sorted records of one sub-cell's contributors: who, how many readings,
    their sum and sum of squares (to 40 significant bits), the extremes, and the exact integer
    sums of the readings' hours and milliseconds within the hour, so that any reading added,
    removed or moved changes it."""
    if not contributions:
        return EMPTY
    records = sorted(_who(c.contributor) + _RECORD.pack(c.readings, *_quantized(c.sum), *_quantized(c.sum_squares), c.min, c.max,
                                                        c.hour_sum, c.ms_in_hour_sum) for c in contributions)
    return hashlib.sha256(FINGERPRINT_DOMAIN + b"subcell\x00" + b"".join(records)).digest()


EMPTY = hashlib.sha256(FINGERPRINT_DOMAIN + b"subcell\x00").digest()  # the fingerprint of no contributor


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
    earlier row it lacks appeared while the answer was computed (another query logged it).
    Candidates are disjoint; each earlier row is matched to those it overlaps by bisection."""
    ordered = sorted(candidates, key=lambda c: c.start_ms)
    starts = [c.start_ms for c in ordered]
    withheld: dict[int, Withholding] = {}
    for row in earlier:
        now = current.get((row.scheme, row.start_ms, row.end_ms))
        if now == row.fingerprint:
            continue
        why = Withholding.RACED if now is None else Withholding.CHANGED
        i = max(0, bisect.bisect_right(starts, row.start_ms) - 1)
        while i < len(ordered) and ordered[i].start_ms < row.end_ms:
            cell = ordered[i]
            if cell.end_ms > row.start_ms:
                withheld.setdefault(cell.bucket_start_ms, why)
            i += 1
    rows = [r for c in candidates if c.bucket_start_ms not in withheld for r in c.subcells]
    return withheld, rows
