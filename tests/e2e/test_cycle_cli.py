"""``creditmeter cycle run`` and the worker's tick close the month as an operator expects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from creditmeter.billing import subscriptions as subs
from creditmeter.billing.models import CycleClose, Invoice
from creditmeter.billing.plans import load_catalog
from creditmeter.cli.main import app
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger.verify import verify
from creditmeter.worker.runner import tick
from tests.conftest import utc

CATALOG = load_catalog()


@pytest.fixture
def cli(db: Database) -> Callable[..., Any]:
    runner = CliRunner()
    env = {"CREDITMETER_DATABASE_URL": db.url, "COLUMNS": "220"}

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args), env=env)

    return run


def subscribe(db: Database, org: str, plan: str = "standard") -> None:
    with db.write() as session:
        subs.subscribe(
            session, CATALOG, org, "live", subs.SubscriptionRequest(plan), utc(2026, 1, 1)
        )


def count(db: Database, model: Any) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_cycle_run_closes_every_due_month_with_a_summary(
    cli: Callable[..., Any], db: Database, make_org: Callable[..., str]
) -> None:
    a, b = make_org("Acme"), make_org("Globex")
    subscribe(db, a)
    subscribe(db, b, "professional")
    with clock.frozen_at(utc(2026, 3, 1, 0, 5)):
        result = cli("cycle", "run", "--as-of", "2026-02-01T00:00:00Z")
        assert result.exit_code == 0, result.output
        assert "2 closed, 0 failed" in result.output
        assert "INV-2026-000001" in result.output
        assert "INV-2026-000002" in result.output
        assert "USD 199.00" in result.output
        only_a = cli("cycle", "run", "--org", a)
        assert only_a.exit_code == 0, only_a.output
        assert "1 closed" in only_a.output
        assert b not in only_a.output
        rest = cli("cycle", "run")
        assert "1 closed" in rest.output
        again = cli("cycle", "run")
        assert again.exit_code == 0
        assert "nothing to close" in again.output
    assert count(db, Invoice) == 4
    with db.read() as session:
        assert verify(session) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--as-of", "yesterday"), "not an RFC 3339 timestamp"),
        (("--as-of", "2026-02-01T00:00:00"), "not an RFC 3339 timestamp"),
        (("--as-of", "2027-01-01T00:00:00Z"), "in the future"),
    ],
)
def test_bad_input_exits_2_and_closes_nothing(
    cli: Callable[..., Any],
    db: Database,
    make_org: Callable[..., str],
    args: tuple[str, ...],
    message: str,
) -> None:
    subscribe(db, make_org())
    with clock.frozen_at(utc(2026, 3, 1)):
        result = cli("cycle", "run", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert count(db, CycleClose) == 0


def test_an_unknown_organization_exits_3(
    cli: Callable[..., Any], db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org("Acme", "acme-ext")
    subscribe(db, org)
    with clock.frozen_at(utc(2026, 2, 1, 1)):
        missing = cli("cycle", "run", "--org", "org_nope")
        assert missing.exit_code == 3, missing.output
        assert "not found" in missing.output
        assert count(db, CycleClose) == 0
        by_external_id = cli("cycle", "run", "--org", "acme-ext")
    assert by_external_id.exit_code == 0, by_external_id.output
    assert count(db, Invoice) == 1


def test_the_help_explains_the_command(cli: Callable[..., Any]) -> None:
    result = cli("cycle", "run", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--as-of" in text
    assert "--org" in text
    assert "boundary by boundary" in text


def test_the_worker_tick_closes_the_month_on_time(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    subscribe(db, org)
    with clock.frozen_at(utc(2026, 1, 31, 23, 59)):
        tick(db)
    assert count(db, Invoice) == 0
    with clock.frozen_at(utc(2026, 2, 1, 0, 0, 30)):
        tick(db)
        tick(db)
    with db.read() as session:
        [invoice] = session.scalars(select(Invoice)).all()
        assert (invoice.number, invoice.total_minor) == ("INV-2026-000001", 4900)
        assert verify(session) == []


def test_a_bad_plans_file_does_not_stop_the_other_jobs_of_the_tick(
    db: Database, make_org: Callable[..., str], tmp_path: Any
) -> None:
    subscribe(db, make_org())
    bad = tmp_path / "plans.toml"
    bad.write_text("time_zone = 'Mars/Base'")
    with clock.frozen_at(utc(2026, 2, 1, 0, 1)):
        assert tick(db, str(bad)) == 1  # lot expiry still ran (the January lot is due)...
    assert count(db, Invoice) == 0  # ...the closes wait for a good file
