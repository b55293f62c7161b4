"""What an admin types, made forgiving: unique prefixes of ids, and municipality names
suggested when misspelt or typed without Norwegian letters ("Askoy" -> Askøy)."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable

from node.app.cli.common import fail
from node.register import Municipality, UnknownMunicipality, all_municipalities, lookup

AGREEMENT_URN = "urn:uuid:"
_ASCII = str.maketrans({"ø": "o", "æ": "ae", "å": "a", "ö": "o", "ä": "a", "ü": "u", "é": "e", "á": "a"})


def _plain(text: str) -> str:
    """Lower case, Norwegian letters spelt as on an English keyboard, other accents dropped."""
    folded = unicodedata.normalize("NFC", text).casefold().strip().translate(_ASCII)
    return "".join(c for c in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(c))


def suggest_municipalities(text: str, limit: int = 3) -> list[Municipality]:
    plain = _plain(text)
    everyone = all_municipalities()
    same = [m for m in everyone if _plain(m.name) == plain]
    if same:
        return same[:limit]
    names = {_plain(m.name): m for m in everyone}
    return [names[n] for n in difflib.get_close_matches(plain, list(names), n=limit, cutoff=0.75)]


def municipality(text: str) -> Municipality:
    """lookup(), but an unknown name says which municipality was probably meant."""
    try:
        return lookup(text)
    except UnknownMunicipality as exc:
        close = suggest_municipalities(text)
        hint = "; did you mean " + " or ".join(f"{m.name} ({m.number})" for m in close) + "?" if close else ""
        raise fail(f"{exc}{hint}") from None


def resolve_id(kind: str, given: str, candidates: Iterable[str], *, hex_only: bool = False) -> str:
    """The one candidate equal to `given` or starting with it (agreement ids also without
    their urn:uuid: prefix). Exits with a clear message if none or several match. What is not
    a prefix of any candidate and cannot be one (as long as the longest id, or not hex where
    ids are) is passed on unchanged, for the hub to refuse in its own words."""
    given = given.strip()
    known = list(dict.fromkeys(candidates))
    if given in known:
        return given
    prefix_like = not hex_only or all(c in "0123456789abcdefABCDEF" for c in given)
    if known and (len(given) >= max(map(len, known)) or not prefix_like):
        return given
    if not given:
        raise fail(f"give a {kind} id (or a unique prefix of one)")
    matches = [c for c in known if c.startswith(given) or (c.startswith(AGREEMENT_URN) and c[len(AGREEMENT_URN):].startswith(given))]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise fail(f"no {kind} id starts with {given!r}" + (f"; known: {', '.join(known[:10])}" + ("…" if len(known) > 10 else "")
                                                          if known else f"; this hub has no {kind}s"))
    raise fail(f"{given!r} is ambiguous: it starts {len(matches)} {kind} ids ({', '.join(matches[:10])}); give more characters")


