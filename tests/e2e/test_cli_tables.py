"""CLI tables in an 80-column terminal: ids, names and dates fold, amounts are never cut."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from creditmeter.billing import subscriptions as subs
from creditmeter.billing.plans import load_catalog
from creditmeter.cli.main import app
from creditmeter.kit import clock
from creditmeter.kit.credits import parse_credits
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from tests.conftest import utc

BIG = "123456789012.123456"


@pytest.fixture
def cli80(db: Database) -> Callable[..., Any]:
    runner = CliRunner()
    env = {"CREDITMETER_DATABASE_URL": db.url, "COLUMNS": "80"}

    def run(*args: str) -> Any:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, result.output
        assert all(len(line) <= 80 for line in result.stdout.splitlines()), result.stdout
        return result

    return run


def grant(db: Database, org: str, credits: str, source: LotSource = LotSource.PROMO) -> None:
    request = ledger.GrantRequest(
        parse_credits(credits), source, "for the table", utc(2026, 1, 1), utc(2031, 1, 1)
    )
    with db.write() as session:
        ledger.grant(session, org, "live", request, utc(2026, 1, 1))


def test_org_list_and_balance_show_big_amounts_whole_at_80_columns(
    cli80: Callable[..., Any], db: Database, make_org: Callable[..., str]
) -> None:
    rich = make_org("Acme AI, a company with a rather long display name", "acme-external-id-x")
    grant(db, rich, BIG)
    in_arrears = make_org("Globex Research and Development", "globex-external-id")
    with db.write() as session:  # used past zero: the arrears are as big, available below zero
        ledger.debit(session, in_arrears, "live", parse_credits(BIG), "inference", "x", clock.now())

    listed = cli80("org", "list").stdout
    assert listed.count(BIG) == 3  # available of one; available (negative) and arrears of the other
    assert "-" + BIG in listed
    assert "…" not in listed

    shown = cli80("balance", "acme-external-id-x").stdout
    assert f"available {BIG}" in shown
    lots = shown.split("lots, in the order they pay", 1)[1]
    assert BIG in lots
    assert "…" not in shown
    assert f"arrears {BIG}" in cli80("balance", "globex-external-id").stdout


def test_cycle_run_summary_shows_big_amounts_whole_at_80_columns(
    cli80: Callable[..., Any], db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org("Enterprise Customer With A Long Name")
    with db.write() as session:
        subs.subscribe(
            session,
            load_catalog(),
            org,
            "live",
            subs.SubscriptionRequest("enterprise", allocation_micros=parse_credits(BIG)),
            utc(2026, 1, 1),
        )
    with clock.frozen_at(utc(2026, 2, 1, 0, 5)):
        summary = cli80("cycle", "run").stdout
    assert summary.count(BIG) >= 1  # the allocation of February, whole
    assert "…" not in summary


def test_verify_shows_big_mismatched_amounts_whole_at_80_columns(
    cli80: Callable[..., Any], db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org("Acme AI", "acme")
    grant(db, org, BIG)
    with db.engine.begin() as conn:  # the stored remainder edited by hand: off by a lot
        if db.dialect == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("UPDATE lots SET remaining_micros = 1"))
    result = CliRunner().invoke(
        app, ["verify"], env={"CREDITMETER_DATABASE_URL": db.url, "COLUMNS": "80"}
    )
    assert result.exit_code == 1
    assert BIG in result.stdout  # what the journal says, on one line
    assert all(len(line) <= 80 for line in result.stdout.splitlines()), result.stdout
