"""What the CLI's commands share: the database they use (``--database-url``, else
``CREDITMETER_DATABASE_URL``, else ``./var/creditmeter.db``), said on stderr, and opened once its
schema is current."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from creditmeter.config import Settings
from creditmeter.kit.db import Database
from creditmeter.kit.migrate import SchemaNotCurrent, require_current

#: The root ``--database-url`` option of this invocation (None: the environment decides).
_database_url: str | None = None


def out() -> Console:
    """A console on stdout, sized when it prints (``COLUMNS`` or the terminal): a console made once
    at import would keep the width of that moment for every later command."""
    return Console()


def err() -> Console:
    """A console on stderr, sized when it prints (see :func:`out`)."""
    return Console(stderr=True)


def use_database_url(url: str | None) -> None:
    """Called by the root command with ``--database-url`` (or None): every command of this
    invocation then uses it instead of ``CREDITMETER_DATABASE_URL``."""
    global _database_url  # noqa: PLW0603 - one invocation of the CLI per process
    _database_url = url or None


def cli_settings() -> Settings:
    """The settings from the environment, with the root ``--database-url`` applied."""
    settings = Settings.from_env()
    return replace(settings, database_url=_database_url) if _database_url else settings


def describe_database(url: str) -> str:
    """The database URL to show a person: the password masked, a relative SQLite path followed by
    the absolute file it names (it depends on the working directory)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "(an invalid database URL)"
    shown = parsed.render_as_string(hide_password=True)
    path = parsed.database
    if parsed.get_backend_name() == "sqlite" and path and path != ":memory:":
        resolved = Path(path).resolve()
        if str(resolved) != path:
            shown += f" ({resolved})"
    return shown


def say_database(url: str) -> None:
    """Tell, on stderr, which database this command uses (stdout stays the result alone)."""
    err().print(
        f"[dim]database: {escape(describe_database(url))}[/dim]", soft_wrap=True, highlight=False
    )


def open_database(settings: Settings | None = None) -> Database:
    """The configured database, said on stderr; exits 2 with what to do when its schema is missing
    or not the newest (a fresh checkout's ``./var/creditmeter.db`` before the first
    ``creditmeter serve`` or ``creditmeter db upgrade``)."""
    url = (settings or cli_settings()).database_url
    say_database(url)
    try:
        require_current(url)
    except ArgumentError as exc:
        err().print(
            f"[red]error[/red] (database_not_ready): {escape(str(exc))}; a database URL looks like "
            "sqlite:///var/creditmeter.db or postgresql+psycopg://user:password@host/db",
            soft_wrap=True,
        )
        raise typer.Exit(2) from exc
    except SchemaNotCurrent as exc:
        err().print(f"[red]error[/red] (database_not_ready): {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    return Database(url)


def amount_column(table: Table, header: str) -> None:
    """A column of credits or money: right-aligned and never wrapped nor cut. Rich narrows the
    wrappable columns (ids, names, dates, which fold) first, so amounts stay whole even in an
    80-column terminal."""
    table.add_column(header, justify="right", no_wrap=True, overflow="ignore")
