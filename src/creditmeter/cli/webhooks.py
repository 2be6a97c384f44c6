"""``creditmeter webhooks``: webhook endpoints, their delivery log, and replaying deliveries, in-process
against the database (no API key: whoever runs the CLI reaches the database).

Replays are new deliveries (kind ``redelivery``) of the same events, with the same ``webhook-id``;
the worker sends them at its next notification run."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from creditmeter.cli.common import err, open_database, out
from creditmeter.errors import CreditmeterError
from creditmeter.kit import clock
from creditmeter.notify import webhook_log, webhooks
from creditmeter.notify.webhooks import ANY_ORGANIZATION
from creditmeter.orgs import service as orgs

webhooks_app = typer.Typer(
    help="Webhook endpoints, their deliveries and replays.", no_args_is_help=True
)

EXIT_CODES = {422: 2, 400: 2, 404: 3, 409: 4, 401: 5, 403: 5}


class Environment(StrEnum):
    LIVE = "live"
    TEST = "test"


def _fail(exc: CreditmeterError) -> NoReturn:
    err().print(f"[red]error[/red] ({exc.code}): {escape(exc.detail)}", soft_wrap=True)
    raise typer.Exit(EXIT_CODES.get(exc.status_code, 1))


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return clock.ensure_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r} is not an RFC 3339 timestamp with a time zone, e.g. 2027-01-01T00:00:00Z",
            param_hint="--since",
        ) from exc


def _stamp(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


@webhooks_app.command("list")
def list_endpoints(
    org: Annotated[
        str | None, typer.Option("--org", help="Only this organization's (id or external id).")
    ] = None,
    environment: Annotated[Environment, typer.Option(help="The environment.")] = Environment.LIVE,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 200,
) -> None:
    """Webhook endpoints (operator-wide ones show `*` as their organization), oldest first."""
    db = open_database()
    try:
        with db.read() as session:
            owner: webhooks.Owner = ANY_ORGANIZATION
            if org is not None:
                owner = orgs.resolve_organization(session, org).id
            rows = webhooks.list_endpoints(
                session, environment=environment.value, owner=owner, limit=limit
            )
    except CreditmeterError as exc:
        _fail(exc)
    finally:
        db.dispose()
    if not rows:
        out().print("no webhook endpoints")
        return
    table = Table("id", "organization", "status", "url", "event types", "failing since")
    for e in rows:
        status = e.status if e.status == "enabled" else f"disabled: {e.disabled_reason}"
        types = ", ".join(e.event_types or []) or "all"
        table.add_row(e.id, e.organization_id or "*", status, e.url, types, _stamp(e.failing_since))
    out().print(table)


@webhooks_app.command("deliveries")
def deliveries(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint (we_…).")],
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
    status: Annotated[
        str | None, typer.Option(help="Only pending, succeeded, failed or cancelled ones.")
    ] = None,
) -> None:
    """An endpoint's recent deliveries, newest first, each with its attempts."""
    if status is not None and status not in {"pending", "succeeded", "failed", "cancelled"}:
        raise typer.BadParameter(
            "one of pending, succeeded, failed, cancelled", param_hint="--status"
        )
    db = open_database()
    try:
        with db.read() as session:
            endpoint = webhooks.get_endpoint(
                session, endpoint_id, environment=None, owner=ANY_ORGANIZATION
            )
            views = webhook_log.list_deliveries(session, endpoint.id, limit=limit, status=status)
    except CreditmeterError as exc:
        _fail(exc)
    finally:
        db.dispose()
    if not views:
        out().print(f"no deliveries to {endpoint_id}")
        return
    for view in views:  # a line per delivery, one more per attempt
        d = view.delivery
        upcoming = f", next attempt {_stamp(d.next_attempt_at)}" if d.next_attempt_at else ""
        typer.echo(
            f"{d.id} {view.event_type} {d.event_id} ({d.kind}): {d.status}, "
            f"{d.attempts} attempt(s){upcoming}"
        )
        for a in view.attempts:
            got = str(a.status_code) if a.status_code is not None else "no answer"
            typer.echo(
                f"  #{a.number} {_stamp(a.started_at)} {got} {a.latency_ms} ms"
                + (f" - {a.error}" if a.error else "")
            )


@webhooks_app.command("replay")
def replay(delivery_id: Annotated[str, typer.Argument(help="The delivery (wd_…).")]) -> None:
    """Deliver a delivery's event again (a new delivery, the same webhook-id). Prints its id."""
    db = open_database()
    try:
        with db.write() as session:
            original = webhook_log.get_delivery(session, delivery_id, None)
            endpoint = webhooks.get_endpoint(
                session,
                original.endpoint_id,
                environment=None,
                owner=ANY_ORGANIZATION,
                lock=True,
            )
            again = webhook_log.redeliver(session, endpoint, original, clock.now())
            new_id = again.id
    except CreditmeterError as exc:
        _fail(exc)
    finally:
        db.dispose()
    err().print(f"redelivery of {delivery_id} queued")
    typer.echo(new_id)


@webhooks_app.command("replay-failed")
def replay_failed(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint (we_…).")],
    since: Annotated[
        str | None,
        typer.Option(help="Only deliveries created at or after this time (RFC 3339)."),
    ] = None,
) -> None:
    """Deliver again every event whose delivery to the endpoint failed (once each; events already
    pending or delivered again are left alone). Prints the new deliveries' ids."""
    start = _when(since)
    db = open_database()
    try:
        with db.write() as session:
            endpoint = webhooks.get_endpoint(
                session, endpoint_id, environment=None, owner=ANY_ORGANIZATION, lock=True
            )
            queued = [
                d.id for d in webhook_log.replay_failed(session, endpoint, start, clock.now())
            ]
    except CreditmeterError as exc:
        _fail(exc)
    finally:
        db.dispose()
    err().print(f"{len(queued)} failed deliver{'y' if len(queued) == 1 else 'ies'} queued again")
    for delivery_id in queued:
        typer.echo(delivery_id)
