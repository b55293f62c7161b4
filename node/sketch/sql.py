"""The sketch's binning as SQL, so SQLite bins values itself (node/storage/query_tables.py)."""

from __future__ import annotations

import math

from node.sketch.ddsketch import ALPHA, MIN_INDEXABLE, gamma


def bin_sql(column: str, alpha: float = ALPHA) -> tuple[str, str]:
    """SQL expressions for (sign, key) of `column`, the same as ddsketch.bin_of."""
    ln_gamma = repr(math.log(gamma(alpha)))
    sign = f"(CASE WHEN abs({column}) < {MIN_INDEXABLE!r} THEN 0 WHEN {column} > 0 THEN 1 ELSE -1 END)"
    key = f"(CASE WHEN abs({column}) < {MIN_INDEXABLE!r} THEN 0 ELSE CAST(ceil(ln(abs({column})) / {ln_gamma}) AS INTEGER) END)"
    return sign, key
