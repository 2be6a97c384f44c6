"""Operator refunds over HTTP with the sandbox processor, on SQLite and PostgreSQL: a purchase's
refund takes its credits back in proportion (refused when they were spent), an invoice payment's
refund leaves the invoice paid, every refund is a line of the billing history, a refusal by the
processor changes nothing else, a retry with the same key never refunds twice, and bad requests are
4xx changing nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.billing import cycle
from creditmeter.billing.models import Invoice
from creditmeter.billing.payments.models import Payment
from creditmeter.billing.payments.provider import ProviderUnavailable, RefundResult
from creditmeter.billing.payments.sandbox import SandboxProvider
from creditmeter.billing.payments.sandbox_models import SandboxRefund
from creditmeter.kit import clock
from creditmeter.kit.credits import MICROS_PER_CREDIT as C
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import JournalTransaction, Lot
from creditmeter.worker import runner
from tests.api.test_bad_input import assert_problem, everything
from tests.conftest import utc
from tests.metering import Headers, assert_clean

JAN_16 = utc(2026, 1, 16, 10, 15)
VISA = "4242424242424242"
DECLINED = "4000000000000002"
REFUND_FAILS = "4000000000005126"


@pytest.fixture(autouse=True)
def january() -> Iterator[None]:
    with clock.frozen_at(JAN_16):
        yield


def url(org: str, tail: str) -> str:
    return f"/v1/organizations/{org}/{tail}"


@pytest.fixture
def customer(
    client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> Callable[..., tuple[str, Headers]]:
    """An organization on the Standard plan (USD 0.06 a credit) with a card."""

    def _make(card: str = VISA) -> tuple[str, Headers]:
        org = make_org()
        admin = make_key(org, "org:admin")
        assert client.put(url(org, "subscription"), json={"plan": "standard"}, headers=admin)
        body = {"card": {"number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
        added = client.post(url(org, "payment-methods"), json=body, headers=admin)
        assert added.status_code == 201, added.text
        return org, admin

    return _make


def buy(client: TestClient, org: str, admin: Headers, key: str = "buy-1") -> dict[str, Any]:
    """The standard package: 1,000 credits for USD 60.00."""
    response = client.post(
        url(org, "purchases"),
        json={"package": "standard"},
        headers={**admin, "Idempotency-Key": key},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def refund(
    client: TestClient, headers: Headers, payment: str, key: str | None = "r-1", **body: Any
) -> Any:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return client.post(
        f"/v1/payments/{payment}/refunds",
        json={"reason": "customer asked", **body},
        headers={**headers, **extra},
    )


def available(client: TestClient, org: str, headers: Headers) -> str:
    return str(client.get(url(org, "balance"), headers=headers).json()["available"])


def history(client: TestClient, org: str, headers: Headers) -> list[dict[str, Any]]:
    return list(client.get(url(org, "payments"), headers=headers).json()["data"])


def lot_left(db: Database, lot_id: str) -> int:
    with db.read() as s:
        lot = s.get(Lot, lot_id)
        assert lot is not None
        return lot.remaining_micros


def sandbox_refunds(db: Database) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(SandboxRefund)) or 0)


def test_a_full_refund_of_a_purchase_takes_its_credits_back_and_is_in_the_history(
    client: TestClient, db: Database, operator: Headers, customer: Callable[..., Any]
) -> None:
    org, admin = customer()
    before = available(client, org, admin)
    bought = buy(client, org, admin)
    charge = bought["payment_id"]

    response = refund(client, operator, charge)

    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["status"], body["amount"], body["credits"], body["lot_id"]) == (
        "succeeded",
        {"amount_minor": 6000, "currency": "USD"},
        "1000",
        bought["lot_id"],
    )
    assert body["transaction_id"] is not None
    assert available(client, org, admin) == before
    assert lot_left(db, bought["lot_id"]) == 0
    rows = history(client, org, admin)
    assert [(p["kind"], p["status"], p["amount"]["amount_minor"]) for p in rows] == [
        ("refund", "succeeded", 6000),
        ("charge", "succeeded", 6000),
    ]
    assert rows[0]["id"] == body["refund_payment_id"]
    assert (rows[0]["refund_of"], rows[0]["purpose"], rows[0]["reference_id"]) == (
        charge,
        "purchase",
        bought["id"],
    )
    assert (rows[1]["refunded_minor"], rows[1]["refund_of"]) == (6000, None)
    with db.read() as s:
        txn = s.get(JournalTransaction, int(body["transaction_id"].removeprefix("txn_")))
        assert txn is not None
        assert txn.kind == "refund"
        assert body["id"] in txn.description
    # Nothing is left to refund.
    again = refund(client, operator, charge, key="r-2")
    assert_problem(again, 409, "payment_refunded")
    assert_clean(db)


def test_partial_refunds_take_credits_in_proportion_rounded_up_and_add_up_to_the_purchase(
    client: TestClient, db: Database, operator: Headers, customer: Callable[..., Any]
) -> None:
    org, admin = customer()
    bought = buy(client, org, admin)
    charge = bought["payment_id"]

    first = refund(client, operator, charge, key="a", amount_minor=1000)
    assert first.status_code == 201, first.text
    # USD 10.00 of USD 60.00 for 1,000 credits: 166.666666… rounded up.
    assert first.json()["credits"] == "166.666667"
    assert lot_left(db, bought["lot_id"]) == 1000 * C - 166_666_667
    rest = refund(client, operator, charge, key="b")  # the default: everything left
    assert rest.status_code == 201, rest.text
    assert (rest.json()["amount"]["amount_minor"], rest.json()["credits"]) == (5000, "833.333333")
    assert lot_left(db, bought["lot_id"]) == 0
    assert history(client, org, admin)[-1]["refunded_minor"] == 6000
    assert_clean(db)


def test_a_purchase_whose_credits_were_spent_is_refused_and_a_smaller_refund_works(
    client: TestClient, db: Database, operator: Headers, customer: Callable[..., Any]
) -> None:
    org, admin = customer()
    bought = buy(client, org, admin)
    with db.write() as s:  # 800 credits: the plan lot pays first (it expires sooner), then this
        ledger.debit(s, org, "live", 800 * C, "inference", "work", JAN_16)
    left = lot_left(db, bought["lot_id"])
    assert 0 < left < 1000 * C
    most = left * 6000 // (1000 * C)  # what the credits left are worth, rounded down
    snapshot = everything(db)

    refused = refund(client, operator, bought["payment_id"])

    problem = assert_problem(refused, 409, "credits_spent")
    assert f"at most {most} minor units" in problem["errors"][0]["message"]
    assert everything(db) == snapshot
    too_much = refund(client, operator, bought["payment_id"], key="r-2", amount_minor=most + 1)
    assert_problem(too_much, 409, "credits_spent")
    smaller = refund(client, operator, bought["payment_id"], key="r-3", amount_minor=most)
    assert smaller.status_code == 201, smaller.text
    taken = -(-most * 1000 * C // 6000)  # in proportion, rounded up
    assert lot_left(db, bought["lot_id"]) == left - taken
    assert_clean(db)


def test_a_refund_of_an_invoice_payment_leaves_the_invoice_paid_and_records_the_amount(
    client: TestClient, db: Database, operator: Headers, customer: Callable[..., Any]
) -> None:
    org, admin = customer()
    with clock.frozen_at(utc(2026, 2, 1, 0, 0, 30)):
        [closed] = cycle.run_due(db, utc(2026, 2, 1, 0, 0, 30))
        assert closed.ok, closed.error
    with db.read() as s:
        invoice = s.scalars(select(Invoice).where(Invoice.organization_id == org)).one()
        charge = s.scalars(
            select(Payment).where(Payment.reference_id == invoice.id, Payment.kind == "charge")
        ).one()
    assert (invoice.status, charge.status) == ("paid", "succeeded")
    before = available(client, org, admin)

    response = refund(client, operator, charge.id, amount_minor=500)

    assert response.status_code == 201, response.text
    assert (response.json()["credits"], response.json()["transaction_id"]) == ("0", None)
    detail = client.get(f"/v1/invoices/{invoice.id}", headers=operator).json()
    assert (detail["status"], detail["refunded_minor"]) == ("paid", 500)
    assert available(client, org, admin) == before
    rows = history(client, org, admin)
    assert (rows[0]["kind"], rows[0]["purpose"], rows[0]["reference_id"]) == (
        "refund",
        "invoice",
        invoice.id,
    )
    assert rows[1]["refunded_minor"] == 500
    assert_clean(db)


def test_a_refund_the_processor_refuses_is_a_402_in_the_history_and_changes_nothing_else(
    client: TestClient, db: Database, operator: Headers, customer: Callable[..., Any]
) -> None:
    org, admin = customer(REFUND_FAILS)
    bought = buy(client, org, admin)
    before = available(client, org, admin)

    response = refund(client, operator, bought["payment_id"])

    problem = assert_problem(response, 402, "expired_or_canceled_card")
    assert "expired or canceled" in problem["detail"]
    assert available(client, org, admin) == before
    assert lot_left(db, bought["lot_id"]) == 1000 * C
    rows = history(client, org, admin)
    assert [(p["kind"], p["status"], p["failure_code"]) for p in rows] == [
        ("refund", "failed", "expired_or_canceled_card"),
        ("charge", "succeeded", None),
    ]
    assert rows[1]["refunded_minor"] == 0
    # The same key again: the same answer, no second history row.
    again = refund(client, operator, bought["payment_id"])
    assert_problem(again, 402, "expired_or_canceled_card")
    assert len(history(client, org, admin)) == 2
    assert_clean(db)


def test_the_same_key_refunds_once_and_another_body_with_it_is_a_409(
    client: TestClient, db: Database, operator: Headers, customer: Callable[..., Any]
) -> None:
    org, admin = customer()
    bought = buy(client, org, admin)
    first = refund(client, operator, bought["payment_id"], amount_minor=600)
    second = refund(client, operator, bought["payment_id"], amount_minor=600)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json() == second.json()
    assert sandbox_refunds(db) == 1
    assert len(history(client, org, admin)) == 2
    other = refund(client, operator, bought["payment_id"], amount_minor=700)
    assert_problem(other, 409, "idempotency_key_reused")
    assert lot_left(db, bought["lot_id"]) == 900 * C
    assert_clean(db)


class LoseRefundAnswer:
    """The sandbox, but the connection drops after the processor refunded: the answer is lost."""

    def __init__(self, inner: SandboxProvider) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def refund(self, *args: Any) -> RefundResult:
        self.inner.refund(*args)
        raise ProviderUnavailable("connection reset after the refund")


def test_a_refund_interrupted_after_the_processor_refunded_is_finished_by_a_retry_once(
    app: Any, client: TestClient, db: Database, operator: Headers, customer: Callable[..., Any]
) -> None:
    org, admin = customer()
    bought = buy(client, org, admin)
    app.state.payment_provider = LoseRefundAnswer(SandboxProvider(db))
    lost = refund(client, operator, bought["payment_id"], key="flaky")
    assert (lost.status_code, lost.json()["code"]) == (502, "payment_provider_unavailable")
    assert lot_left(db, bought["lot_id"]) == 1000 * C
    assert len(history(client, org, admin)) == 1
    # While it is pending, its amount is reserved: nothing else can be refunded.
    assert_problem(refund(client, operator, bought["payment_id"], key="x"), 409, "payment_refunded")

    app.state.payment_provider = SandboxProvider(db)
    retried = refund(client, operator, bought["payment_id"], key="flaky")
    assert retried.status_code == 201, retried.text
    assert sandbox_refunds(db) == 1
    assert lot_left(db, bought["lot_id"]) == 0
    assert len(history(client, org, admin)) == 2
    assert_clean(db)


def test_the_worker_finishes_a_refund_whose_answer_was_lost_once(
    app: Any, client: TestClient, db: Database, operator: Headers, customer: Callable[..., Any]
) -> None:
    org, admin = customer()
    bought = buy(client, org, admin)
    app.state.payment_provider = LoseRefundAnswer(SandboxProvider(db))
    lost = refund(client, operator, bought["payment_id"], key="flaky")
    assert lost.status_code == 502
    assert sandbox_refunds(db) == 1  # the processor refunded; creditmeter never heard

    provider = SandboxProvider(db)
    with clock.frozen_at(JAN_16 + runner.PENDING_REFUND_AGE / 2):  # too young: maybe in flight
        runner.run_payment_jobs(db, provider, None, clock.now())
    assert lot_left(db, bought["lot_id"]) == 1000 * C
    with clock.frozen_at(JAN_16 + runner.PENDING_REFUND_AGE):
        runner.run_payment_jobs(db, provider, None, clock.now())
        runner.run_payment_jobs(db, provider, None, clock.now())  # twice is once
    assert sandbox_refunds(db) == 1
    assert lot_left(db, bought["lot_id"]) == 0
    assert [(p["kind"], p["status"]) for p in history(client, org, admin)] == [
        ("refund", "succeeded"),
        ("charge", "succeeded"),
    ]
    assert_clean(db)


def test_bad_refund_requests_are_4xx_and_change_nothing(
    client: TestClient,
    db: Database,
    operator: Headers,
    customer: Callable[..., Any],
    make_key: Callable[..., Headers],
) -> None:
    org, admin = customer()
    bought = buy(client, org, admin)
    charge = bought["payment_id"]
    declined_org, declined_admin = customer(DECLINED)
    failed = client.post(
        url(declined_org, "purchases"),
        json={"package": "standard"},
        headers={**declined_admin, "Idempotency-Key": "d"},
    )
    assert failed.status_code == 402
    failed_charge = history(client, declined_org, declined_admin)[0]["id"]
    snapshot = everything(db)

    assert_problem(refund(client, admin, charge), 403, "operator_only")
    assert_problem(refund(client, operator, "pay_nope"), 404, "payment_not_found")
    assert_problem(refund(client, operator, charge, key=None), 422, "idempotency_key_required")
    for amount in (0, -5, "10", 1.5, 10**16):
        assert_problem(refund(client, operator, charge, key=f"k{amount}", amount_minor=amount), 422)
    no_reason = client.post(
        f"/v1/payments/{charge}/refunds",
        json={"amount_minor": 5},
        headers={**operator, "Idempotency-Key": "no-reason"},
    )
    assert_problem(no_reason, 422)
    assert_problem(refund(client, operator, charge, reason="  "), 422)
    assert_problem(refund(client, operator, charge, extra=1), 422)
    assert_problem(
        refund(client, operator, charge, key="big", amount_minor=6001),
        409,
        "amount_exceeds_refundable",
    )
    assert_problem(refund(client, operator, failed_charge), 409, "payment_not_refundable")
    assert everything(db) == snapshot
    # A refund row cannot be refunded.
    done = refund(client, operator, charge, amount_minor=100).json()
    assert_problem(
        refund(client, operator, done["refund_payment_id"], key="r-3"),
        409,
        "payment_not_refundable",
    )
    assert_clean(db)


class SpendDuringRefund:
    """The sandbox, but the organization spends credits while the processor is refunding (between
    the refund's check and its record)."""

    def __init__(self, inner: SandboxProvider, db: Database, org: str, micros: int) -> None:
        self.inner, self.db, self.org, self.micros = inner, db, org, micros
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def refund(self, *args: Any) -> RefundResult:
        with self.db.write() as s:
            ledger.debit(s, self.org, "live", self.micros, "inference", "meanwhile", JAN_16)
        return self.inner.refund(*args)


def test_credits_spent_while_the_processor_refunds_are_taken_from_the_other_lots_then_arrears(
    app: Any, client: TestClient, db: Database, operator: Headers, customer: Callable[..., Any]
) -> None:
    org, admin = customer()
    bought = buy(client, org, admin)
    with db.read() as s:
        total = ledger.get_balance(s, org, "live", JAN_16).available_micros
    # Spend everything but 100 credits: the purchase lot keeps at most 100 of its 1,000.
    app.state.payment_provider = SpendDuringRefund(SandboxProvider(db), db, org, total - 100 * C)

    response = refund(client, operator, bought["payment_id"])

    assert response.status_code == 201, response.text
    with db.read() as s:
        after = ledger.get_balance(s, org, "live", JAN_16)
    # The money went back, so all 1,000 credits leave: 100 were left, 900 become arrears.
    assert (after.available_micros, after.arrears_micros) == (-900 * C, 900 * C)
    assert lot_left(db, bought["lot_id"]) == 0
    assert_clean(db)
