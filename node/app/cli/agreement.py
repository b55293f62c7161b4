"""`smartregion agreement ...`: propose, inspect, accept, revoke, export and verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from federation import export as export_mod
from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, JsonFlag, console, emit, fail, print_json, user_errors
from node.app.cli.names import resolve_id
from node.app.cli.views import agreements_table, as_dict, print_agreement, state_name, terms_table, when
from node.client import AdminClient
from node.clock import SYSTEM_CLOCK

app = typer.Typer(help="Data-sharing agreements: the only thing that lets data cross a border.", no_args_is_help=True)
AgreementId = Annotated[str, typer.Argument(help="The agreement id (urn:uuid:...), or any unique prefix of it.")]


def _agreement_id(client: AdminClient, given: str) -> str:
    listed = client.call("ListAgreements", admin_pb2.ListAgreementsRequest()).agreements
    return resolve_id("agreement", given, (v.terms.agreement_id for v in listed))


def _party_id(client: AdminClient, given: str) -> str:
    peers = client.call("ListPeers", admin_pb2.ListPeersRequest()).peers
    partners = client.call("ListPartners", admin_pb2.ListPartnersRequest()).partners
    return resolve_id("peer or partner", given, [p.hub_id for p in peers] + [p.partner_id for p in partners])


def _show(view: admin_pb2.AgreementView, json_output: bool) -> None:
    if json_output:
        print_json(as_dict(view))
    else:
        print_agreement(console, view)


@app.command("propose")
def propose(
    data_dir: DataDir,
    terms: Annotated[Path, typer.Option(help="The terms as TOML (docs/federation.md).", exists=True, dir_okay=False)],
    to: Annotated[str, typer.Option(help="The other party: a peer's hub id or a partner id.")],
    json_output: JsonFlag = False,
) -> None:
    """Sign terms and send them to the other party for countersignature."""
    with user_errors(), AdminClient(data_dir) as client:
        to = _party_id(client, to)
        view = client.call("ProposeAgreement", admin_pb2.ProposeAgreementRequest(terms_toml=terms.read_text(encoding="utf-8"), to=to))
    if not json_output:
        console.print(f"Proposed agreement {view.terms.agreement_id}; it becomes active when {view.counterparty_name or to} countersigns.")
    _show(view, json_output)


@app.command("list")
def list_agreements(
    data_dir: DataDir,
    json_output: JsonFlag = False,
    wide: Annotated[bool, typer.Option("--wide", help="Show counterparty ids whole.")] = False,
) -> None:
    """All agreements this hub is party to, with their state."""
    with user_errors(), AdminClient(data_dir) as client:
        response = client.call("ListAgreements", admin_pb2.ListAgreementsRequest())
    if json_output:
        print_json([as_dict(v) for v in response.agreements])
    else:
        console.print(agreements_table(list(response.agreements), wide=wide))


@app.command("show")
def show(data_dir: DataDir, agreement_id: AgreementId, json_output: JsonFlag = False) -> None:
    """Terms, verified signatures, state and history of one agreement."""
    with user_errors(), AdminClient(data_dir) as client:
        _show(client.call("GetAgreement", admin_pb2.AgreementRef(agreement_id=_agreement_id(client, agreement_id))), json_output)


@app.command("accept")
def accept(data_dir: DataDir, agreement_id: AgreementId, json_output: JsonFlag = False) -> None:
    """Countersign a proposal addressed to this hub."""
    with user_errors(), AdminClient(data_dir) as client:
        view = client.call("AcceptAgreement", admin_pb2.AgreementRef(agreement_id=_agreement_id(client, agreement_id)))
    if not json_output:
        console.print(f"Countersigned {view.terms.agreement_id}: now {state_name(view.state)}")
    _show(view, json_output)


@app.command("revoke")
def revoke(
    data_dir: DataDir,
    agreement_id: AgreementId,
    reason: Annotated[str, typer.Option(help="Why; recorded in the signed revocation.")],
    json_output: JsonFlag = False,
) -> None:
    """Revoke an agreement, effective immediately on this hub; the other party is told."""
    with user_errors(), AdminClient(data_dir) as client:
        request = admin_pb2.RevokeAgreementRequest(agreement_id=_agreement_id(client, agreement_id), reason=reason)
        view = client.call("RevokeAgreement", request)
    if not json_output:
        console.print(f"Revoked {view.terms.agreement_id}")
    _show(view, json_output)


@app.command("budget")
def budget(data_dir: DataDir, agreement_id: AgreementId, json_output: JsonFlag = False) -> None:
    """The agreement's lifetime differential-privacy budget: total, spent and remaining epsilon."""
    with user_errors(), AdminClient(data_dir) as client:
        b = client.call("GetAgreementBudget", admin_pb2.AgreementRef(agreement_id=agreement_id))
    figures = {"agreement_id": b.agreement_id, "role": b.role, "budget_epsilon": b.budget_micro / 1e6,
               "spent_epsilon": b.spent_micro / 1e6 if b.role == "provider" else None,
               "remaining_epsilon": b.remaining_micro / 1e6 if b.role == "provider" else None,
               "max_contributions": b.max_contributions}
    if json_output:
        print_json(figures)
        return
    if not b.budget_micro:
        console.print(f"agreement {b.agreement_id} has no differential-privacy budget")
        return
    console.print(f"agreement {b.agreement_id}: lifetime budget epsilon {b.budget_micro / 1e6:g}, "
                  f"at most {b.max_contributions} readings per data subject and cell")
    if b.role == "provider":
        console.print(f"spent {b.spent_micro / 1e6:g}, remaining {b.remaining_micro / 1e6:g} (this hub keeps the ledger)")
    else:
        console.print("this hub is the consumer: the provider keeps the ledger; each signed partial shows what is spent")


@app.command("export")
def export(
    data_dir: DataDir,
    agreement_id: AgreementId,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """The signed agreement document, verifiable offline with `smartregion agreement verify`."""
    with user_errors(), AdminClient(data_dir) as client:
        document = client.call("ExportAgreement", admin_pb2.AgreementRef(agreement_id=_agreement_id(client, agreement_id))).document_json
    emit(document, out)


@app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="An exported agreement.", exists=True, dir_okay=False)], json_output: JsonFlag = False,
) -> None:
    """Verify an exported agreement offline: signatures, parties, integrity of every byte."""
    try:
        verified = export_mod.verify(file.read_bytes(), SYSTEM_CLOCK.now_ms())
    except export_mod.ExportError as exc:
        raise fail(f"{file} does NOT verify: {exc}") from None
    e = verified.evidence
    if json_output:
        print_json({"valid": True, "agreement_id": e.agreement_id, "signed_by": sorted(e.signatures),
                    "revoked_by": sorted(e.revocations), "state_now": state_name(verified.state_now)})
        return
    console.print(terms_table(e.terms))
    for party_id in (e.terms.provider.id, e.terms.consumer.id):
        mark = "signature verified ✓" if party_id in e.signatures else "has not signed"
        console.print(f"{e.role_of(party_id)} {party_id}: {mark}")
    for revoker, r in sorted(e.revocations.items()):
        console.print(f"revoked by {revoker} at {when(r.revocation.revoked_at_ms)}: {r.revocation.reason} (signature verified ✓)")
    console.print(f"{file} verifies; state now: {state_name(verified.state_now)}")
