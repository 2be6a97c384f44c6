"""The ``creditmeter`` command line. Commands call the services in-process against the database named by
``CREDITMETER_DATABASE_URL`` (default: the embedded SQLite file ``./var/creditmeter.db``).

Exit codes: 0 success; 1 failure (e.g. ``verify`` found mismatches); 2 invalid input; 3 not found;
4 conflict; 5 forbidden or unauthorized.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, NoReturn

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from creditmeter import __version__
from creditmeter.cli.common import (
    amount_column,
    cli_settings,
    err,
    open_database,
    out,
    use_database_url,
)
from creditmeter.cli.cycle import cycle_app
from creditmeter.cli.jobs import jobs_app
from creditmeter.cli.serve import db_upgrade, serve, worker
from creditmeter.cli.webhooks import webhooks_app
from creditmeter.config import Settings
from creditmeter.errors import CreditmeterError
from creditmeter.kit import clock
from creditmeter.kit.credits import CreditsFormatError, format_credits, parse_credits
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.verify import verify as verify_ledger
from creditmeter.metering.verify import CHECKS as METERING_CHECKS
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Environment, Scope

app = typer.Typer(
    help="creditmeter: a credits engine for AI platforms. Exact double-entry credit ledger, "
    "organizations, API keys and the v1 API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
org_app = typer.Typer(help="Organizations (tenants).", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(org_app, name="org")
app.add_typer(key_app, name="api-key")
app.add_typer(cycle_app, name="cycle")
app.add_typer(jobs_app, name="jobs")
app.add_typer(webhooks_app, name="webhooks")
app.command()(serve)
app.command()(worker)
db_app.command("upgrade")(db_upgrade)


class OrgScope(StrEnum):
    """The scopes an organization key may have (operator keys are made with --operator)."""

    ORG_ADMIN = "org:admin"
    ORG_INGEST = "org:ingest"
    ORG_READ = "org:read"


EXIT_CODES = {422: 2, 400: 2, 404: 3, 409: 4, 401: 5, 403: 5}


def _fail(exc: CreditmeterError) -> NoReturn:
    err().print(f"[red]error[/red] ({exc.code}): {exc.detail}")
    raise typer.Exit(EXIT_CODES.get(exc.status_code, 1))


def _settings() -> Settings:
    return cli_settings()


def _database() -> Database:
    return open_database(_settings())


def _credits(value: str, what: str = "credits") -> int:
    try:
        micros = parse_credits(value)
    except CreditsFormatError as exc:
        raise typer.BadParameter(str(exc), param_hint=what) from exc
    return micros


def _when(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return clock.ensure_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r} is not an RFC 3339 timestamp with a time zone, e.g. 2027-01-01T00:00:00Z",
            param_hint=what,
        ) from exc


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="CREDITMETER_DATABASE_URL",
            show_envvar=True,
            metavar="URL",
            help="The database every command uses, e.g. postgresql+psycopg://user:pw@host/db "
            "(default: sqlite:///var/creditmeter.db, under the working directory). Give the "
            "server and the CLI the same one. Each command says on stderr which database it used.",
        ),
    ] = None,
) -> None:
    if version:
        out().print(f"creditmeter {__version__}")
        raise typer.Exit()
    use_database_url(database_url)


@app.command()
def verify() -> None:
    """Prove every balance from the journal; exit 0 when clean, 1 with a report otherwise.

    Recomputes every balance and lot remainder from the journal and checks that every journal
    transaction sums to zero and touches one organization."""
    db = _database()
    with (
        db.read() as session,
        Progress(
            TextColumn("verifying organizations"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err(),
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("verify", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        mismatches = verify_ledger(session, report, extra_checks=METERING_CHECKS)
    if not mismatches:
        out().print(
            "[green]ledger verified[/green]: every transaction sums to zero, touches one "
            "organization, and every balance equals its journal."
        )
        return
    table = Table(title=f"{len(mismatches)} mismatch(es) found")
    for column in ("check", "organization", "subject"):
        table.add_column(column, overflow="fold")
    for column in ("journal says", "stored"):  # amounts, whole in any terminal (ids fold instead)
        table.add_column(column, no_wrap=True, overflow="ignore")
    for m in mismatches:
        table.add_row(m.check, m.organization_id, m.subject, m.expected, m.actual)
    out().print(table)
    raise typer.Exit(1)


@org_app.command("create")
def org_create(
    name: Annotated[str, typer.Argument(help="Display name.")],
    external_id: Annotated[str | None, typer.Option(help="Your own unique id for it.")] = None,
) -> None:
    """Create an organization and print its id."""
    db = _database()
    try:
        with db.write() as session:
            org = orgs.create_organization(session, name, external_id, clock.now())
    except CreditmeterError as exc:
        _fail(exc)
    out().print(org.id)


@org_app.command("list")
def org_list(
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
) -> None:
    """List organizations with their live balance."""
    db = _database()
    now = clock.now()
    table = Table()
    for column in ("id", "name", "external id", "status"):
        table.add_column(column, overflow="fold")
    for column in ("available", "arrears"):
        amount_column(table, column)
    with db.read() as session:
        rows, _ = orgs.list_organizations(session, None, limit)
        for org in rows:
            b = ledger.get_balance(session, org.id, "live", now)
            table.add_row(
                org.id,
                org.name,
                org.external_id or "",
                org.status,
                format_credits(b.available_micros),
                format_credits(b.arrears_micros),
            )
    out().print(table)


@app.command()
def grant(
    organization: Annotated[str, typer.Argument(help="Organization id or external id.")],
    credits: Annotated[str, typer.Argument(help='Credits as a decimal, e.g. "1000" or "12.5".')],
    reason: Annotated[str, typer.Option(help="Why (kept in the journal).")],
    source: Annotated[
        LotSource, typer.Option(help="Where the credits come from.")
    ] = LotSource.ADJUSTMENT,
    expires_at: Annotated[str | None, typer.Option(help="RFC 3339; default never.")] = None,
    effective_at: Annotated[str | None, typer.Option(help="RFC 3339; default now.")] = None,
    priority: Annotated[int, typer.Option(help="Lower pays first.")] = 100,
    cost_basis: Annotated[str, typer.Option(help="Money paid per credit.")] = "0",
    environment: Annotated[Environment, typer.Option(help="live or test.")] = Environment.LIVE,
) -> None:
    """Grant credits to an organization as a new lot (arrears are paid first)."""
    db = _database()
    now = clock.now()
    request = ledger.GrantRequest(
        amount_micros=_credits(credits),
        source=source,
        reason=reason,
        effective_at=_when(effective_at, "--effective-at") or now,
        expires_at=_when(expires_at, "--expires-at"),
        priority=priority,
        cost_basis_micros=_credits(cost_basis, "--cost-basis"),
        currency=_settings().currency,
    )
    try:
        with db.write() as session:
            org = orgs.resolve_organization(session, organization)
            lot_id = ledger.grant(session, org.id, environment.value, request, now)
    except CreditmeterError as exc:
        _fail(exc)
    out().print(lot_id)


@app.command()
def balance(
    organization: Annotated[str, typer.Argument(help="Organization id or external id.")],
    environment: Annotated[Environment, typer.Option(help="live or test.")] = Environment.LIVE,
) -> None:
    """Show an organization's available credits, arrears, holds and lots in burn order."""
    db = _database()
    now = clock.now()
    try:
        with db.read() as session:
            org = orgs.resolve_organization(session, organization)
            view = ledger.get_balance(session, org.id, environment.value, now)
    except CreditmeterError as exc:
        _fail(exc)
    state = "[red]paused[/red]" if view.paused else "[green]active[/green]"
    out().print(f"{org.name} ({org.id}) {environment.value}: {state}")
    out().print(
        f"available {format_credits(view.available_micros)}   "
        f"arrears {format_credits(view.arrears_micros)}   "
        f"held {format_credits(view.held_micros)}"
    )
    table = Table(title="lots, in the order they pay")
    table.add_column("lot", overflow="fold")
    table.add_column("source", no_wrap=True)
    amount_column(table, "remaining")
    table.add_column("priority", no_wrap=True)
    for column in ("effective", "expires"):  # "YYYY-MM-DD HH:MM" wraps at the space if need be
        table.add_column(column, overflow="fold")
    for lot in view.lots:
        table.add_row(
            lot.id,
            lot.source,
            format_credits(lot.remaining_micros),
            str(lot.priority),
            f"{lot.effective_at:%Y-%m-%d %H:%M}",
            f"{lot.expires_at:%Y-%m-%d %H:%M}" if lot.expires_at else "never",
        )
    out().print(table)


@key_app.command("create")
def key_create(
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")],
    operator: Annotated[
        bool, typer.Option("--operator", help="An operator key (all organizations).")
    ] = False,
    org: Annotated[str | None, typer.Option(help="Organization id or external id.")] = None,
    scope: Annotated[
        list[OrgScope] | None,
        typer.Option(help="org:admin, org:ingest or org:read (repeatable; default org:admin)."),
    ] = None,
    environment: Annotated[Environment, typer.Option(help="live or test.")] = Environment.LIVE,
) -> None:
    """Create an API key and print only the secret on stdout (it is shown once, stored hashed)."""
    if operator == (org is not None):
        raise typer.BadParameter("give either --operator or --org ORG", param_hint="--operator")
    db = _database()
    try:
        with db.write() as session:
            org_id = orgs.resolve_organization(session, org).id if org else None
            scopes = (
                [Scope.OPERATOR]
                if operator
                else [Scope(s.value) for s in scope or [OrgScope.ORG_ADMIN]]
            )
            key, secret = orgs.create_api_key(
                session, org_id, name, scopes, environment, clock.now()
            )
    except CreditmeterError as exc:
        _fail(exc)
    err().print(
        f"[dim]created {key.id} ({', '.join(key.scopes)}); store the key now, it is not "
        f"shown again[/dim]"
    )
    print(secret)


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
) -> None:
    """Revoke an API key at once."""
    db = _database()
    from sqlalchemy import select

    from creditmeter.orgs.models import ApiKey

    try:
        with db.write() as session:
            owner = session.scalar(select(ApiKey.organization_id).where(ApiKey.id == key_id))
            key = orgs.revoke_api_key(session, owner, key_id, clock.now())
    except CreditmeterError as exc:
        _fail(exc)
    out().print(f"revoked {key.id}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
