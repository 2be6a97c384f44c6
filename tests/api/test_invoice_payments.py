"""Charging invoices at the cycle close and paying them by hand, with the sandbox processor: a good
card is charged once and the invoice is paid, a rerun or a crash never charges twice, an
organization without a card gets a failed attempt and a retry scheduled, the 0341 card attaches and
every charge fails, a worker that was down makes one late attempt, one failing worker job does not
stop the others, and bad requests to ``POST /v1/invoices/{id}/pay`` are 4xx changing nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.billing import cycle, dunning, purchases
from creditmeter.billing.models import Invoice
from creditmeter.billing.payments.models import Payment
from creditmeter.billing.payments.provider import ChargeResult
from creditmeter.billing.payments.sandbox import SandboxProvider
from creditmeter.billing.payments.sandbox_models import SandboxCharge
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.worker import runner
from tests.api.test_bad_input import assert_problem, everything
from tests.conftest import utc
from tests.metering import Headers, assert_clean

VISA = "4242424242424242"
CHARGE_FAILS = "4000000000000341"
FEB_1 = utc(2026, 2, 1, 0, 0, 30)


def add_card(client: TestClient, org: str, admin: Headers, number: str, **extra: Any) -> str:
    card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    response = client.post(
        f"/v1/organizations/{org}/payment-methods", json={"card": card, **extra}, headers=admin
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture
def customer(
    client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> Callable[..., tuple[str, Headers]]:
    """An organization subscribed to ``plan`` on January 16 (with a card, if given)."""

    def _make(card: str | None = VISA, plan: str = "standard") -> tuple[str, Headers]:
        org = make_org()
        admin = make_key(org, "org:admin")
        with clock.frozen_at(utc(2026, 1, 16)):
            response = client.put(
                f"/v1/organizations/{org}/subscription", json={"plan": plan}, headers=admin
            )
            assert response.status_code == 200, response.text
            if card:
                add_card(client, org, admin, card)
        return org, admin

    return _make


def invoice_of(db: Database, org: str) -> Invoice:
    with db.read() as s:
        return s.scalars(select(Invoice).where(Invoice.organization_id == org)).one()


def attempts(db: Database, org: str) -> list[tuple[str, str | None, str]]:
    with db.read() as s:
        rows = s.scalars(
            select(Payment).where(Payment.organization_id == org).order_by(Payment.created_at)
        )
        return [(p.status, p.failure_code, p.idempotency_key.rsplit(":", 1)[1]) for p in rows]


def processor_charges(db: Database) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(SandboxCharge)) or 0)


def test_a_good_card_is_charged_once_at_the_close_and_the_invoice_is_paid(
    db: Database, customer: Callable[..., tuple[str, Headers]]
) -> None:
    org, _ = customer(VISA)
    with clock.frozen_at(FEB_1):
        [result] = cycle.run_due(db, FEB_1)  # the default hook: the configured (sandbox) provider
    assert result.ok, result.error
    invoice = invoice_of(db, org)
    assert (invoice.status, invoice.paid_at) == ("paid", FEB_1)
    assert attempts(db, org) == [("succeeded", None, "1")]
    with db.read() as s:
        [payment] = s.scalars(select(Payment).where(Payment.organization_id == org))
    assert (payment.purpose, payment.reference_id, payment.amount_minor) == (
        "invoice",
        invoice.id,
        invoice.total_minor,
    )
    # A rerun of the close, and a later one, charge nothing more.
    assert cycle.run_due(db, FEB_1) == []
    assert cycle.run_due(db, utc(2026, 2, 1, 6)) == []
    assert processor_charges(db) == 1
    assert_clean(db)


class CrashAfterCharge:
    """A processor that charges, then loses the answer (a crash before anything is recorded)."""

    def __init__(self, inner: SandboxProvider) -> None:
        self.inner, self.name, self.crashes = inner, inner.name, 1

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def charge(self, *args: Any) -> ChargeResult:
        result = self.inner.charge(*args)
        if self.crashes:
            self.crashes -= 1
            raise ConnectionError("the answer was lost")
        return result


@pytest.mark.parametrize("card", [VISA, CHARGE_FAILS])
def test_a_close_interrupted_after_the_charge_charges_once_when_it_resumes(
    db: Database, customer: Callable[..., tuple[str, Headers]], card: str
) -> None:
    org, _ = customer(card)
    provider = CrashAfterCharge(SandboxProvider(db))
    with clock.frozen_at(FEB_1):
        [failed] = cycle.run_due(db, FEB_1, charge=dunning.charger(provider))  # type: ignore[arg-type]
        assert "the answer was lost" in (failed.error or "")
        assert attempts(db, org) == []  # charged at the processor, nothing recorded
        [resumed] = cycle.run_due(db, FEB_1, charge=dunning.charger(provider))  # type: ignore[arg-type]
        assert resumed.ok, resumed.error
        assert cycle.run_due(db, FEB_1, charge=dunning.charger(provider)) == []  # type: ignore[arg-type]
    assert processor_charges(db) == 1
    assert len(attempts(db, org)) == 1
    assert invoice_of(db, org).status == ("paid" if card == VISA else "open")


def test_without_a_card_the_attempt_fails_and_a_retry_is_scheduled(
    client: TestClient, db: Database, customer: Callable[..., tuple[str, Headers]]
) -> None:
    org, admin = customer(None)
    with clock.frozen_at(FEB_1):
        runner.tick(db)
        invoice = client.get(f"/v1/invoices/{invoice_of(db, org).id}", headers=admin).json()
    assert (invoice["status"], invoice["payment_attempts"]) == ("open", 1)
    assert invoice["next_payment_attempt_at"] == "2026-02-02T00:00:30Z"
    assert attempts(db, org) == [("failed", dunning.NO_PAYMENT_METHOD, "1")]
    assert processor_charges(db) == 0
    history = client.get(f"/v1/organizations/{org}/payments", headers=admin).json()["data"]
    assert history[0]["failure_message"] == "the organization has no payment method to charge"


def test_the_0341_card_attaches_and_every_charge_of_the_invoice_fails(
    client: TestClient, db: Database, customer: Callable[..., tuple[str, Headers]]
) -> None:
    org, admin = customer(CHARGE_FAILS, plan="professional")
    with clock.frozen_at(FEB_1):
        runner.tick(db)
    invoice = invoice_of(db, org)
    with clock.frozen_at(utc(2026, 2, 1, 9)):
        response = client.post(f"/v1/invoices/{invoice.id}/pay", headers=admin)
        body = assert_problem(response, 402, "card_declined")
        assert "still open" in body["detail"]
    assert attempts(db, org) == [("failed", "card_declined", "1"), ("failed", "card_declined", "2")]
    # A failed payment by hand does not take the place of the retry due on February 2.
    with clock.frozen_at(utc(2026, 2, 2, 0, 1)):
        assert [a.number for a in dunning.run_due(db, SandboxProvider(db), clock.now())] == [3]
    assert invoice_of(db, org).status == "open"
    assert processor_charges(db) == 3
    assert_clean(db)


def test_a_worker_down_through_the_retries_makes_one_late_attempt_and_the_invoice_is_past_due(
    client: TestClient, db: Database, customer: Callable[..., tuple[str, Headers]]
) -> None:
    org, admin = customer(CHARGE_FAILS)
    with clock.frozen_at(FEB_1):
        runner.tick(db)
    with clock.frozen_at(utc(2026, 2, 20)):
        runner.tick(db)
        runner.tick(db)
    assert [a[2] for a in attempts(db, org)] == ["1", "2"]
    assert invoice_of(db, org).status == "past_due"
    assert client.get(f"/v1/organizations/{org}", headers=admin).json()["status"] == "suspended"


def test_a_failing_worker_job_does_not_stop_the_others(
    db: Database,
    customer: Callable[..., tuple[str, Headers]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    org, _ = customer(CHARGE_FAILS)
    with clock.frozen_at(FEB_1):
        runner.tick(db)
    resumed: list[datetime] = []

    def broken(*args: Any) -> Any:
        raise RuntimeError("the outbox (auto top-ups) is broken")

    def resume(*args: Any) -> list[Any]:
        resumed.append(clock.now())
        return []

    monkeypatch.setattr(runner, "run_jobs", broken)
    monkeypatch.setattr(purchases, "resume_pending", resume)
    with clock.frozen_at(utc(2026, 2, 2, 1)), caplog.at_level(logging.ERROR):
        runner.tick(db)
    assert [a[2] for a in attempts(db, org)] == ["1", "2"]  # dunning ran
    assert resumed == [utc(2026, 2, 2, 1)]  # and so did the pending purchases
    assert "outbox jobs could not run" in caplog.text


def test_paying_needs_an_admin_of_the_organization_and_something_to_pay(
    client: TestClient,
    db: Database,
    customer: Callable[..., tuple[str, Headers]],
    make_key: Callable[..., Headers],
    operator: Headers,
) -> None:
    org, admin = customer(CHARGE_FAILS)
    other, other_admin = customer(VISA)
    with clock.frozen_at(FEB_1):
        runner.tick(db)
    invoice = invoice_of(db, org)
    pay = f"/v1/invoices/{invoice.id}/pay"
    reader = make_key(org, "org:read")
    before = everything(db)
    with clock.frozen_at(utc(2026, 2, 1, 12)):
        cases = [
            (client.post(pay, headers=other_admin), 404, "invoice_not_found"),
            (client.post(pay, headers=reader), 403, "insufficient_scope"),
            (client.post("/v1/invoices/inv_nope/pay", headers=admin), 404, "invoice_not_found"),
            (client.post(f"/v1/invoices/{invoice_of(db, other).id}/pay", headers=operator), 409,
             "invoice_paid"),
            (client.post(pay, json={"payment_method": "pmt_nope"}, headers=admin), 422,
             "unknown_payment_method"),
            (client.post(pay, json={"payment_method": ""}, headers=admin), 422,
             "validation_failed"),
            (client.post(pay, json={"card": VISA}, headers=admin), 422, "validation_failed"),
            (client.post(pay, content="x", headers={**admin, "Content-Type": "text/plain"}), 415,
             "unsupported_media_type"),
        ]  # fmt: skip
        for response, status, code in cases:
            assert_problem(response, status, code)
    assert everything(db) == before


def test_an_operator_pays_with_another_card_and_an_organization_without_one_gets_a_422(
    client: TestClient,
    db: Database,
    customer: Callable[..., tuple[str, Headers]],
    operator: Headers,
) -> None:
    org, admin = customer(None)
    with clock.frozen_at(FEB_1):
        runner.tick(db)
    invoice = invoice_of(db, org)
    before = everything(db)
    with clock.frozen_at(utc(2026, 2, 1, 12)):
        response = client.post(f"/v1/invoices/{invoice.id}/pay", headers=operator)
        assert_problem(response, 422, "payment_method_required")
        assert everything(db) == before
        card = add_card(client, org, admin, VISA)
        paid = client.post(
            f"/v1/invoices/{invoice.id}/pay", json={"payment_method": card}, headers=operator
        )
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "paid"
    assert attempts(db, org) == [("failed", "no_payment_method", "1"), ("succeeded", None, "2")]
    assert_clean(db)


def test_voiding_a_past_due_invoice_stops_collection_and_ends_the_suspension(
    client: TestClient,
    db: Database,
    customer: Callable[..., tuple[str, Headers]],
    operator: Headers,
) -> None:
    org, admin = customer(CHARGE_FAILS)
    with clock.frozen_at(FEB_1):
        runner.tick(db)
    with clock.frozen_at(utc(2026, 2, 20)):
        runner.tick(db)
    invoice = invoice_of(db, org)
    assert invoice.status == "past_due"
    void = f"/v1/invoices/{invoice.id}/void"
    with clock.frozen_at(utc(2026, 2, 21)):
        voided = client.post(void, json={"reason": "goodwill: outage"}, headers=operator)
    assert voided.status_code == 200, voided.text
    body = voided.json()
    assert (body["status"], body["voided_at"], body["void_reason"]) == (
        "void",
        "2026-02-21T00:00:00Z",
        "goodwill: outage",
    )
    assert body["amount_due"]["amount_minor"] == 0
    assert client.get(f"/v1/organizations/{org}", headers=admin).json()["status"] == "active"
    charged = len(attempts(db, org))
    with clock.frozen_at(utc(2026, 2, 28)):  # no more retries, no payment by hand
        runner.tick(db)
        assert_problem(
            client.post(f"/v1/invoices/{invoice.id}/pay", headers=admin), 409, "invoice_void"
        )
    assert len(attempts(db, org)) == charged
    pdf = client.get(body["pdf_url"], headers=admin)
    assert pdf.status_code == 200
    assert_clean(db)


def test_void_is_for_operators_and_unpaid_invoices_and_bad_requests_change_nothing(
    client: TestClient,
    db: Database,
    customer: Callable[..., tuple[str, Headers]],
    operator: Headers,
) -> None:
    org, admin = customer(CHARGE_FAILS)
    paid_org, _ = customer(VISA)
    with clock.frozen_at(FEB_1):
        runner.tick(db)
    invoice, paid = invoice_of(db, org), invoice_of(db, paid_org)
    void = f"/v1/invoices/{invoice.id}/void"
    before = everything(db)
    cases = [
        (client.post(void, json={"reason": "x"}, headers=admin), 403, "operator_only"),
        (client.post(void, json={}, headers=operator), 422, "validation_failed"),
        (client.post(void, json={"reason": ""}, headers=operator), 422, "validation_failed"),
        (client.post("/v1/invoices/inv_nope/void", json={"reason": "x"}, headers=operator), 404,
         "invoice_not_found"),
        (client.post(f"/v1/invoices/{paid.id}/void", json={"reason": "x"}, headers=operator), 409,
         "invoice_paid"),
    ]  # fmt: skip
    for response, status, code in cases:
        assert_problem(response, status, code)
    assert everything(db) == before
    assert client.post(void, json={"reason": "written off"}, headers=operator).status_code == 200
    again = client.post(void, json={"reason": "twice"}, headers=operator)
    assert_problem(again, 409, "invoice_void")
    assert invoice_of(db, org).void_reason == "written off"
