"""A mergeable quantile sketch (DDSketch), in two modules with one job each: ddsketch.py the
algorithm, sql.py the same binning as SQL. The sketch never leaves a hub: what leaves is the
coarsened form of federation/partials.py."""

from __future__ import annotations

from node.sketch.ddsketch import ALPHA, MIN_INDEXABLE, Sketch, bin_of, gamma, representative
from node.sketch.sql import bin_sql

__all__ = ["ALPHA", "MIN_INDEXABLE", "Sketch", "bin_of", "bin_sql", "gamma", "representative"]
