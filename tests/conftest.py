"""Shared fixtures. Every test that asks for ``db`` runs twice: on SQLite and on PostgreSQL.

SQLite tests get a fresh copy of a migrated database file. PostgreSQL tests share one uniquely named
database per run (created here, dropped at the end) and every table is truncated after each test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from creditmeter.api.app import create_app
from creditmeter.config import Settings
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.kit.migrate import upgrade
from creditmeter.models import metadata
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Environment, Scope
from tests import pg

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    try:
        server = pg.server()
        admin = server.__enter__()
    except Exception as exc:
        reason = f"PostgreSQL unavailable and could not be started: {exc}"
        if IN_CI:
            pytest.fail(reason + " (CI=true requires the PostgreSQL tests to run)")
        pytest.skip(reason)  # PostgreSQL is unreachable and cannot be started here
    try:
        with pg.scratch_database(admin) as url:
            upgrade(url)
            yield url
    finally:
        server.__exit__(None, None, None)


def _truncate(database: Database) -> None:
    tables = ", ".join(t.name for t in metadata.sorted_tables)
    with database.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "creditmeter.db"
        shutil.copy(sqlite_template, path)
        database = Database(f"sqlite:///{path}")
        yield database
        database.dispose()
        return
    url = request.getfixturevalue("postgres_url")
    database = Database(url)
    try:
        yield database
    finally:
        _truncate(database)
        database.dispose()


@pytest.fixture
def now() -> datetime:
    return clock.now()


@pytest.fixture
def app(db: Database) -> Any:
    return create_app(Settings(database_url=db.url), db=db)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def operator_key(db: Database) -> str:
    with db.write() as session:
        _, secret = orgs.create_api_key(
            session, None, "test operator", [Scope.OPERATOR], Environment.LIVE, clock.now()
        )
    return secret


@pytest.fixture
def operator(operator_key: str) -> dict[str, str]:
    """Headers of an operator key."""
    return {"Authorization": f"Bearer {operator_key}"}


@pytest.fixture
def make_org(db: Database) -> Callable[..., str]:
    """Create an organization directly through the service; returns its id."""

    def _make(name: str = "Acme AI", external_id: str | None = None) -> str:
        with db.write() as session:
            return orgs.create_organization(session, name, external_id, clock.now()).id

    return _make


@pytest.fixture
def make_key(db: Database) -> Callable[..., dict[str, str]]:
    """Create an organization key; returns its Authorization headers."""

    def _make(org_id: str, *scopes: str, environment: str = "live") -> dict[str, str]:
        with db.write() as session:
            _, secret = orgs.create_api_key(
                session,
                org_id,
                "test key",
                [Scope(s) for s in scopes or ("org:admin",)],
                Environment(environment),
                clock.now(),
            )
        return {"Authorization": f"Bearer {secret}"}

    return _make


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc, arg-type]
