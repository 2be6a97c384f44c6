"""Invoices and their collection publish their events once, in the transaction of the change, on
SQLite and PostgreSQL: ``invoice.issued`` by the cycle close (resumed after a crash and run again),
``invoice.paid`` by the close's charge, by a payment by hand and for an invoice with nothing to
pay, and the dunning story: ``payment.failed`` for every attempt with its number and the next
attempt's time, then ``invoice.past_due`` and ``organization.suspended``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from creditmeter.billing import cycle, dunning
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.cycle import Due
from creditmeter.billing.models import Invoice
from creditmeter.billing.payments import methods as payment_methods
from creditmeter.billing.payments.provider import AttachedMethod, ChargeResult, PaymentError
from creditmeter.billing.plans import load_catalog, parse_catalog
from creditmeter.billing.subscriptions import SubscriptionRequest
from creditmeter.kit.db import Database
from tests.conftest import utc
from tests.notify_billing.events import data, one, published

CATALOG = load_catalog()
MakeOrg = Callable[..., str]
FEB_1 = utc(2026, 2, 1)


class Processor:
    """Approves every charge, or declines every one."""

    name = "sandbox"

    def __init__(self, approve: bool = True) -> None:
        self.approve = approve

    def charge(self, amount_minor: int, currency: str, *_: Any) -> ChargeResult:
        if self.approve:
            return ChargeResult("succeeded", amount_minor, currency, "ch_test")
        return ChargeResult("failed", amount_minor, currency, None, "card_declined", "declined")


APPROVE: Any = Processor()
DECLINE: Any = Processor(approve=False)


def subscribe(db: Database, org: str, plan: str = "standard", catalog: Any = CATALOG) -> None:
    with db.write() as session:
        request = SubscriptionRequest(plan)
        subs.subscribe(session, catalog, org, "live", request, utc(2026, 1, 1))


def add_card(db: Database, org: str, at: datetime = utc(2026, 1, 1)) -> None:
    with db.write() as session:
        card = AttachedMethod(f"pm_{org[-6:]}", "visa", "4242", 12, 2030)
        payment_methods.record_method(session, org, "live", "sandbox", card, True, at)


def close(db: Database, at: datetime, org: str | None = None, **kw: Any) -> list[Any]:
    kw.setdefault("catalog", CATALOG)
    kw.setdefault("charge", dunning.charger(APPROVE))
    return cycle.run_due(db, at, org, **kw)


def invoice_of(db: Database, org: str) -> Invoice:
    with db.read() as session:
        return session.scalars(select(Invoice).where(Invoice.organization_id == org)).one()


def test_a_cycle_close_publishes_invoice_issued_once_even_resumed_and_run_again(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org("Standard Co")
    subscribe(db, org)

    def crash(item: Due, step: str) -> None:
        if step == "invoice":
            raise RuntimeError("power cut after the invoice step")

    [failed] = close(db, FEB_1, org, after_step=crash)
    assert failed.error == "RuntimeError: power cut after the invoice step"
    assert len(published(db, "invoice.issued", org)) == 1  # committed with the invoice
    [resumed] = close(db, utc(2026, 2, 1, 0, 5), org)
    assert resumed.steps_run == ["charge"]
    assert close(db, utc(2026, 2, 1, 0, 10), org) == []

    invoice = invoice_of(db, org)
    event = one(db, "invoice.issued", org)
    assert (event.environment, event.occurred_at) == ("live", FEB_1)
    assert event.source_key == f"invoice.issued:{invoice.id}"
    assert event.data == {
        "invoice_id": invoice.id,
        "number": "INV-2026-000001",
        "status": "open",
        "total": "49.00",
        "amount_due": "49.00",
        "currency": "USD",
        "period_start": "2026-01-01T00:00:00Z",
        "period_end": "2026-02-01T00:00:00Z",
        "due_at": "2026-02-15T00:00:00Z",
        "pdf_url": f"/v1/invoices/{invoice.id}/pdf",
    }


def test_invoice_paid_by_the_close_by_hand_and_with_nothing_to_pay(
    db: Database, make_org: MakeOrg
) -> None:
    carded, by_hand, free = make_org("Carded"), make_org("By Hand"), make_org("Free")
    for org in (carded, by_hand):
        subscribe(db, org)
    add_card(db, carded)
    free_plans = parse_catalog(
        """
[plans.free]
name = "Free"
monthly_fee = 0
currency = "USD"
allocation_credits = "100"
credit_price = "0.1"

[custom_packages]
min_credits = "10"
max_credits = "1000"
step_credits = "10"
""",
        "free.toml",
    )
    subscribe(db, free, "free", catalog=free_plans)

    # The close charges them in one chunk (the card is paid, By Hand has none to charge).
    results = close(db, FEB_1)
    assert len(results) == 3
    assert all(r.ok for r in results)
    assert close(db, FEB_1) == []  # again: nothing
    paid = one(db, "invoice.paid", carded)
    invoice = invoice_of(db, carded)
    assert paid.occurred_at == FEB_1
    assert paid.source_key == f"invoice.paid:{invoice.id}"
    assert (paid.data["status"], paid.data["total"], paid.data["amount_due"]) == (
        "paid",
        "49.00",
        "0.00",
    )
    assert data(db, "invoice.paid", by_hand) == []

    # Nothing to pay: issued paid, and both events say so.
    [issued] = data(db, "invoice.issued", free)
    zero = one(db, "invoice.paid", free)
    assert (issued["status"], issued["total"], issued["amount_due"]) == ("paid", "0.00", "0.00")
    assert (zero.data["status"], zero.occurred_at) == ("paid", FEB_1)

    # Paid by hand on February 3, after the close's failed attempt.
    add_card(db, by_hand, utc(2026, 2, 3))
    owed = invoice_of(db, by_hand)
    dunning.pay(db, APPROVE, owed.id, None, utc(2026, 2, 3, 12))
    with pytest.raises(dunning.InvoiceNotPayable):
        dunning.pay(db, APPROVE, owed.id, None, utc(2026, 2, 3, 13))
    by_hand_paid = one(db, "invoice.paid", by_hand)
    assert by_hand_paid.occurred_at == utc(2026, 2, 3, 12)
    assert by_hand_paid.data["invoice_id"] == owed.id
    assert by_hand_paid.data["status"] == "paid"


def test_dunning_publishes_each_failed_attempt_then_past_due_and_suspended_once(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org("Declined Co")
    subscribe(db, org)
    add_card(db, org)
    close(db, FEB_1, charge=dunning.charger(DECLINE))
    for day in (2, 3, 4, 6, 7, 8):  # the retries of 2, 4 and 6 February; then nothing is left
        dunning.run_due(db, DECLINE, utc(2026, 2, day, 0, 1))
        dunning.run_due(db, DECLINE, utc(2026, 2, day, 0, 2))  # a second worker tick
    invoice = invoice_of(db, org)
    assert invoice.status == "past_due"

    failures = published(db, "payment.failed", org)
    assert [(e.data["attempt"], e.data["next_attempt_at"]) for e in failures] == [
        (1, "2026-02-02T00:00:00Z"),
        (2, "2026-02-04T00:00:00Z"),
        (3, "2026-02-06T00:00:00Z"),
        (4, None),
    ]
    assert [e.occurred_at for e in failures] == [
        FEB_1,
        utc(2026, 2, 2, 0, 1),
        utc(2026, 2, 4, 0, 1),
        utc(2026, 2, 6, 0, 1),
    ]
    first = failures[0]
    assert first.source_key == f"payment.failed:{first.data['payment_id']}"
    assert first.data == {
        "payment_id": first.data["payment_id"],
        "invoice_id": invoice.id,
        "purchase_id": None,
        "amount": "49.00",
        "currency": "USD",
        "failure_code": "card_declined",
        "failure_message": "declined",
        "attempt": 1,
        "next_attempt_at": "2026-02-02T00:00:00Z",
    }

    past_due = one(db, "invoice.past_due", org)
    assert past_due.occurred_at == utc(2026, 2, 6, 0, 1)
    assert (past_due.data["status"], past_due.data["amount_due"]) == ("past_due", "49.00")
    suspended = one(db, "organization.suspended", org)
    assert (suspended.environment, suspended.occurred_at) == ("live", utc(2026, 2, 6, 0, 1))
    assert suspended.data["invoice_id"] == invoice.id
    assert "INV-2026-000001 is past due" in suspended.data["reason"]
    # In order: the last attempt failed, the invoice is past due, the organization suspended.
    order = [e.type for e in published(db, org=org)]
    last = order.index("invoice.past_due")
    assert order[last - 1 : last + 2] == [
        "payment.failed",
        "invoice.past_due",
        "organization.suspended",
    ]

    # A payment by hand that is declined is one more failed attempt, with no retry scheduled.
    with pytest.raises(PaymentError, match="declined"):
        dunning.pay(db, DECLINE, invoice.id, None, utc(2026, 2, 9))
    later = published(db, "payment.failed", org)[-1]
    assert (later.data["attempt"], later.data["next_attempt_at"]) == (5, None)
    assert len(published(db, "invoice.past_due", org)) == 1
    assert len(published(db, "organization.suspended", org)) == 1
