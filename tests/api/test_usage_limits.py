"""The limits that keep every stored amount an exact 64-bit integer, on SQLite and PostgreSQL alike, each
refusing only the event that would pass it (422, nothing written) while the others apply:

- a project's usage in a calendar month (UTC) is at most 9,000,000,000,000 credits
  (``usage_limit_exceeded``) — past ~9.22e12 PostgreSQL refused the total (``bigint out of range``,
  a 500 for every later event of the project that month) and SQLite stored an inexact float;
- an organization's arrears never pass the balance limit (``balance_limit_exceeded``), per event: a
  batch that would is no longer refused whole;
- one batch's usage of one organization may exceed that limit in total: it is posted as several
  journal transactions, so no posting overflows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.kit import clock
from creditmeter.kit.credits import MAX_BALANCE_MICROS
from creditmeter.kit.db import Database
from creditmeter.ledger.models import JournalTransaction, Posting
from creditmeter.metering.models import ProjectUsage, UsageEvent
from creditmeter.orgs import service as orgs
from tests.api.test_bad_input import everything
from tests.metering import T0, TOKENS, Headers, assert_clean, balance, grant, micros

#: One training event priced 960,000,000,001 credits (the most one event may cost is 1e12).
BIG = {"gpu_seconds": "600000000000000", "accelerator": "h100"}
BIG_CREDITS = "960000000001"
TRILLION = "1000000000000"  # the largest single grant


@pytest.fixture(autouse=True)
def _noon(db: Database) -> Iterator[None]:
    with clock.frozen_at(T0):
        yield
    assert_clean(db)


@pytest.fixture
def rich(
    db: Database, client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> dict[str, str]:
    """An organization holding the most credits a balance may (9 grants of 1e12), with a project."""
    org = make_org("Big Spender", "big")
    with db.write() as s:
        project = orgs.create_project(s, org, "Research", clock.now()).id
    for _ in range(9):
        grant(client, operator, org, TRILLION)
    return {"org": org, "project": project}


def big(org: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "organization": org,
        "operation": "training",
        "quantities": BIG,
        **extra,
    }


def batch(client: TestClient, operator: Headers, events: list[dict[str, Any]]) -> list[Any]:
    response = client.post("/v1/usage/batch", json={"events": events}, headers=operator)
    assert response.status_code == 200, response.text
    results: list[Any] = response.json()["results"]
    return results


def project_month(db: Database, project: str) -> int:
    with db.read() as s:
        value = s.scalar(
            select(ProjectUsage.credits_micros).where(ProjectUsage.project_id == project)
        )
    return int(value or 0)


def test_a_project_month_stops_at_the_limit_event_by_event_and_never_500s(
    db: Database, client: TestClient, operator: Headers, rich: dict[str, str]
) -> None:
    org = rich["org"]
    events = [big(org, f"p{i}", project="Research") for i in range(12)]
    results = batch(client, operator, events)
    statuses = [r["status"] for r in results]
    assert statuses == ["applied"] * 9 + ["rejected"] * 3  # 9 x 9.6e11 fit, a 10th would not
    assert {r["error"]["code"] for r in results[9:]} == {"usage_limit_exceeded"}
    assert results[9]["error"]["status"] == 422
    assert project_month(db, rich["project"]) == 9 * micros(BIG_CREDITS)
    assert project_month(db, rich["project"]) <= MAX_BALANCE_MICROS

    # Later events of the project that month: each a 422 that changes nothing, not a 500.
    before = everything(db)
    for body in (big(org, "single", project="Research"),):
        response = client.post("/v1/usage", json=body, headers=operator)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "usage_limit_exceeded"
    assert everything(db) == before
    # ... while the rest of the organization, and the project's earlier month, still record usage.
    assert (
        client.post("/v1/usage", json=big(org, "no-project"), headers=operator).status_code == 201
    )
    last_month = big(org, "february", project="Research", occurred_at="2026-02-27T12:00:00Z")
    response = client.post("/v1/usage", json=last_month, headers=operator)
    assert response.status_code == 201, response.text


def test_a_small_event_still_fits_under_the_limit_after_a_big_one_is_refused(
    db: Database, client: TestClient, operator: Headers, rich: dict[str, str]
) -> None:
    org = rich["org"]
    events = [big(org, f"p{i}", project="Research") for i in range(10)]
    small = {"id": "small", "organization": org, "operation": "inference", "quantities": TOKENS}
    results = batch(client, operator, [*events, {**small, "project": "Research"}])
    assert [r["status"] for r in results] == ["applied"] * 9 + ["rejected", "applied"]
    assert project_month(db, rich["project"]) == 9 * micros(BIG_CREDITS) + micros("0.005")


def test_arrears_past_the_balance_limit_refuse_only_the_events_that_pass_it(
    db: Database, client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    """No credits: every event goes to arrears; the 10th would pass 9e12. Before, the whole batch was
    refused (422) and, through coalesced single events, so were other clients' events."""
    org = make_org("Overdrawn")
    results = batch(client, operator, [big(org, f"a{i}") for i in range(12)])
    assert [r["status"] for r in results] == ["applied"] * 9 + ["rejected"] * 3
    assert {r["error"]["code"] for r in results[9:]} == {"balance_limit_exceeded"}
    assert micros(balance(client, operator, org)["arrears"]) == 9 * micros(BIG_CREDITS)
    before = everything(db)
    response = client.post("/v1/usage", json=big(org, "more"), headers=operator)
    assert response.status_code == 422
    assert response.json()["code"] == "balance_limit_exceeded"
    assert everything(db) == before


def test_one_batch_using_more_than_the_balance_limit_is_posted_in_parts_without_overflow(
    db: Database, client: TestClient, operator: Headers, rich: dict[str, str]
) -> None:
    """9e12 credits of lots then 9e12 of arrears in one batch: 1.7e19 micro-credits of consumption
    would not fit one posting (a 500 before: bigint out of range / an overflow on SQLite)."""
    org = rich["org"]
    results = batch(client, operator, [big(org, f"b{i}") for i in range(20)])
    applied = [r for r in results if r["status"] == "applied"]
    assert len(applied) == 18  # 9 paid from lots (and part of the 10th), then arrears up to 9e12
    assert {r["error"]["code"] for r in results[18:]} == {"balance_limit_exceeded"}
    with db.read() as s:
        transactions = s.scalars(
            select(JournalTransaction.id).where(JournalTransaction.kind == "usage")
        ).all()
        amounts = s.scalars(select(Posting.amount_micros)).all()
        per_event = s.execute(select(UsageEvent.event_id, UsageEvent.transaction_id)).all()
    assert len(transactions) == 2
    assert max(abs(a) for a in amounts) <= MAX_BALANCE_MICROS
    assert {t for _, t in per_event} == set(transactions)
    summary = balance(client, operator, org)
    spent = 18 * micros(BIG_CREDITS)
    assert micros(summary["arrears"]) == spent - 9 * micros(TRILLION)
    assert summary["available"] == f"-{summary['arrears']}"


def test_a_hold_settled_past_the_limit_is_refused_and_stays_active(
    db: Database, client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Holder")
    grant(client, operator, org, "10")
    hold = client.post(
        "/v1/holds",
        json={"organization": org, "operation": "training", "credits": "1"},
        headers=operator,
    )
    assert hold.status_code == 201, hold.text
    batch(client, operator, [big(org, f"a{i}") for i in range(9)])  # arrears near the limit
    before = everything(db)
    response = client.post(
        f"/v1/holds/{hold.json()['id']}/settle",
        json={"id": "run", "quantities": BIG},
        headers=operator,
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "balance_limit_exceeded"
    assert everything(db) == before
    assert (
        client.get(f"/v1/holds/{hold.json()['id']}", headers=operator).json()["status"] == "active"
    )
