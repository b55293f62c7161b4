"""The release log: no differencing over time.

A provider remembers, per agreement, every cell it released: its extent, its number of
contributors, a digest of the contributor set, and one fingerprint per contributor of what
that contributor added (readings and their sum). Before releasing a cell again it compares:
if an earlier release of the same cell differs, and fewer than the minimum group size of
contributors account for the difference (a consent withdrawn, a late reading, a sensor
enrolled or revoked), the two releases would subtract to a small group's figures — so the new
cell is withheld. Under a differential-privacy budget the log is not consulted: the new
release is noised and charged instead (docs/privacy.md).
"""

from __future__ import annotations

import hashlib
import struct

FINGERPRINT_DOMAIN = b"smartregion/v1/release-fingerprint\x00"
_HALF = 8  # bytes: contributor hash, then contribution hash


def fingerprints(contributions: list[tuple[str, int, float]]) -> bytes:
    """Sorted 16-byte records: H(contributor)[:8] || H(contributor, readings, sum)[:8]."""
    records = []
    for contributor, readings, total in contributions:
        who = hashlib.sha256(FINGERPRINT_DOMAIN + contributor.encode()).digest()[:_HALF]
        what = hashlib.sha256(FINGERPRINT_DOMAIN + who + struct.pack(">qd", readings, float(total or 0.0))).digest()[:_HALF]
        records.append(who + what)
    return b"".join(sorted(records))


def digest(prints: bytes) -> bytes:
    """A digest of the contributor set (not of their figures)."""
    return hashlib.sha256(b"".join(prints[i:i + _HALF] for i in range(0, len(prints), 2 * _HALF))).digest()


def _records(prints: bytes) -> set[bytes]:
    return {prints[i:i + 2 * _HALF] for i in range(0, len(prints), 2 * _HALF)}


def changed_contributors(before: bytes, after: bytes) -> int:
    """How many contributors joined, left, or changed what they added, between two releases."""
    return len({r[:_HALF] for r in _records(before) ^ _records(after)})


def differs_by_a_small_group(earlier: list[bytes], prints: bytes, min_group_size: int) -> bool:
    """True if releasing `prints` next to any earlier release of the same cell would reveal
    what fewer than `min_group_size` contributors added."""
    return any(0 < changed_contributors(before, prints) < min_group_size for before in earlier)
