"""``creditmeter jobs``: what is in the outbox (``kit.outbox``), the dead jobs and their errors, and
retrying one by hand."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from creditmeter.cli.common import err, open_database, out
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database

jobs_app = typer.Typer(
    help="Background jobs (the outbox): counts, dead jobs, retrying one.", no_args_is_help=True
)


def _database() -> Database:
    return open_database()


@jobs_app.command("status")
def status() -> None:
    """Jobs by kind and state (pending, running, done, dead). Exits 1 when any job is dead."""
    db = _database()
    try:
        with db.read() as session:
            counts = outbox.counts(session)
    finally:
        db.dispose()
    table = Table("kind", *outbox.STATES)
    for kind in sorted({k for k, _ in counts}):
        table.add_row(kind, *[str(counts.get((kind, state), 0)) for state in outbox.STATES])
    out().print(table if counts else "no jobs")
    if any(state == outbox.DEAD for _, state in counts):
        raise typer.Exit(1)


@jobs_app.command("dead")
def dead(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 50,
) -> None:
    """The dead jobs (out of attempts), newest first, with their last error."""
    db = _database()
    try:
        with db.read() as session:
            rows = outbox.jobs_in(session, outbox.DEAD, limit)
    finally:
        db.dispose()
    if not rows:
        out().print("no dead jobs")
    for job in rows:  # one line each, the error in full on the next (errors are long)
        where = f" {job.organization_id} ({job.environment})" if job.organization_id else ""
        died = job.done_at.isoformat() if job.done_at else "?"
        typer.echo(f"job {job.id} {job.kind}{where}: {job.attempts} attempt(s), dead since {died}")
        typer.echo(f"  {job.last_error or ''}")


@jobs_app.command("retry")
def retry(job_id: Annotated[int, typer.Argument(help="The id of a dead job.")]) -> None:
    """Give a dead job a fresh set of attempts, due now (the next worker tick runs it)."""
    db = _database()
    try:
        with db.write() as session:
            retried = outbox.retry_dead(session, job_id, clock.now())
    finally:
        db.dispose()
    if not retried:
        err().print(
            f"job {job_id} is not dead (or a job with its key is pending and will do its work)"
        )
        raise typer.Exit(4)
    out().print(f"job {job_id} is pending again")
