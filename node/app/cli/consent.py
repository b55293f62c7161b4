"""`smartregion consent ...`: data subjects' consent per purpose (personal datasets)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from node.api.v1 import admin_pb2
from node.app.cli.common import DataDir, JsonFlag, console, print_json, user_errors
from node.app.cli.views import as_dict, when
from node.client import AdminClient

app = typer.Typer(help="Consent of data subjects, per purpose.", no_args_is_help=True)
Subject = Annotated[str, typer.Option(help="The data subject's id (as given at sensor enrolment).")]
Purpose = Annotated[str, typer.Option(help="The purpose code (docs/federation.md).")]


def _change(method: str, data_dir, subject: str, purpose: str) -> None:
    with user_errors(), AdminClient(data_dir) as client:
        row = client.call(method, admin_pb2.ConsentRequest(subject_id=subject, purpose_code=purpose))
    verb = "withdrew" if row.withdrawn_at_ms else "granted"
    console.print(f"{row.subject_id} {verb} consent to {row.purpose_code} at {when(row.withdrawn_at_ms or row.granted_at_ms)}")


@app.command("grant")
def grant(data_dir: DataDir, subject: Subject, purpose: Purpose) -> None:
    """Record that a data subject consents to a purpose (counts from the next query)."""
    _change("GrantConsent", data_dir, subject, purpose)


@app.command("withdraw")
def withdraw(data_dir: DataDir, subject: Subject, purpose: Purpose) -> None:
    """Record a withdrawal (takes effect for the next query)."""
    _change("WithdrawConsent", data_dir, subject, purpose)


@app.command("list")
def list_consents(
    data_dir: DataDir, subject: Annotated[str, typer.Option(help="Only this subject.")] = "", json_output: JsonFlag = False,
) -> None:
    """Consents and withdrawals, oldest first."""
    with user_errors(), AdminClient(data_dir) as client:
        response = client.call("ListConsents", admin_pb2.ListConsentsRequest(subject_id=subject))
    if json_output:
        print_json([as_dict(c) for c in response.consents])
        return
    table = Table("subject", "purpose", "granted", "withdrawn")
    for c in response.consents:
        table.add_row(c.subject_id, c.purpose_code, when(c.granted_at_ms), when(c.withdrawn_at_ms))
    console.print(table)


@app.command("erase")
def erase(data_dir: DataDir, subject: Subject, json_output: JsonFlag = False) -> None:
    """Erase a data subject (GDPR art. 17): their readings and consent history are deleted and their
    sensors revoked; only the audit entry recording the erasure stays. Effective for the next query."""
    with user_errors(), AdminClient(data_dir) as client:
        report = client.call("EraseSubject", admin_pb2.EraseSubjectRequest(subject_id=subject))
    if json_output:
        print_json(as_dict(report))
        return
    console.print(f"Erased {report.subject_id}: {report.readings_deleted} readings and {report.consents_deleted} consent records deleted; "
                  f"sensors revoked: {', '.join(report.sensors_revoked) or 'none'}")
