"""Run the Alembic migrations shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import DBAPIError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default: the newest)."""
    command.upgrade(alembic_config(url), revision)


class SchemaNotCurrent(RuntimeError):
    """The database's schema is missing or older (or newer) than this code's migrations."""


def require_current(url: str) -> None:
    """Raise ``SchemaNotCurrent`` with what to do unless the database at ``url`` is at the newest
    revision (commands other than ``serve`` and ``db upgrade`` never change the schema)."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    parsed = make_url(url)
    where = parsed.render_as_string(hide_password=True)
    current = None
    if not (parsed.get_backend_name() == "sqlite" and _missing_file(parsed.database)):
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
        except DBAPIError as exc:
            raise SchemaNotCurrent(f"cannot open the database {where}: {exc.orig}") from exc
        finally:
            engine.dispose()
    if current == head:
        return
    if current is None:
        raise SchemaNotCurrent(
            f"the database {where} has no creditmeter schema yet: run `creditmeter db upgrade` "
            "(or `creditmeter serve`, which upgrades it), or point CREDITMETER_DATABASE_URL at "
            "your database"
        )
    raise SchemaNotCurrent(
        f"the database {where} is at schema revision {current}, this creditmeter needs {head}: "
        "run `creditmeter db upgrade`"
    )


def _missing_file(database: str | None) -> bool:
    """Whether a SQLite URL names a file that does not exist yet (``:memory:`` and empty exist)."""
    return bool(database) and database != ":memory:" and not Path(str(database)).exists()
