"""The CLI as an operator uses it, against the same databases as the rest of the suite."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from creditmeter.cli.main import app
from creditmeter.kit.db import Database

KEY_RE = re.compile(r"^cm_(live|test)_[A-Za-z0-9_-]{40,}$")


@pytest.fixture
def cli(db: Database):
    runner = CliRunner()
    env = {"CREDITMETER_DATABASE_URL": db.url, "COLUMNS": "200"}

    def run(*args: str):
        return runner.invoke(app, list(args), env=env)

    return run


def test_bootstrap_key_prints_only_the_key_on_stdout(cli) -> None:
    result = cli("api-key", "create", "--operator", "--name", "bootstrap")
    assert result.exit_code == 0, result.output
    assert KEY_RE.match(result.stdout.strip())
    assert len(result.stdout.strip().splitlines()) == 1


def test_operator_story_from_the_command_line(cli) -> None:
    assert cli("db", "upgrade").exit_code == 0
    created = cli("org", "create", "Acme AI", "--external-id", "acme")
    assert created.exit_code == 0, created.output
    org_id = created.stdout.strip()
    assert org_id.startswith("org_")

    granted = cli("grant", "acme", "1000", "--source", "plan", "--reason", "January allocation")
    assert granted.exit_code == 0, granted.output
    assert granted.stdout.strip().startswith("lot_")
    promo = cli("grant", org_id, "12.5", "--source", "promo", "--reason", "welcome")
    assert promo.exit_code == 0, promo.output

    shown = cli("balance", "acme")
    assert shown.exit_code == 0
    assert "available 1012.5" in shown.stdout
    listed = cli("org", "list")
    assert "Acme AI" in listed.stdout
    assert "1012.5" in listed.stdout

    verified = cli("verify")
    assert verified.exit_code == 0, verified.output
    assert "ledger verified" in verified.stdout


def test_bad_input_has_clear_exit_codes(cli) -> None:
    cli("org", "create", "Acme AI", "--external-id", "acme")
    too_precise = cli("grant", "acme", "1.0000001", "--reason", "x")
    assert too_precise.exit_code == 2
    assert "6 decimal places" in too_precise.output
    missing = cli("grant", "nope", "10", "--reason", "x")
    assert missing.exit_code == 3
    assert "not found" in missing.output
    duplicate = cli("org", "create", "Other", "--external-id", "acme")
    assert duplicate.exit_code == 4
    both = cli("api-key", "create", "--name", "x")
    assert both.exit_code == 2


def test_org_scoped_key_and_revocation(cli) -> None:
    cli("org", "create", "Acme AI", "--external-id", "acme")
    made = cli("api-key", "create", "--org", "acme", "--name", "engine", "--scope", "org:ingest")
    assert made.exit_code == 0, made.output
    assert KEY_RE.match(made.stdout.strip())
    key_id = re.search(r"key_[0-9A-Z]+", made.stderr)
    assert key_id
    revoked = cli("api-key", "revoke", key_id.group(0))
    assert revoked.exit_code == 0
    assert cli("api-key", "revoke", "key_DOESNOTEXIST").exit_code == 3


def test_verify_reports_a_tampered_journal_and_exits_1(cli, db: Database) -> None:
    cli("org", "create", "Acme AI", "--external-id", "acme")
    cli("grant", "acme", "100", "--reason", "x")
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("UPDATE postings SET amount_micros = amount_micros + 1 WHERE id = 1"))
    result = cli("verify")
    assert result.exit_code == 1
    assert "zero-sum" in result.stdout
    assert "lot-remaining" in result.stdout


def test_commands_on_a_database_without_the_schema_say_what_to_do(tmp_path) -> None:
    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/var/creditmeter.db"
    env = {"CREDITMETER_DATABASE_URL": url, "COLUMNS": "200"}
    for args in (["verify"], ["org", "list"], ["cycle", "run"], ["jobs", "status"]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 2, (args, result.output)
        said = " ".join(result.output.split())
        assert "database_not_ready" in said
        assert "creditmeter db upgrade" in said
        assert "Traceback" not in result.output
    assert not (tmp_path / "var" / "creditmeter.db").exists()  # nothing created by looking

    assert runner.invoke(app, ["db", "upgrade"], env=env).exit_code == 0
    assert runner.invoke(app, ["verify"], env=env).exit_code == 0
