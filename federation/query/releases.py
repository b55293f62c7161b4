"""The release log: no differencing over time (docs/privacy.md, section 2).

The rule: to one agreement LINE (the asker, a dataset and a metric: every agreement this hub
holds with the asker over the dataset, renewals and new versions included), a provider releases
each *sub-cell* — one bucket of the agreement's finest grain — with ONE content only. The log
keeps, per released sub-cell, a fingerprint of its content (`scheme_for`): of every reading it
holds for an hourly sub-cell (READINGS, `SubcellHasher`), of what each contributor added for
coarser ones (SUBCELL, `fingerprint`). A new cell is compared with every logged sub-cell it
overlaps, whatever the extent it was released in (a day, a week, a window): if any of them now
holds different content (a consent withdrawn, a late reading, a sensor enrolled or revoked, an
erasure), the cell is withheld. Every released cell is then a union of sub-cells whose content
never changes, so no difference of released cells is finer than the agreement's grain.

A window released whole is logged as a run too, with the digest of its sub-cells' fingerprints
(`run_digest`): the high-water mark. The same window asked again with the same digest now holds
in every sub-cell the content released before, so it is released without the row-by-row check.

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
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from node.storage.base import Contribution, ReleasedSubcell

FINGERPRINT_DOMAIN = b"smartregion/v1/release-fingerprint\x00"
SETTLE_MS = 2 * 3_600_000  # a cell is released only once its extent ended this long ago
READINGS = 3  # scheme of a sub-cell row fingerprinting every reading (SubcellHasher): hourly sub-cells
SUBCELL = 2   # scheme of a sub-cell row fingerprinting per-contributor summaries (`fingerprint`): coarser ones
LEGACY = 1    # scheme of a whole-cell row of the log before schema version 8 (per agreement)
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


_READINGS_PREFIX = FINGERPRINT_DOMAIN + b"readings\x00"
_HOUR_MS = 3_600_000


class SubcellReadings(NamedTuple):
    """One sub-cell in this answer's data: its fingerprint (in the scheme it is logged with), how
    many readings it holds and whose (contributor keys, to count them)."""

    fingerprint: bytes
    readings: int
    contributors: AbstractSet[str]


class SubcellHasher:
    """The fingerprints (scheme READINGS) of disjoint, hour-aligned extents, fed hour by hour in
    increasing order with the records of the readings (Store.readings_by_hour: `<contributor>
    <ms into the hour> <value>`, the value to 18 significant digits, which give the stored double
    back exactly). An extent's fingerprint is SHA-256 over the domain and, hour after hour, the
    hour's start and its records sorted, each line ended by a newline: a canonical order of
    exactly the readings it holds, whatever order SQLite returns them in. No record holds a
    newline and every record starts with a letter, the hour with a digit, so the bytes hashed
    give every reading back: extents that differ by one reading (added, removed, of another
    contributor, time or value) have different fingerprints. SQLite does the per-reading work;
    Python sorts and hashes one string per reading."""

    def __init__(self, extents: Iterable[tuple[int, int]]) -> None:
        self._extents = sorted(extents)
        for (start, end), (following, _) in zip(self._extents, [*self._extents[1:], (math.inf, 0)], strict=True):
            if start % _HOUR_MS or end % _HOUR_MS or not start < end <= following:
                raise ValueError(f"sub-cells must be disjoint and start and end on whole hours, not [{start}, {end})")
        self._starts = [start for start, _ in self._extents]
        self._hashes = [hashlib.sha256(_READINGS_PREFIX) for _ in self._extents]
        self._readings = [0] * len(self._extents)
        self._contributors: list[set[str]] = [set() for _ in self._extents]
        self._last_hour: float = -math.inf

    def add(self, hour_ms: int, records: list[str], contributors: Iterable[str]) -> None:
        """The records of every reading of the hour starting at `hour_ms`, and their contributors
        (an hour outside every extent is skipped)."""
        if hour_ms <= self._last_hour or hour_ms % _HOUR_MS:
            raise ValueError(f"hours come once each, whole and in increasing order: {hour_ms} after {self._last_hour}")
        self._last_hour = hour_ms
        i = bisect.bisect_right(self._starts, hour_ms) - 1
        if i < 0 or hour_ms >= self._extents[i][1]:
            return
        records.sort()
        self._hashes[i].update(b"%d\n" % hour_ms + "\n".join(records).encode() + b"\n")
        self._readings[i] += len(records)
        self._contributors[i].update(contributors)

    def result(self) -> dict[tuple[int, int], SubcellReadings]:
        return {extent: SubcellReadings(h.digest(), n, who)
                for extent, h, n, who in zip(self._extents, self._hashes, self._readings, self._contributors, strict=True)}


EMPTY_READINGS = hashlib.sha256(_READINGS_PREFIX).digest()  # the READINGS fingerprint of an empty sub-cell


def scheme_for(grain: str) -> int:
    """The fingerprint a sub-cell of `grain` is logged with. Both give any change of content
    away; they differ in cost (bench/release_log.py, docs/benchmarks.md). Hourly sub-cells
    hold one or a few readings per contributor, and per-reading records (built by SQLite) are
    cheapest; coarser sub-cells hold tens or more per contributor, and summing them up per
    contributor first (SQL GROUP BY) leaves fewer records to hash."""
    return READINGS if grain == "hour" else SUBCELL


def run_digest(fingerprints: Iterable[bytes]) -> bytes:
    """The digest of a window's sub-cells (their fingerprints, 32 bytes each, in time order), for
    the log's high-water mark (node/storage ReleasedRun): equal digests, equal content in every
    sub-cell."""
    return hashlib.sha256(FINGERPRINT_DOMAIN + b"run\x00" + b"".join(fingerprints)).digest()


@dataclass(frozen=True)
class Candidate:
    """A cell the query would release: its bucket start, its extent, and the sub-cell rows to log."""

    bucket_start_ms: int
    start_ms: int
    end_ms: int
    subcells: tuple[ReleasedSubcell, ...]


def decide(candidates: Sequence[Candidate], current: Mapping[ExtentKey, bytes],
           earlier: Sequence[ReleasedSubcell]) -> tuple[dict[int, Withholding], list[ReleasedSubcell]]:
    """Which candidates the log withholds, and the rows to log for the others (those not logged
    already: a repeat logs nothing). `current` holds
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
    logged = {(row.scheme, row.start_ms, row.end_ms, row.fingerprint) for row in earlier}
    rows = [r for c in candidates if c.bucket_start_ms not in withheld for r in c.subcells
            if (r.scheme, r.start_ms, r.end_ms, r.fingerprint) not in logged]
    return withheld, rows
