"""What the CLI's commands share: opening the configured database, once its schema is current."""

from __future__ import annotations

import typer
from rich.console import Console

from creditmeter.config import Settings
from creditmeter.kit.db import Database
from creditmeter.kit.migrate import SchemaNotCurrent, require_current


def open_database(settings: Settings | None = None) -> Database:
    """The database ``CREDITMETER_DATABASE_URL`` names; exits 2 with what to do when its schema is
    missing or not the newest (a fresh checkout's ``./var/creditmeter.db`` before the first
    ``creditmeter serve`` or ``creditmeter db upgrade``)."""
    url = (settings or Settings.from_env()).database_url
    try:
        require_current(url)
    except SchemaNotCurrent as exc:
        Console(stderr=True).print(f"[red]error[/red] (database_not_ready): {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    return Database(url)
