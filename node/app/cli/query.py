"""`smartregion query`: ask the region, as a hub's admin or as a partner; verify answers offline."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from federation import answers, partners
from federation.peers import PeerError
from federation.query import asker
from node.api.v1 import query_pb2
from node.app.cli import names
from node.app.cli.common import console, err_console, fail, passphrase, user_errors
from node.client import AdminClient

app = typer.Typer(help="Federated aggregate queries.", no_args_is_help=True)


def _utc(ms: int) -> str:
    """A signed time as an ISO 8601 UTC instant (and the milliseconds it was signed as)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") + f" ({ms} ms)"


def _date_ms(text: str, option: str) -> int:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{option} must be a date like 2019-01-01, got {text!r}") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


RETRY_ATTEMPTS = 3


async def _run_as_partner(key_file: Path, hub: str, hub_id: str, spec: query_pb2.QuerySpec):
    from federation.known_hubs import KnownHubs, KnownHubsError, path_beside
    from federation.partner_client import PartnerSession

    try:
        key = partners.load_private(key_file, passphrase())
        known = KnownHubs(path_beside(key_file))  # the key histories verified before: a replayed one is refused
    except (partners.PartnerKeyError, KnownHubsError) as exc:
        raise fail(str(exc)) from None
    async with PartnerSession(key, hub, hub_id, known_hubs=known) as session:
        try:
            # The same signed bytes again while the entry hub cannot be reached: hubs that already
            # answered hand back their kept answer and charge nothing more (docs/querying.md 5).
            return await session.ask(spec, attempts=RETRY_ATTEMPTS)
        except asker.AnswerRefused as exc:
            raise fail(f"the answer does not verify, nothing of it is shown: {exc}") from None


def print_answer(answer) -> None:
    table = Table("group", "bucket", "value", "readings", "contributors")
    for r in answer.rows:
        value = "suppressed" if r.suppressed else f"{r.value:.3f}"
        counts = ("-", "-") if r.suppressed else (str(r.readings), str(r.contributors))
        table.add_row(r.group, r.bucket_label, value, *counts)
    console.print(table)
    checked = any(p.key_check for p in answer.provenance)  # only a partner's session fills it in
    sources = Table("hub", "municipality", "status", "agreement", "latency", "reason", *(["key"] if checked else []),
                    title="provenance")
    for p in answer.provenance:
        sources.add_row(p.hub_id[:12] + "…", p.municipality, p.status, p.agreement_id or "-", f"{p.latency_ms:.0f} ms", p.reason,
                        *([p.key_check or "-"] if checked else []))
    console.print(sources)
    for p in answer.provenance:
        signed = query_pb2.PartialResult.FromString(p.partial.partial) if p.partial.partial else None
        if signed is not None and signed.dp_budget_micro:
            left = (signed.dp_budget_micro - signed.dp_spent_micro) / 1e6
            console.print(f"hub {p.hub_id}: differential-privacy budget of agreement {p.agreement_id}: "
                          f"{signed.dp_spent_micro / 1e6:g} of {signed.dp_budget_micro / 1e6:g} spent, {left:g} left")
    if answer.partial:
        console.print(f"PARTIAL answer: no data from {', '.join(answer.missing_hubs)}")


def write_csv(answer) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    # Every row says whether the answer is partial (and which hubs are missing), so that a
    # spreadsheet or script reading only the CSV cannot mistake a partial answer for the region's.
    writer.writerow(["group", "bucket", "bucket_start_ms", "value", "readings", "contributors", "suppressed", "partial", "missing_hubs"])
    partial, missing = ("true" if answer.partial else "false"), " ".join(answer.missing_hubs)
    for r in answers.readable_rows(answer):
        writer.writerow([r["group"], r["bucket"], r["bucket_start_ms"], "" if r["value"] is None else r["value"],
                         r["readings"], r["contributors"], r["suppressed"], partial, missing])
    return out.getvalue()


@app.command("run")
def run(
    dataset: Annotated[str, typer.Option(help="Dataset, e.g. air_quality.")],
    metric: Annotated[str, typer.Option(help="Metric, e.g. pm25.")],
    aggregate: Annotated[str, typer.Option(help="count, sum, mean, min, max, stddev or quantile.")],
    start: Annotated[str, typer.Option("--from", help="First day of the window (UTC), e.g. 2019-01-01.")],
    end: Annotated[str, typer.Option("--to", help="Day after the window (UTC), e.g. 2020-01-01.")],
    purpose: Annotated[str, typer.Option(help="Purpose code; must match the agreements.")],
    bucket: Annotated[str, typer.Option(help="hour, day, week, month, year or window.")] = "window",
    group_by: Annotated[str, typer.Option(help="municipality or region.")] = "region",
    quantile: Annotated[float, typer.Option(help="For --aggregate quantile: in (0, 1).")] = 0.0,
    municipality: Annotated[list[str], typer.Option(help="Only these municipalities (repeatable).")] = [],  # noqa: B006 -- typer copies defaults
    hub: Annotated[list[str], typer.Option("--ask-hub", help="Only these hub ids (repeatable).")] = [],  # noqa: B006 -- typer copies defaults
    deadline_ms: Annotated[int, typer.Option(min=0, max=60000, help="Per-hub deadline in ms (0: 10 s).")] = 0,
    epsilon: Annotated[float, typer.Option(min=0.0, help="Privacy budget to spend under agreements with one (0: a tenth of it).")] = 0.0,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", "-d", help="Ask as this hub (its admin credential).")] = None,
    key: Annotated[Path | None, typer.Option(help="Ask as a partner with this private key file.")] = None,
    entry: Annotated[str | None, typer.Option("--hub", help="(Partner) HOST:PORT of the hub to ask.")] = None,
    entry_id: Annotated[str | None, typer.Option("--hub-id", help="(Partner) that hub's id (the pin).")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table, json or csv.")] = "table",
) -> None:
    """Ask every hub of the region (or some) for one aggregate; print the merged answer."""
    if output not in ("table", "json", "csv"):
        raise typer.BadParameter("--output is table, json or csv")
    municipality = [names.municipality(m).number for m in municipality]  # a name or a number; a misspelling gets a suggestion
    spec = query_pb2.QuerySpec(
        dataset=dataset, metric=metric, aggregate=aggregate, quantile=quantile, start_ms=_date_ms(start, "--from"),
        end_ms=_date_ms(end, "--to"), bucket=bucket, group_by=group_by, municipalities=municipality, hub_ids=hub,
        purpose_code=purpose, deadline_ms=deadline_ms, epsilon=epsilon,
    )
    if data_dir is not None and key is not None:
        raise fail("ask either as a hub (--data-dir) or as a partner (--key ...), not both", code=2)
    with user_errors():
        if data_dir is not None:
            with AdminClient(data_dir, timeout=(deadline_ms or 10_000) / 1000 + 5) as client:
                answer = client.call("RunQuery", spec)
        elif key is not None and entry and entry_id:
            try:
                answer = asyncio.run(_run_as_partner(key, entry, entry_id.strip(), spec))
            except PeerError as exc:
                raise fail(str(exc)) from None
        else:
            raise fail("ask as a hub (--data-dir DIR) or as a partner (--key FILE --hub HOST:PORT --hub-id ID)", code=2)
    if output == "json":
        sys.stdout.write(answers.to_json(answer).decode())
    elif output == "csv":
        sys.stdout.write(write_csv(answer))
    else:
        print_answer(answer)
    if answer.partial and output != "table":
        err_console.print(f"warning: partial answer, missing {', '.join(answer.missing_hubs)}")


@app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="An answer saved with `query run --output json`.", exists=True, dir_okay=False)],
) -> None:
    """Verify an answer offline and print what was signed: the query, each hub's status, the rows."""
    try:
        verified = answers.verify(file.read_bytes())
    except answers.AnswerError as exc:
        raise fail(f"{file} does NOT verify: {exc}") from None
    answer = verified.answer
    shown = answers.readable(answer)
    console.print(f"query signed by {shown['asked_by']} at {_utc(shown['asked_at_ms'])}:")
    for key, value in verified.query.items():
        if key != "answer_key":
            console.print(f"  {key}: {value}")
    console.print(f"statuses signed by entry hub {answer.answered_by} at {_utc(shown['answered_at_ms'])}:")
    for p, signed in zip(answer.provenance, shown["provenance"], strict=True):
        mark = (f"partial computed at {_utc(signed['computed_at_ms'])}, signature verified ✓"
                if p.hub_id in verified.verified_hubs else f"{p.status}: {p.reason}")
        console.print(f"  hub {p.hub_id} ({p.municipality}) {p.status} under {p.agreement_id or '-'}: {mark}")
    if answer.partial:
        console.print(f"  PARTIAL: no data from {', '.join(answer.missing_hubs)}")
    console.print(f"unsigned (measured by the entry hub): latency_ms {verified.unsigned['latency_ms']}")
    console.print(f"{file} verifies: {len(answer.rows)} rows follow from {len(verified.verified_hubs)} signed partial results")
