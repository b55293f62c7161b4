"""`smartregion partner ...`: for hub admins (add, list, remove) and for partners themselves
(keygen, agreements, accept, revoke) — a partner's private key never leaves its machine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from federation import agreements as ag
from federation import partners as partners_mod
from federation.known_hubs import KnownHubs, KnownHubsError, path_beside
from federation.partner_client import PartnerSession
from federation.peers import PeerError
from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, JsonFlag, console, fail, passphrase, print_json, user_errors
from node.app.cli.names import resolve_id
from node.app.cli.views import as_dict, state_name, terms_table, when
from node.client import AdminClient

app = typer.Typer(help="Partners (businesses, academia): keys, registration, agreements.", no_args_is_help=True)

KeyFile = Annotated[Path, typer.Option("--key", help="The partner's private key file (from `partner keygen`).", dir_okay=False)]
HubAddress = Annotated[str, typer.Option("--hub", help="HOST:PORT of the hub's gRPC server.")]
HubId = Annotated[str, typer.Option("--hub-id", help="The hub's id, obtained from its admin (the pin).")]


@app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option(help="Where to write the private key (encrypted, 0600); the public key goes to OUT.pub.json.")],
    name: Annotated[str, typer.Option(help="The partner's name, e.g. 'Universitetet i Stavanger'.")] = "",
) -> None:
    """Create a partner key pair. Send only OUT.pub.json to the hubs' admins."""
    with user_errors():
        try:
            partner = partners_mod.keygen(out, name, passphrase(confirm=True, prompt="Passphrase for the partner key"))
        except partners_mod.PartnerKeyError as exc:
            raise fail(str(exc)) from None
    console.print(f"Partner id {partner.partner_id}")
    console.print(f"Private key: {out} (encrypted with your passphrase; keep it)")
    console.print(f"Public key:  {partners_mod.public_file_path(out)} (give this to hub admins)")


@app.command("add")
def add(
    data_dir: DataDir,
    name: Annotated[str, typer.Option(help="The partner's name.")],
    org_number: Annotated[str, typer.Option(help="Norwegian organisation number (9 digits).")],
    public_key: Annotated[Path, typer.Option(help="The partner's public key file (*.pub.json).", exists=True, dir_okay=False)],
    json_output: JsonFlag = False,
) -> None:
    """Register a partner by its public key (hub admin)."""
    with user_errors(), AdminClient(data_dir) as client:
        request = admin_pb2.AddPartnerRequest(name=name, org_number=org_number, public_key_file=public_key.read_bytes())
        partner = client.call("AddPartner", request)
    if json_output:
        print_json(as_dict(partner))
    else:
        console.print(f"Registered partner {partner.partner_id} — {partner.name} ({partner.org_number})")


@app.command("list")
def list_partners(
    data_dir: DataDir,
    all_: Annotated[bool, typer.Option("--all", help="Include removed partners.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """The partners registered at this hub (hub admin)."""
    with user_errors(), AdminClient(data_dir) as client:
        response = client.call("ListPartners", admin_pb2.ListPartnersRequest(include_removed=all_))
    if json_output:
        print_json([as_dict(p) for p in response.partners])
        return
    table = Table("partner id", "name", "org number", "added", "last contact", "state")
    for p in response.partners:
        table.add_row(p.partner_id, p.name, p.org_number, when(p.added_at_ms), when(p.last_contact_ms),
                      f"removed {when(p.removed_at_ms)}" if p.removed_at_ms else "registered")
    console.print(table)


@app.command("remove")
def remove(
    data_dir: DataDir,
    partner_id: Annotated[str, typer.Argument(help="The partner's id, or a unique prefix.")],
    reason: Annotated[str, typer.Option(help="Why; recorded in each revocation and the audit log.")] = "",
    json_output: JsonFlag = False,
) -> None:
    """Remove a partner (hub admin): its agreements with this hub are revoked and its calls
    refused from now on."""
    with user_errors(), AdminClient(data_dir) as client:
        known = client.call("ListPartners", admin_pb2.ListPartnersRequest(include_removed=True)).partners
        partner_id = resolve_id("partner", partner_id, (p.partner_id for p in known))
        response = client.call("RemovePartner", admin_pb2.RemovePartnerRequest(partner_id=partner_id, reason=reason))
    if json_output:
        print_json(as_dict(response))
        return
    p = response.partner
    console.print(f"Removed partner {p.partner_id} — {p.name} ({p.org_number}) at {when(p.removed_at_ms)}; its calls are refused")
    if response.agreements_revoked:
        console.print(f"Revoked {len(response.agreements_revoked)} agreement(s): {', '.join(response.agreements_revoked)}")
    else:
        console.print("No agreement with it was in force.")


def _session(key: Path, hub: str, hub_id: str) -> PartnerSession:
    try:
        partner = partners_mod.load_private(key, passphrase(prompt="Passphrase for the partner key"))
        known = KnownHubs(path_beside(key))  # the key histories verified before: a replayed one is refused
    except (partners_mod.PartnerKeyError, KnownHubsError) as exc:
        raise fail(str(exc)) from None
    return PartnerSession(partner, hub, hub_id.strip(), known_hubs=known)


def _run(coroutine):
    try:
        return asyncio.run(coroutine)
    except (PeerError, LookupError, ValueError) as exc:
        raise fail(str(exc)) from None


@app.command("agreements")
def agreements(key: KeyFile, hub: HubAddress, hub_id: HubId, json_output: JsonFlag = False) -> None:
    """(Partner) The agreements a hub holds with you, signatures verified locally."""

    async def fetch():
        async with _session(key, hub, hub_id) as session:
            return await session.agreements()

    with user_errors():
        held = _run(fetch())
    if json_output:
        print_json([{"agreement_id": h.evidence.agreement_id, "state": state_name(h.state), "terms": as_dict(h.evidence.terms),
                     "signed_by": sorted(h.evidence.signatures)} for h in held])
        return
    if not held:
        console.print(f"Hub {hub_id} holds no agreement with you.")
    replaced_by = {h.evidence.terms.supersedes: h.evidence for h in held if h.evidence.terms.supersedes}
    for h in held:
        console.print(terms_table(h.evidence.terms))
        awaiting = "  — awaiting your signature: smartregion partner accept ID" if h.awaiting_partner else ""
        newer = replaced_by.get(h.evidence.agreement_id)
        if h.state == ag.State.AGREEMENT_STATE_SUPERSEDED and newer is not None:
            awaiting = f"  — replaced by version {newer.terms.version}, {newer.agreement_id}"
        console.print(f"version {h.evidence.terms.version}, state {state_name(h.state)}{awaiting}\n")


@app.command("accept")
def accept(agreement_id: Annotated[str, typer.Argument(help="The agreement id.")], key: KeyFile, hub: HubAddress, hub_id: HubId) -> None:
    """(Partner) Countersign an agreement a hub proposed to you."""

    async def run():
        async with _session(key, hub, hub_id) as session:
            return await session.accept(agreement_id)

    with user_errors():
        outcome = _run(run())
    console.print(f"Countersigned {outcome.agreement_id}: now {state_name(outcome.state)}")


@app.command("revoke")
def revoke(agreement_id: Annotated[str, typer.Argument(help="The agreement id.")], key: KeyFile, hub: HubAddress, hub_id: HubId,
           reason: Annotated[str, typer.Option(help="Why; recorded in the signed revocation.")]) -> None:
    """(Partner) Revoke an agreement with a hub."""

    async def run():
        async with _session(key, hub, hub_id) as session:
            return await session.revoke(agreement_id, reason)

    with user_errors():
        outcome = _run(run())
    console.print(f"Revoked {outcome.agreement_id}: now {state_name(outcome.state)}")


@app.command("datasets")
def datasets(key: KeyFile, hub: HubAddress, hub_id: HubId, json_output: JsonFlag = False) -> None:
    """(Partner) What the region around a hub offers: each hub's datasets, metrics, units and
    classifications, from descriptors signed by each hub itself (verified here)."""
    from federation import descriptors
    from node.api.v1 import federation_pb2, federation_pb2_grpc

    async def fetch() -> federation_pb2.RegionDescriptors:
        async with _session(key, hub, hub_id) as session:
            stub = federation_pb2_grpc.FederationStub(session.channel)
            return await stub.RegionCatalog(federation_pb2.GetDescriptorRequest(), timeout=30)

    with user_errors():
        response = _run(fetch())
    rows = []
    for signed in response.descriptors:
        try:
            d = descriptors.verify_signature(signed)
        except descriptors.DescriptorError as exc:
            console.print(f"skipped a descriptor: {exc}")
            continue
        for offer in d.datasets:
            rows.append({"hub_id": d.hub_id, "municipality": d.municipality_number, "municipality_name": d.municipality_name,
                         "dataset": offer.name, "classification": offer.classification, "fiware_type": offer.fiware_type,
                         "metrics": [{"name": m.name, "unit": m.unit} for m in offer.metrics]})
    if json_output:
        print_json(rows)
        return
    table = Table("municipality", "dataset", "type", "classification", "metrics (unit)")
    for r in rows:
        table.add_row(f"{r['municipality_name']} ({r['municipality']})", r["dataset"], r["fiware_type"], r["classification"],
                      ", ".join(f"{m['name']} ({m['unit']})" for m in r["metrics"]))
    console.print(table)
