"""The register of Norway's 357 municipalities (the division in force since 1 January 2024).

Shipped in node/data/kommuner-2024.csv (see node/data/ATTRIBUTION.md). A municipality is named by
its four-digit kommunenummer, by its 2020–2023 number (114 municipalities were renumbered in
2024; an old number is an alias that resolves to the current municipality), or by its name
("Stavanger", "tønsberg", and for names with a Sámi or Kven form either form: "Oslo", "Oslove").
"""

from __future__ import annotations

import csv
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

REGISTER_FILE = "kommuner-2024.csv"
NAME_FORM_SEPARATOR = " - "  # "Kárášjohka - Karasjok": the register's way of writing both forms


@dataclass(frozen=True)
class Municipality:
    number: str  # kommunenummer since 2024, four digits, e.g. "4001"
    name: str
    county_number: str
    county_name: str
    lat: float
    lon: float
    former_number: str = ""  # the 2020–2023 kommunenummer ("3806"); empty for Haram, new in 2024

    @property
    def name_forms(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.name.split(NAME_FORM_SEPARATOR))


class UnknownMunicipality(ValueError):
    pass


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold().strip()


@lru_cache(maxsize=1)
def all_municipalities() -> tuple[Municipality, ...]:
    with resources.files("node.data").joinpath(REGISTER_FILE).open(encoding="utf-8") as f:
        return tuple(
            Municipality(
                number=row["kommunenummer"],
                name=row["kommunenavn"],
                county_number=row["fylkesnummer"],
                county_name=row["fylkesnavn"],
                lat=float(row["lat"]),
                lon=float(row["lon"]),
                former_number=row["kommunenummer_2020_2023"],
            )
            for row in csv.DictReader(f)
        )


@lru_cache(maxsize=1)
def _by_number() -> dict[str, Municipality]:
    """Current numbers, then former numbers as aliases (a current number always wins)."""
    current = {m.number: m for m in all_municipalities()}
    aliases = {m.former_number: m for m in all_municipalities() if m.former_number and m.former_number not in current}
    return {**aliases, **current}


def is_alias(number: str) -> bool:
    """True for a 2020–2023 number that is no longer a current one ("3806")."""
    found = _by_number().get(number.strip().zfill(4))
    return found is not None and found.number != number.strip().zfill(4)


def lookup(number_or_name: str) -> Municipality:
    """Find a municipality by kommunenummer ("4001", "301"), former number ("3806") or name."""
    key = number_or_name.strip()
    if key.isdigit():
        found = _by_number().get(key.zfill(4))
        if found:
            return found
        raise UnknownMunicipality(f"no municipality has kommunenummer {key!r} (current or 2020–2023)")
    matches = [m for m in all_municipalities() if any(_fold(form) == _fold(key) for form in (m.name, *m.name_forms))]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:  # e.g. a name shared by two counties' municipalities
        options = ", ".join(f"{m.number} ({m.county_name})" for m in matches)
        raise UnknownMunicipality(f"{key!r} is ambiguous: use the kommunenummer, one of {options}")
    raise UnknownMunicipality(f"no municipality is named {key!r}")
