"""Rendering shared by the peer, partner and agreement commands."""

from __future__ import annotations

import datetime as dt

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from federation import agreements as ag
from node.api.v1 import admin_pb2, agreement_pb2


def when(ms: int) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def state_name(state: int) -> str:
    return ag.STATE_NAMES.get(state, "unknown")


def as_dict(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def terms_table(t: agreement_pb2.AgreementTerms) -> Table:
    table = Table(show_header=False, box=None)
    rows = [
        ("agreement", f"{t.agreement_id} (version {t.version}{', supersedes ' + t.supersedes if t.supersedes else ''})"),
        # The provider's kommunenummer: every answer's partials are checked against it (docs/querying.md 7.5).
        ("provider", f"{t.provider.name}{f' ({t.provider.municipality})' if t.provider.municipality else ''} {t.provider.id}"),
        ("consumer", f"{t.consumer.name} {t.consumer.id}"),
        ("purpose", f"{t.purpose_code}: {t.purpose_description}"),
        ("datasets", ", ".join(t.datasets)),
        ("metrics", ", ".join(t.metrics)),
        ("aggregates", ", ".join(t.aggregates)),
        ("grouping", ", ".join(t.group_by) or "region-wide only"),
        ("smallest bucket", t.smallest_bucket),
        ("longest window", f"{t.longest_window_days} days"),
        ("min group size", str(t.min_group_size)),
        ("consent required", "yes" if t.consent_required else "no"),
        ("quota", f"{t.queries_per_day} queries a day"),
        ("DP budget", f"epsilon {t.dp_epsilon:g}" if t.dp_epsilon else "none"),
        ("valid", f"{when(t.valid_from_ms)} to {when(t.valid_until_ms)}"),
    ]
    for key, value in rows:
        table.add_row(f"{key}", value)
    return table


def agreements_table(views: list[admin_pb2.AgreementView], wide: bool = False) -> Table:
    table = Table("agreement", "v", "role", "counterparty", "purpose", "datasets", "state", "valid until")
    for v in views:
        state = state_name(v.state) + (" (awaiting you)" if v.awaiting_my_signature else "")
        counterparty_id = v.counterparty_id if wide else f"{v.counterparty_id[:8]}…"
        table.add_row(v.terms.agreement_id, str(v.terms.version), v.role, f"{v.counterparty_name} {counterparty_id}",
                      v.terms.purpose_code, ",".join(v.terms.datasets), state, when(v.terms.valid_until_ms))
    return table


def print_agreement(console: Console, v: admin_pb2.AgreementView) -> None:
    console.print(terms_table(v.terms))
    console.print(f"state  {state_name(v.state)}" + ("  — awaiting this hub's signature" if v.awaiting_my_signature else ""))
    signed = {s.role: s for s in v.signatures}
    for role in ("provider", "consumer"):
        s = signed.get(role)
        console.print(f"{role} signature  " + ("verified ✓" if s and s.valid else "not signed yet"))
    for r in v.revocations:
        console.print(f"revoked by {r.revoked_by} at {when(r.revoked_at_ms)}: {r.reason}")
    if v.history:
        history = Table("when", "event", "by", "detail", title="history")
        for h in v.history:
            history.add_row(when(h.at_ms), h.event, h.actor, h.detail)
        console.print(history)
