"""The CLI and the server on one database: `--database-url` (or `CREDITMETER_DATABASE_URL`) picks it,
every command says on stderr which one it used (password masked), and stdout stays the result alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from creditmeter.api.app import create_app
from creditmeter.cli.common import describe_database
from creditmeter.cli.main import app
from creditmeter.config import Settings
from creditmeter.kit.db import Database

KEY_RE = re.compile(r"^cm_live_[A-Za-z0-9_-]{40,}$")


def shown(url: str) -> str:
    return f"database: {describe_database(url)}"


def test_a_key_made_with_database_url_opens_the_server_on_that_database(
    db: Database, tmp_path: Path
) -> None:
    """The newcomer's story: the server runs on one database; the CLI, told the same URL, makes a
    key there (even when the environment names another database), and the server accepts it."""
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere' / 'creditmeter.db'}"
    result = CliRunner().invoke(
        app,
        ["--database-url", db.url, "api-key", "create", "--operator", "--name", "ops"],
        env={"CREDITMETER_DATABASE_URL": elsewhere, "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert KEY_RE.match(result.stdout.strip())  # stdout: the key alone, `$(…)` captures it
    assert shown(db.url) in result.stderr
    assert not (tmp_path / "elsewhere").exists()

    server = create_app(Settings(database_url=db.url), db=db)
    with TestClient(server) as client:
        headers = {"Authorization": f"Bearer {result.stdout.strip()}"}
        assert client.get("/v1/organizations", headers=headers).status_code == 200


def test_the_environment_variable_names_the_database_too_and_is_said(db: Database) -> None:
    result = CliRunner().invoke(
        app, ["org", "list"], env={"CREDITMETER_DATABASE_URL": db.url, "COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert shown(db.url) in result.stderr
    assert "database:" not in result.stdout


def test_the_database_said_hides_the_password() -> None:
    url = "postgresql+psycopg://app:s3cret-pw@127.0.0.1:1/creditmeter"
    result = CliRunner().invoke(app, ["--database-url", url, "verify"], env={"COLUMNS": "200"})
    assert result.exit_code == 2  # nothing listens on port 1: database_not_ready
    assert "database: postgresql+psycopg://app:***@127.0.0.1:1/creditmeter" in result.stderr
    assert "database_not_ready" in result.stderr
    assert "s3cret" not in result.output


def test_a_relative_sqlite_path_is_shown_with_the_file_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CREDITMETER_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["db", "upgrade"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    file = tmp_path / "var" / "creditmeter.db"
    assert f"database: sqlite:///var/creditmeter.db ({file})" in result.stderr
    assert file.exists()
    assert result.stdout.startswith("database is at revision")


def test_a_url_that_is_not_one_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["--database-url", "not a url", "verify"])
    assert result.exit_code == 2
    assert "database_not_ready" in result.stderr
    assert "postgresql+psycopg://" in result.stderr  # what a URL looks like
    assert "Traceback" not in result.output


def test_a_key_from_another_database_gets_a_401_that_says_why(db: Database, tmp_path: Path) -> None:
    """The newcomer's mistake: the CLI on the default SQLite file, the server on another database."""
    elsewhere = f"sqlite:///{tmp_path / 'var' / 'creditmeter.db'}"
    assert CliRunner().invoke(app, ["--database-url", elsewhere, "db", "upgrade"]).exit_code == 0
    made = CliRunner().invoke(
        app, ["--database-url", elsewhere, "api-key", "create", "--operator", "--name", "x"]
    )
    assert made.exit_code == 0, made.output
    assert shown(elsewhere) in made.stderr
    with TestClient(create_app(Settings(database_url=db.url), db=db)) as client:
        headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
        refused = client.get("/v1/organizations", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "invalid_api_key"
    assert "CREDITMETER_DATABASE_URL" in refused.json()["detail"]
