"""Test clocks (DESIGN.md §2, "Billing cycle"), on SQLite and PostgreSQL: a test organization on a
clock advanced across month boundaries is closed, invoiced and allocated exactly as real time
would have; the worker leaves it alone; only operator keys drive clocks; clocks never go back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.billing import cycle
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.models import CycleClose, Invoice, InvoiceLine, PlanAllocation
from creditmeter.billing.payments.models import Payment
from creditmeter.billing.plans import load_catalog
from creditmeter.billing.subscriptions import SubscriptionRequest
from creditmeter.kit.credits import MICROS_PER_CREDIT
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import Lot
from creditmeter.ledger.verify import verify
from creditmeter.worker import runner
from tests.conftest import utc

C = MICROS_PER_CREDIT
CATALOG = load_catalog()
Headers = dict[str, str]


def subscribe_test(db: Database, org: str, plan: str, at: datetime) -> None:
    with db.write() as session:
        subs.subscribe(session, CATALOG, org, "test", SubscriptionRequest(plan), at)


def spend(db: Database, org: str, credits: int, at: datetime) -> None:
    with db.write() as session:
        ledger.debit(session, org, "test", credits * C, "inference", "rehearsal", at)


def billing_of(db: Database, org: str) -> dict[str, Any]:
    """Lots, closes, allocations and invoices with lines of ``org``, without ids or numbers."""
    with db.read() as s:
        lots = s.execute(
            select(
                Lot.source,
                Lot.amount_micros,
                Lot.remaining_micros,
                Lot.effective_at,
                Lot.expires_at,
            )
            .where(Lot.organization_id == org)
            .order_by(Lot.effective_at, Lot.id)
        ).all()
        closes = s.execute(
            select(
                CycleClose.period_start,
                CycleClose.step,
                CycleClose.expired_micros,
                CycleClose.allocated_micros,
            )
            .where(CycleClose.organization_id == org)
            .order_by(CycleClose.period_start)
        ).all()
        allocations = s.execute(
            select(
                PlanAllocation.period_start,
                PlanAllocation.kind,
                PlanAllocation.credits_micros,
                PlanAllocation.fee_minor,
                PlanAllocation.expires_at,
            )
            .where(PlanAllocation.organization_id == org)
            .order_by(PlanAllocation.id)
        ).all()
        invoices = []
        for inv in s.scalars(
            select(Invoice).where(Invoice.organization_id == org).order_by(Invoice.period_start)
        ):
            lines = s.execute(
                select(InvoiceLine.kind, InvoiceLine.description, InvoiceLine.amount_minor)
                .where(InvoiceLine.invoice_id == inv.id)
                .order_by(InvoiceLine.position)
            ).all()
            invoices.append(
                (
                    inv.period_start,
                    inv.total_minor,
                    inv.status,
                    inv.issued_at,
                    inv.due_at,
                    [tuple(x) for x in lines],
                )
            )
    return {
        "lots": [tuple(r) for r in lots],
        "closes": [tuple(r) for r in closes],
        "allocations": [tuple(r) for r in allocations],
        "invoices": invoices,
    }


def add_card(
    client: TestClient, operator: Headers, org: str, number: str = "4242424242424242"
) -> dict[str, Any]:
    card = {"number": number, "exp_month": 12, "exp_year": 2031}
    added = client.post(
        f"/v1/organizations/{org}/payment-methods?environment=test",
        json={"card": card},
        headers=operator,
    )
    assert added.status_code == 201, added.text
    return dict(added.json())


def new_clock(client: TestClient, operator: Headers, at: str) -> str:
    response = client.post(
        "/v1/test-clocks", json={"frozen_time": at, "name": "Q1"}, headers=operator
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_clock_across_three_boundaries_bills_like_real_time(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    clocked = make_org("Rehearsal Co")
    subscribe_test(db, clocked, "professional", utc(2026, 1, 1))
    spend(db, clocked, 1200, utc(2026, 1, 10))
    add_card(client, operator, clocked)
    clock_id = new_clock(client, operator, "2026-01-01T00:00:00Z")
    attached = client.post(
        f"/v1/organizations/{clocked}/test-clock", json={"test_clock": clock_id}, headers=operator
    )
    assert attached.status_code == 200, attached.text
    assert attached.json() == {
        "organization_id": clocked,
        "test_clock": clock_id,
        "frozen_time": "2026-01-01T00:00:00Z",
    }
    # Real time has long passed April: the worker leaves the clocked organization alone.
    runner.tick(db)
    assert billing_of(db, clocked)["closes"] == []
    assert billing_of(db, clocked)["lots"][0][2] == 3800 * C

    response = client.post(
        f"/v1/test-clocks/{clock_id}/advance", json={"to": "2026-04-15T12:00:00Z"}, headers=operator
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["frozen_time"] == "2026-04-15T12:00:00Z"
    assert body["organizations"] == [clocked]
    assert body["boundaries"] == [
        "2026-02-01T00:00:00Z",
        "2026-03-01T00:00:00Z",
        "2026-04-01T00:00:00Z",
    ]
    assert [(c["period"], c["environment"], c["error"]) for c in body["closes"]] == [
        ("2026-01", "test", None),
        ("2026-02", "test", None),
        ("2026-03", "test", None),
    ]
    assert [c["invoice_number"] for c in body["closes"]] == [
        "INV-TEST-2026-000001",
        "INV-TEST-2026-000002",
        "INV-TEST-2026-000003",
    ]

    # The same story closed on time, in real time, boundary by boundary.
    real = make_org("Real Co")
    subscribe_test(db, real, "professional", utc(2026, 1, 1))
    spend(db, real, 1200, utc(2026, 1, 10))
    add_card(client, operator, real)
    for boundary in (utc(2026, 2, 1), utc(2026, 3, 1), utc(2026, 4, 1)):
        assert all(r.ok for r in cycle.run_due(db, boundary, real, catalog=CATALOG))
    with db.write() as session:
        ledger.expire_due(session, utc(2026, 4, 15, 12), real)
    on_clock, real_time = billing_of(db, clocked), billing_of(db, real)
    assert len(on_clock["invoices"]) == len(on_clock["closes"]) == 3
    assert len(on_clock["allocations"]) == 4  # the first subscription and three closes
    assert on_clock == real_time

    # The same advance again is nothing new.
    again = client.post(
        f"/v1/test-clocks/{clock_id}/advance", json={"to": "2026-04-15T12:00:00Z"}, headers=operator
    )
    assert (again.status_code, again.json()["closes"]) == (200, [])
    assert billing_of(db, clocked) == on_clock
    with db.read() as session:
        assert verify(session) == []


def test_a_clock_never_goes_back_and_only_operators_drive_it(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org("Rehearsal Co")
    clock_id = new_clock(client, operator, "2026-03-01T00:00:00Z")
    back = client.post(
        f"/v1/test-clocks/{clock_id}/advance", json={"to": "2026-02-01T00:00:00Z"}, headers=operator
    )
    assert back.status_code == 422
    assert back.json()["code"] == "clock_backwards"
    naive = client.post(
        f"/v1/test-clocks/{clock_id}/advance", json={"to": "2026-04-01T00:00:00"}, headers=operator
    )
    assert naive.status_code == 422
    assert (
        client.get(f"/v1/test-clocks/{clock_id}", headers=operator).json()["frozen_time"]
        == "2026-03-01T00:00:00Z"
    )
    missing = client.get("/v1/test-clocks/clock_nope", headers=operator)
    assert (missing.status_code, missing.json()["code"]) == (404, "test_clock_not_found")

    for scope in ("org:admin", "org:read", "org:ingest"):
        key = make_key(org, scope)
        calls = [
            client.post(
                "/v1/test-clocks", json={"frozen_time": "2026-01-01T00:00:00Z"}, headers=key
            ),
            client.get(f"/v1/test-clocks/{clock_id}", headers=key),
            client.post(
                f"/v1/test-clocks/{clock_id}/advance",
                json={"to": "2026-05-01T00:00:00Z"},
                headers=key,
            ),
            client.post(
                f"/v1/organizations/{org}/test-clock", json={"test_clock": clock_id}, headers=key
            ),
        ]
        assert [c.status_code for c in calls] == [403, 403, 403, 403], scope
    assert (
        client.get(f"/v1/test-clocks/{clock_id}", headers=operator).json()["frozen_time"]
        == "2026-03-01T00:00:00Z"
    )


def test_an_organization_with_a_live_subscription_cannot_be_attached(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Live Co")
    with db.write() as session:
        subs.subscribe(
            session, CATALOG, org, "live", SubscriptionRequest("standard"), utc(2026, 1, 1)
        )
    clock_id = new_clock(client, operator, "2026-01-01T00:00:00Z")
    response = client.post(
        f"/v1/organizations/{org}/test-clock", json={"test_clock": clock_id}, headers=operator
    )
    assert (response.status_code, response.json()["code"]) == (409, "live_subscription")
    assert client.get(f"/v1/test-clocks/{clock_id}", headers=operator).json()["organizations"] == []


def test_cycle_due_leaves_clocked_organizations_to_their_clock(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Rehearsal Co")
    subscribe_test(db, org, "standard", utc(2026, 1, 1))
    clock_id = new_clock(client, operator, "2026-01-01T00:00:00Z")
    client.post(
        f"/v1/organizations/{org}/test-clock", json={"test_clock": clock_id}, headers=operator
    )
    with db.read() as session:
        assert cycle.due(session, CATALOG, utc(2026, 3, 1)) == []
        assert cycle.due(session, CATALOG, utc(2026, 3, 1), org) == []
        assert len(cycle.due(session, CATALOG, utc(2026, 3, 1), org, include_clocked=True)) == 2


def test_one_advance_runs_every_dunning_retry_at_its_own_time(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Declined Rehearsal")
    subscribe_test(db, org, "standard", utc(2026, 1, 1))
    add_card(client, operator, org, "4000000000000002")
    clock_id = new_clock(client, operator, "2026-01-01T00:00:00Z")
    client.post(
        f"/v1/organizations/{org}/test-clock", json={"test_clock": clock_id}, headers=operator
    )

    # One jump over the boundary and the whole dunning schedule.
    response = client.post(
        f"/v1/test-clocks/{clock_id}/advance", json={"to": "2026-02-10T00:00:00Z"}, headers=operator
    )
    assert response.status_code == 200, response.text
    with db.read() as session:
        invoice = session.scalars(select(Invoice).where(Invoice.organization_id == org)).one()
        attempts = session.execute(
            select(Payment.created_at, Payment.status, Payment.failure_code)
            .where(Payment.reference_id == invoice.id)
            .order_by(Payment.created_at)
        ).all()
    assert invoice.status == "past_due"
    assert [tuple(a) for a in attempts] == [
        (utc(2026, 2, 1), "failed", "card_declined"),  # the close
        (utc(2026, 2, 2), "failed", "card_declined"),  # + 1 day
        (utc(2026, 2, 4), "failed", "card_declined"),  # + 3 days
        (utc(2026, 2, 6), "failed", "card_declined"),  # + 5 days: past due
    ]
    organization = client.get(f"/v1/organizations/{org}", headers=operator).json()
    assert organization["status"] == "suspended"

    # Real time's worker leaves the clocked organization's invoice alone.
    runner.tick(db)
    with db.read() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(Payment).where(Payment.reference_id == invoice.id)
            )
            == 4
        )

    good = add_card(client, operator, org)
    paid = client.post(
        f"/v1/invoices/{invoice.id}/pay", json={"payment_method": good["id"]}, headers=operator
    )
    assert (paid.status_code, paid.json()["status"]) == (200, "paid")
    assert client.get(f"/v1/organizations/{org}", headers=operator).json()["status"] == "active"
    with db.read() as session:
        assert verify(session) == []
