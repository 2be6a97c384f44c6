"""``creditmeter jobs``: an operator sees what the outbox holds, reads why a job died and retries it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from creditmeter.cli.main import app
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from tests.conftest import utc

NOW = utc(2026, 2, 3, 9)


@pytest.fixture
def cli(db: Database) -> Callable[..., Any]:
    runner = CliRunner()
    env = {"CREDITMETER_DATABASE_URL": db.url, "COLUMNS": "220"}

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args), env=env)

    return run


def test_a_dead_job_is_listed_with_its_error_and_can_be_retried(
    db: Database, cli: Callable[..., Any]
) -> None:
    assert cli("jobs", "status").stdout.strip() == "no jobs"
    with db.write() as s:
        outbox.enqueue(s, [outbox.NewJob("ping", NOW, max_attempts=1)], now=NOW)
        outbox.enqueue(s, [outbox.NewJob("ping", NOW, dedupe_key="other")], now=NOW)

    def broken(job: outbox.Claimed) -> None:
        if job.max_attempts == 1:
            raise RuntimeError("the webhook endpoint answered 500")

    with clock.frozen_at(NOW):
        outbox.run(db, {"ping": broken}, now=NOW)
    status = cli("jobs", "status")
    assert status.exit_code == 1  # a dead job is something to look at
    assert "ping" in status.stdout
    dead = cli("jobs", "dead")
    assert dead.exit_code == 0
    assert "the webhook endpoint answered 500" in dead.stdout
    with db.read() as s:
        [job] = outbox.jobs_in(s, outbox.DEAD)
    assert cli("jobs", "retry", str(job.id)).exit_code == 0
    assert cli("jobs", "retry", str(job.id)).exit_code == 4  # not dead any more
    assert cli("jobs", "status").exit_code == 0
