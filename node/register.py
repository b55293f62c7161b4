"""The register of Norway's 356 municipalities (Kartverket, 2020–2023 division).

Shipped in node/data/kommuner.csv (see node/data/ATTRIBUTION.md). A municipality is named by
its four-digit kommunenummer or by its name ("Stavanger", "tønsberg").
"""

from __future__ import annotations

import csv
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Municipality:
    number: str  # kommunenummer, four digits, e.g. "1103"
    name: str
    county_number: str
    county_name: str
    lat: float
    lon: float


class UnknownMunicipality(ValueError):
    pass


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold().strip()


@lru_cache(maxsize=1)
def all_municipalities() -> tuple[Municipality, ...]:
    with resources.files("node.data").joinpath("kommuner.csv").open(encoding="utf-8") as f:
        return tuple(
            Municipality(
                number=row["kommunenummer"],
                name=row["kommunenavn"],
                county_number=row["fylkesnummer"],
                county_name=row["fylkesnavn"],
                lat=float(row["lat"]),
                lon=float(row["lon"]),
            )
            for row in csv.DictReader(f)
        )


@lru_cache(maxsize=1)
def _by_number() -> dict[str, Municipality]:
    return {m.number: m for m in all_municipalities()}


def lookup(number_or_name: str) -> Municipality:
    """Find a municipality by kommunenummer ("1103", "301") or by name ("Stavanger")."""
    key = number_or_name.strip()
    if key.isdigit():
        found = _by_number().get(key.zfill(4))
        if found:
            return found
        raise UnknownMunicipality(f"no municipality has kommunenummer {key!r}")
    matches = [m for m in all_municipalities() if _fold(m.name) == _fold(key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:  # e.g. a name shared by two counties' municipalities
        options = ", ".join(f"{m.number} ({m.county_name})" for m in matches)
        raise UnknownMunicipality(f"{key!r} is ambiguous: use the kommunenummer, one of {options}")
    raise UnknownMunicipality(f"no municipality is named {key!r}")
