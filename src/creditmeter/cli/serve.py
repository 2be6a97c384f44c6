"""``creditmeter serve``, ``worker`` and ``db upgrade``: the commands that run the server or change the
schema, and the demo's banner."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from creditmeter.cli.common import cli_settings, err, open_database, out, say_database
from creditmeter.config import Settings
from creditmeter.kit.db import Database
from creditmeter.kit.migrate import upgrade

log = logging.getLogger("creditmeter.notify.email")


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    demo: Annotated[
        bool,
        typer.Option("--demo", help="Seed demo organizations and print keys to explore them with."),
    ] = False,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker",
            help="Do not run the background worker in this process (run `creditmeter worker`).",
        ),
    ] = False,
    migrate: Annotated[
        bool, typer.Option(help="Upgrade the database schema before serving.")
    ] = True,
    workers: Annotated[
        int, typer.Option(min=1, help="API worker processes (the background worker runs once).")
    ] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve the API (and the background worker) on HOST:PORT. Upgrades the database first."""
    import uvicorn

    from creditmeter.api.app import create_app
    from creditmeter.worker.runner import Worker

    settings = cli_settings()
    # API worker processes read their settings from the environment: give them this database.
    os.environ["CREDITMETER_DATABASE_URL"] = settings.database_url
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    say_database(settings.database_url)
    say_email(settings)
    if migrate:
        upgrade(settings.database_url)
    db = Database(settings.database_url)
    if demo:
        _print_demo(db, host, port)
    worker = (
        None if no_worker else Worker(db, settings.worker_interval_seconds, settings.plans_path)
    )
    if worker:
        worker.start()
    try:
        if workers > 1:
            uvicorn.run(
                "creditmeter.api.app:create_app",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level="info",
                access_log=access_log,
            )
        else:
            uvicorn.run(
                create_app(settings, db=db),
                host=host,
                port=port,
                log_level="info",
                access_log=access_log,
            )
    finally:
        if worker:
            worker.stop()


def say_email(settings: Settings) -> None:
    """Say on stderr (and in the log) where e-mail goes; without an SMTP server, that messages are
    kept (``held``) and where to read them."""
    if settings.smtp_host is None:
        message = (
            "e-mail: no SMTP server configured (CREDITMETER_SMTP_HOST); messages are kept in the "
            "outbox: GET /v1/organizations/{id}/emails"
        )
    else:
        message = (
            f"e-mail: SMTP {settings.smtp_host}:{settings.smtp_port} ({settings.smtp_tls}), "
            f"from {settings.email_from}"
        )
    err().print(message, style="dim", soft_wrap=True, highlight=False, markup=False)
    log.info("%s", message)


def _print_demo(db: Database, host: str, port: int) -> None:
    from creditmeter.demo import banner, seed
    from creditmeter.kit import clock
    from creditmeter.pricing.ratecard import load_rate_card

    settings = cli_settings()
    err().print("seeding the demo organizations…", style="dim")
    keys = seed(db, clock.now(), load_rate_card(settings.rate_card_path), settings.plans_path)
    err().print(
        banner(keys, f"http://{host}:{port}"), soft_wrap=True, highlight=False, markup=False
    )


def worker(
    once: Annotated[bool, typer.Option("--once", help="Run every due job once and exit.")] = False,
) -> None:
    """Run the background worker (cycle closes, lot expiry, hold timeouts) in the foreground."""
    from creditmeter.worker.runner import Worker, tick

    settings = cli_settings()
    db = open_database(settings)  # before logging is set up: the schema check has nothing to say
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    say_email(settings)
    if once:
        n = tick(db, settings.plans_path)
        out().print(f"expired credits of {n} organization balance(s)")
        return
    w = Worker(db, settings.worker_interval_seconds, settings.plans_path)
    w.run()


def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply the database migrations (SQLite or PostgreSQL)."""
    from sqlalchemy import text

    url = cli_settings().database_url
    say_database(url)
    upgrade(url, revision)
    db = Database(url)
    with db.read() as session:
        current = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    db.dispose()
    out().print(f"database is at revision {current}")
