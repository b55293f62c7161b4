"""Agreement terms: authored as TOML by an admin, carried as protobuf bytes, validated here.

The same validation runs when a hub proposes terms and when it receives terms from another
party, so nothing invalid is ever signed or stored.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import tomllib
import uuid

from node import catalog, register
from node.api.v1 import agreement_pb2
from node.purposes import PURPOSES
from node.signing import hub_id_from_public_key, partner_id_from_public_key

AGGREGATES = ("count", "sum", "mean", "min", "max", "stddev", "quantile")
GROUPINGS = ("municipality", "time_bucket")
# Coarsest last; an agreement's smallest bucket allows it and every coarser one.
BUCKETS = ("hour", "day", "week", "month", "year", "window")
MAX_WINDOW_DAYS = 3660
# Differential privacy (docs/privacy.md): the lifetime epsilon of one agreement may not exceed
# MAX_DP_EPSILON, and one data subject adds at most MAX_CONTRIBUTIONS readings to a cell.
MAX_DP_EPSILON = 10.0
MIN_DP_EPSILON = 0.001
MAX_CONTRIBUTIONS = 10_000
DP_AGGREGATES = ("count", "sum", "mean")
SECTION_KEYS = {
    "purpose": {"code", "description"},
    "data": {"datasets", "metrics", "aggregates", "group_by", "smallest_bucket", "longest_window_days", "min_group_size",
             "consent_required", "queries_per_day", "dp_epsilon", "dp_max_contributions"},
    "validity": {"from", "until"},
}
_URN_UUID = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class TermsError(ValueError):
    pass


def new_agreement_id() -> str:
    return uuid.uuid4().urn


def _millis(value, field: str, now_ms: int) -> int:
    if value == "now":
        return now_ms
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise TermsError(f"{field} needs a time zone, e.g. 2027-01-01T00:00:00Z")
        return int(value.timestamp() * 1000)
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp() * 1000)
    raise TermsError(f"{field} must be a date, a date-time with time zone, or \"now\"")


def _strings(section: dict, key: str, where: str) -> list[str]:
    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TermsError(f"{where}.{key} must be a list of strings")
    return value


def _int(section: dict, key: str, where: str, default: int | None = None) -> int:
    value = section.get(key, default)
    if value is None:
        raise TermsError(f"{where}.{key} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TermsError(f"{where}.{key} must be a whole number")
    return value


def parse_toml(text: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TermsError(f"the terms are not valid TOML: {exc}") from None


def from_toml(doc: dict, provider: agreement_pb2.Party, consumer: agreement_pb2.Party,
              now_ms: int) -> agreement_pb2.AgreementTerms:
    """Build terms from an admin's parsed TOML file; the hub fills in the parties and the id.
    (A top-level `provider` key names the providing hub; the caller resolves it.)"""
    unknown = set(doc) - {"version", "supersedes", "purpose", "data", "validity", "provider", "agreement_id"}
    if unknown:
        raise TermsError(f"unknown keys in the terms: {', '.join(sorted(unknown))}")
    purpose, data, validity = doc.get("purpose", {}), doc.get("data", {}), doc.get("validity", {})
    for name, section in (("purpose", purpose), ("data", data), ("validity", validity)):
        if not isinstance(section, dict) or not section:
            raise TermsError(f"the terms need a [{name}] table")
        misspelt = set(section) - SECTION_KEYS[name]
        if misspelt:
            raise TermsError(f"unknown keys in [{name}]: {', '.join(sorted(misspelt))}; known: {', '.join(sorted(SECTION_KEYS[name]))}")
    epsilon = data.get("dp_epsilon", 0.0)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TermsError("data.dp_epsilon must be a number")
    consent = data.get("consent_required", False)
    if not isinstance(consent, bool):
        raise TermsError("data.consent_required must be true or false")
    terms = agreement_pb2.AgreementTerms(
        agreement_id=doc.get("agreement_id") or new_agreement_id(),
        version=_int(doc, "version", "terms", 1),
        supersedes=doc.get("supersedes", ""),
        provider=provider,
        consumer=consumer,
        purpose_code=str(purpose.get("code", "")),
        purpose_description=str(purpose.get("description", "")),
        datasets=_strings(data, "datasets", "data"),
        metrics=_strings(data, "metrics", "data"),
        aggregates=_strings(data, "aggregates", "data"),
        group_by=_strings(data, "group_by", "data"),
        smallest_bucket=str(data.get("smallest_bucket", "")),
        longest_window_days=_int(data, "longest_window_days", "data"),
        min_group_size=_int(data, "min_group_size", "data"),
        consent_required=consent,
        queries_per_day=_int(data, "queries_per_day", "data"),
        dp_epsilon=float(epsilon),
        dp_max_contributions=_int(data, "dp_max_contributions", "data", 0),
        valid_from_ms=_millis(validity.get("from", "now"), "validity.from", now_ms),
        valid_until_ms=_millis(validity.get("until"), "validity.until", now_ms),
        created_at_ms=now_ms,
    )
    validate(terms, now_ms, new=True)
    return terms


def _is_kommunenummer(number: str, hub: bool) -> bool:
    """A hub party's municipality: a current four-digit kommunenummer (askers check partials against it)."""
    try:
        return hub and register.lookup(number).number == number
    except register.UnknownMunicipality:
        return False


def party_id_matches_key(party: agreement_pb2.Party) -> bool:
    if len(party.public_key) != 32:
        return False
    if party.kind == agreement_pb2.PARTY_KIND_HUB:
        return hub_id_from_public_key(party.public_key) == party.id
    if party.kind == agreement_pb2.PARTY_KIND_PARTNER:
        return partner_id_from_public_key(party.public_key) == party.id
    return False


def validate(terms: agreement_pb2.AgreementTerms, now_ms: int, *, new: bool) -> None:
    """Raise TermsError naming the first problem. `new`: the terms are being proposed now."""
    if not _URN_UUID.match(terms.agreement_id):
        raise TermsError(f"agreement id {terms.agreement_id!r} is not a urn:uuid")
    if terms.version < 1:
        raise TermsError("version starts at 1")
    if terms.supersedes and not _URN_UUID.match(terms.supersedes):
        raise TermsError(f"supersedes {terms.supersedes!r} is not a urn:uuid")
    if terms.version > 1 and not terms.supersedes:
        raise TermsError(f"version {terms.version} must name the agreement it supersedes")
    if terms.provider.kind != agreement_pb2.PARTY_KIND_HUB:
        raise TermsError("the provider must be a hub")
    for role, party in (("provider", terms.provider), ("consumer", terms.consumer)):
        if not party_id_matches_key(party):
            raise TermsError(f"the {role}'s id {party.id!r} is not derived from its public key")
        if party.municipality and not _is_kommunenummer(party.municipality, hub=party.kind == agreement_pb2.PARTY_KIND_HUB):
            raise TermsError(f"the {role}'s municipality {party.municipality!r} is not a hub's current kommunenummer")
    if terms.provider.id == terms.consumer.id:
        raise TermsError("provider and consumer must be different parties")
    if terms.purpose_code not in PURPOSES:
        raise TermsError(f"purpose code {terms.purpose_code!r} is not one of: {', '.join(PURPOSES)}")
    if not terms.purpose_description.strip():
        raise TermsError("the purpose needs a description")
    if not terms.datasets:
        raise TermsError("the terms name no dataset")
    known_metrics: dict[str, str] = {}
    for name in terms.datasets:
        try:
            known_metrics.update({m: name for m in catalog.dataset(name).metrics})
        except catalog.CatalogError as exc:
            raise TermsError(str(exc)) from None
    personal = [d for d in terms.datasets if catalog.dataset(d).classification is catalog.Classification.PERSONAL]
    if personal and not terms.consent_required:
        raise TermsError(f"dataset(s) {', '.join(personal)} are personal: the terms must set consent_required = true")
    if personal and terms.dp_epsilon <= 0:
        raise TermsError(f"dataset(s) {', '.join(personal)} are personal: the terms must set a differential-privacy budget "
                         f"(dp_epsilon, at most {MAX_DP_EPSILON:g}) and dp_max_contributions")
    if not terms.metrics:
        raise TermsError("the terms name no metric")
    for metric in terms.metrics:
        if metric not in known_metrics:
            raise TermsError(f"metric {metric!r} is not in dataset(s) {', '.join(terms.datasets)}")
    _members("aggregate", terms.aggregates, AGGREGATES, required=True)
    _members("grouping", terms.group_by, GROUPINGS, required=False)
    if terms.smallest_bucket not in BUCKETS:
        raise TermsError(f"smallest bucket {terms.smallest_bucket!r} is not one of: {', '.join(BUCKETS)}")
    if not 1 <= terms.longest_window_days <= MAX_WINDOW_DAYS:
        raise TermsError(f"the longest window must be 1 to {MAX_WINDOW_DAYS} days")
    if terms.min_group_size < 1:
        raise TermsError("the minimum group size must be at least 1")
    if terms.queries_per_day < 1:
        raise TermsError("the query quota must be at least 1 a day")
    if not math.isfinite(terms.dp_epsilon) or terms.dp_epsilon < 0 or 0 < terms.dp_epsilon < MIN_DP_EPSILON:
        raise TermsError(f"the differential-privacy budget must be 0 (none) or a finite number >= {MIN_DP_EPSILON:g}")
    if terms.dp_epsilon > MAX_DP_EPSILON:
        raise TermsError(f"the differential-privacy budget {terms.dp_epsilon:g} is above the ceiling of {MAX_DP_EPSILON:g} "
                         "for the agreement's whole lifetime (docs/privacy.md)")
    if terms.dp_epsilon > 0:
        if not 1 <= terms.dp_max_contributions <= MAX_CONTRIBUTIONS:
            raise TermsError(f"under a differential-privacy budget, dp_max_contributions (the most readings one data subject "
                             f"adds to a cell) must be 1 to {MAX_CONTRIBUTIONS}, not {terms.dp_max_contributions}")
        exact = [a for a in terms.aggregates if a not in DP_AGGREGATES]
        if exact:
            raise TermsError(f"under a differential-privacy budget only {', '.join(DP_AGGREGATES)} are released, "
                             f"not {', '.join(exact)}")
    elif terms.dp_max_contributions:
        raise TermsError("dp_max_contributions is only meaningful with a differential-privacy budget (dp_epsilon)")
    if terms.valid_until_ms <= terms.valid_from_ms:
        raise TermsError("valid-until must be after valid-from")
    if new and terms.valid_until_ms <= now_ms:
        raise TermsError("the validity has already expired")


def _members(what: str, values, allowed: tuple[str, ...], required: bool) -> None:
    if required and not values:
        raise TermsError(f"the terms allow no {what}")
    for value in values:
        if value not in allowed:
            raise TermsError(f"{what} {value!r} is not one of: {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise TermsError(f"a {what} is listed twice")


def bucket_allowed(requested: str, smallest: str) -> bool:
    return BUCKETS.index(requested) >= BUCKETS.index(smallest)
