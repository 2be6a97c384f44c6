"""``creditmeter cycle run``: run the monthly cycle closes that are due, by hand."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from creditmeter.billing import cycle, domain
from creditmeter.billing.plans import PlansError, load_catalog
from creditmeter.cli.common import amount_column, cli_settings, err, open_database, out
from creditmeter.errors import CreditmeterError
from creditmeter.kit import clock
from creditmeter.kit.credits import format_credits
from creditmeter.orgs import service as orgs

cycle_app = typer.Typer(
    help="The monthly billing cycle: close each month for every subscribed organization.",
    no_args_is_help=True,
)


def _as_of(value: str | None) -> datetime:
    now = clock.now()
    if value is None:
        return now
    try:
        moment = clock.ensure_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r} is not an RFC 3339 timestamp with a time zone, e.g. 2026-02-01T00:00:00Z",
            param_hint="--as-of",
        ) from exc
    if moment > now:
        raise typer.BadParameter(
            f"{value} is in the future: a cycle closes only once its month has ended (use a "
            "test-environment organization to rehearse)",
            param_hint="--as-of",
        )
    return moment


@cycle_app.command("run")
def run(
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            metavar="TIMESTAMP",
            help="Close every month that ended by this RFC 3339 time (default: now). Not later "
            "than now.",
        ),
    ] = None,
    org: Annotated[
        str | None,
        typer.Option("--org", metavar="ID", help="Only this organization (its id or external id)."),
    ] = None,
) -> None:
    """Run every cycle close that is due, boundary by boundary, oldest first.

    For each subscribed organization and each month that has ended and is not closed yet: finalize
    the usage statement, expire the credits due, allocate the next month's plan credits, issue the
    invoice and hand it to payment. A close interrupted earlier resumes where it stopped; closed
    months are never closed twice. Exits 1 if any close failed (the others are still done)."""
    moment = _as_of(as_of)
    settings = cli_settings()
    try:
        catalog = load_catalog(settings.plans_path)
    except PlansError as exc:
        err().print(f"[red]error[/red] ({exc.code}): {exc.detail}")
        raise typer.Exit(2) from exc
    db = open_database(settings)
    with db.read() as session:
        org_id = None
        if org is not None:
            try:
                org_id = orgs.resolve_organization(session, org).id
            except CreditmeterError as exc:
                err().print(f"[red]error[/red] ({exc.code}): {exc.detail}")
                raise typer.Exit(3) from exc
        work = cycle.due(session, catalog, moment, org_id)
    if not work:
        out().print(f"nothing to close as of {moment:%Y-%m-%dT%H:%M:%SZ}")
        return
    with Progress(
        TextColumn("closing billing cycles"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err(),
        transient=True,
    ) as progress:
        task = progress.add_task("close", total=len(work))
        results = cycle.run(db, catalog, work, moment, on_result=lambda _: progress.advance(task))
    db.dispose()
    _summary(results)
    if any(not r.ok for r in results):
        raise typer.Exit(1)


def _summary(results: list[cycle.CloseResult]) -> None:
    failed = sum(not r.ok for r in results)
    table = Table(title=f"{len(results) - failed} closed, {failed} failed")
    table.add_column("period", no_wrap=True)
    table.add_column("organization", overflow="fold")
    for column in ("expired", "allocated"):
        amount_column(table, column)
    table.add_column("invoice", overflow="fold")
    amount_column(table, "total")
    table.add_column("result", overflow="fold")
    for r in results:
        org = r.due.organization_id + (" (test)" if r.due.environment == "test" else "")
        table.add_row(
            r.due.period.label,
            org,
            format_credits(r.expired_micros),
            format_credits(r.allocated_micros),
            r.invoice_number or "-",
            f"{r.currency} {domain.format_money(r.total_minor, r.currency)}" if r.currency else "-",
            "[green]ok[/green]" if r.ok else f"[red]{r.error}[/red]",
        )
    out().print(table)
