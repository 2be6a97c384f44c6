"""Packages bought on account (enterprise): the credits at once, no card and no charge, the package
billed once on the invoice of the month it was bought in; operator keys only (credit extended: an
organization's own key gets 403, nothing changed); refused (409, nothing changed) on a plan that
does not allow it; idempotent; bad input a 422 that changes nothing."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pypdf
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.billing import cycle, purchases
from creditmeter.billing.cycle import Due
from creditmeter.billing.models import Invoice
from creditmeter.billing.payments.models import Payment, Purchase
from creditmeter.billing.plans import load_catalog
from creditmeter.kit import clock
from creditmeter.kit.credits import MICROS_PER_CREDIT
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import JournalTransaction, Lot, Posting
from creditmeter.ledger.verify import verify
from creditmeter.metering.verify import CHECKS as METERING_CHECKS
from tests.api.test_bad_input import assert_problem, everything
from tests.api.test_payments import add_card, sandbox_charges
from tests.conftest import utc
from tests.integration.test_concurrency import in_parallel
from tests.integration.test_cycle_close import invoices_of

C = MICROS_PER_CREDIT
Headers = dict[str, str]
CATALOG = load_catalog()
JAN_12 = utc(2026, 1, 12, 9, 30)
PROFESSIONAL_PACKAGE = "Professional package (5,000 credits), bought 12 January 2026"


def url(org: str, tail: str) -> str:
    return f"/v1/organizations/{org}/{tail}"


def subscribe(client: TestClient, org: str, headers: Headers, body: dict[str, Any]) -> None:
    with clock.frozen_at(utc(2026, 1, 1)):
        response = client.put(url(org, "subscription"), json=body, headers=headers)
    assert response.status_code == 200, response.text


@pytest.fixture
def big(client: TestClient, make_org: Callable[..., str], operator: Headers) -> str:
    """An Enterprise organization (20,000 credits a month, USD 0.04 a purchased credit) since
    January 1."""
    org = make_org("Big Co")
    subscribe(client, org, operator, {"plan": "enterprise", "allocation_credits": "20000"})
    return org


@pytest.fixture
def buyer(operator: Headers) -> Headers:
    """Who buys on account: an operator key (an organization's own key may not: the credits are
    granted before anyone pays for them)."""
    return operator


def buy(
    client: TestClient, org: str, headers: Headers, key: str, at: datetime = JAN_12, **body: Any
) -> Any:
    with clock.frozen_at(at):
        return client.post(
            url(org, "purchases"),
            json=body or {"package": "professional", "billing": "on_account"},
            headers={**headers, "Idempotency-Key": key},
        )


def close(db: Database, at: datetime, org: str, **kw: Any) -> list[cycle.CloseResult]:
    charged: list[str] = []
    kw.setdefault("charge", lambda db, invoice_id, now: charged.append(invoice_id))
    results = cycle.run_due(db, at, org, catalog=CATALOG, **kw)
    with db.read() as session:
        assert verify(session, extra_checks=METERING_CHECKS) == []
    return results


def invoice_lines(db: Database, org: str) -> list[list[tuple[Any, ...]]]:
    """Each invoice of ``org`` (by month) as its lines (position, kind, description, amount,
    credits), followed by its total."""
    return [inv["lines"] + [("total", inv["total"])] for inv in invoices_of(db, org)]


def purchase_lots(db: Database, org: str) -> list[tuple[Any, ...]]:
    with db.read() as s:
        rows = s.execute(
            select(Lot.amount_micros, Lot.cost_basis_micros, Lot.effective_at, Lot.expires_at)
            .where(Lot.organization_id == org, Lot.source == "purchase")
            .order_by(Lot.effective_at)
        ).all()
    return [tuple(r) for r in rows]


def count(db: Database, model: Any) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def available(db: Database, org: str, at: datetime) -> int:
    with db.read() as s:
        return ledger.get_balance(s, org, "live", at).available_micros


def enterprise_fee(credits: int = 20_000) -> tuple[Any, ...]:
    return (
        1,
        "plan_fee",
        f"Enterprise plan, January 2026: {credits:,} credits",
        150000,
        credits * C,
    )


def test_an_enterprise_organization_buys_a_package_on_account_and_january_bills_it_once(
    client: TestClient, db: Database, big: str, buyer: Headers
) -> None:
    response = buy(client, big, buyer, "jan-12")
    assert response.status_code == 201, response.text
    bought = response.json()
    assert (bought["status"], bought["billing"], bought["package"]) == (
        "succeeded",
        "on_account",
        "professional",
    )
    assert bought["amount"] == {"amount_minor": 20000, "currency": "USD"}  # 5,000 x USD 0.04
    assert (bought["payment_method_id"], bought["payment_id"], bought["invoice_id"]) == (
        None,
        None,
        None,
    )
    # The lot at once, exactly as a charged purchase: cost basis USD 0.04, expiry in 12 months.
    assert purchase_lots(db, big) == [(5000 * C, 40_000, JAN_12, utc(2027, 1, 12, 9, 30))]
    # Nothing charged, nothing in the billing history.
    assert (count(db, Payment), sandbox_charges(db)) == (0, 0)
    assert client.get(url(big, "payments"), headers=buyer).json()["data"] == []

    [result] = close(db, utc(2026, 2, 1), big)
    assert result.ok
    [january] = invoice_lines(db, big)
    assert january == [
        enterprise_fee(),
        (2, "package", PROFESSIONAL_PACKAGE, 20000, 5000 * C),
        ("total", 170000),
    ]
    [listed] = client.get(url(big, "purchases"), headers=buyer).json()["data"]
    with db.read() as s:
        january_id = s.scalar(select(Invoice.id).where(Invoice.organization_id == big))
    assert listed["invoice_id"] == january_id
    invoice = client.get(f"/v1/invoices/{january_id}", headers=buyer).json()
    assert [line["kind"] for line in invoice["lines"]] == ["plan_fee", "package"]
    package_line = invoice["lines"][1]
    assert (package_line["quantity"], package_line["unit_price"]) == ("1", "200.00")
    pdf = client.get(invoice["pdf_url"], headers=buyer)
    assert pdf.status_code == 200, pdf.text
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Professional package (5,000 credits), bought 12 January 2026" in text
    assert "Total USD 1,700.00" in text

    # A second close never bills it again.
    close(db, utc(2026, 3, 1), big)
    january_again, february = invoice_lines(db, big)
    assert january_again == january
    assert february == [
        (1, "plan_fee", "Enterprise plan, February 2026: 20,000 credits", 150000, 20_000 * C),
        ("total", 150000),
    ]


def test_the_invoice_with_a_package_is_charged_as_usual(
    client: TestClient, db: Database, big: str, buyer: Headers
) -> None:
    assert buy(client, big, buyer, "jan-12").status_code == 201
    charged: list[str] = []
    close(db, utc(2026, 2, 1), big, charge=lambda db, invoice_id, now: charged.append(invoice_id))
    with db.read() as s:
        invoice = s.scalars(select(Invoice).where(Invoice.organization_id == big)).one()
    assert charged == [invoice.id]
    assert (invoice.total_minor, invoice.status) == (170000, "open")


@pytest.mark.parametrize("crash_after", cycle.STEPS)
def test_a_crash_after_any_step_and_a_rerun_bill_the_package_once(
    client: TestClient, db: Database, big: str, buyer: Headers, crash_after: str
) -> None:
    assert buy(client, big, buyer, "jan-12").status_code == 201

    def crash(item: Due, step: str) -> None:
        if step == crash_after:
            raise RuntimeError(f"power cut after {step}")

    [failed] = close(db, utc(2026, 2, 1), big, after_step=crash)
    assert failed.error == f"RuntimeError: power cut after {crash_after}"
    close(db, utc(2026, 2, 1, 0, 10), big)
    close(db, utc(2026, 3, 1), big)
    january, february = invoice_lines(db, big)
    assert [line[1] for line in january] == ["plan_fee", "package", 170000]
    assert [line[1] for line in february] == ["plan_fee", 150000]
    with db.read() as s:
        [billed_by] = s.scalars(select(Purchase.invoice_id)).all()
        assert billed_by == s.scalar(
            select(Invoice.id).where(Invoice.period_start == utc(2026, 1, 1))
        )


def test_a_purchase_on_account_in_february_is_on_februarys_invoice_not_januarys(
    client: TestClient, db: Database, big: str, buyer: Headers
) -> None:
    assert buy(client, big, buyer, "jan-12").status_code == 201
    feb = buy(client, big, buyer, "feb-10", utc(2026, 2, 10), credits="2500", billing="on_account")
    assert feb.status_code == 201, feb.text
    # The service was down on February 1: January is closed late, after the February purchase.
    close(db, utc(2026, 2, 15), big)
    [january] = invoice_lines(db, big)
    assert [line[2] for line in january[1:-1]] == [PROFESSIONAL_PACKAGE]
    close(db, utc(2026, 3, 1), big)
    _, february = invoice_lines(db, big)
    assert february[1:] == [
        (2, "package", "Custom package (2,500 credits), bought 10 February 2026", 10000, 2500 * C),
        ("total", 160000),
    ]


def test_a_purchase_on_account_pays_arrears_first(
    client: TestClient, db: Database, big: str, buyer: Headers
) -> None:
    with db.write() as session:  # past the month's credits: 1,000 credits of arrears
        ledger.debit(session, big, "live", 21_000 * C, "inference", "a big run", utc(2026, 1, 10))
    assert buy(client, big, buyer, "jan-12").status_code == 201
    with db.read() as session:
        balance = ledger.get_balance(session, big, "live", JAN_12)
    assert (balance.available_micros, balance.arrears_micros) == (4000 * C, 0)


def test_an_operator_key_buys_on_account_too(
    client: TestClient, db: Database, big: str, operator: Headers
) -> None:
    response = buy(client, big, operator, "op-1")
    assert response.status_code == 201, response.text
    assert response.json()["billing"] == "on_account"


def test_a_retry_with_the_same_key_is_the_same_purchase_and_never_two_lots(
    client: TestClient, db: Database, big: str, buyer: Headers
) -> None:
    first = buy(client, big, buyer, "same")
    again = buy(client, big, buyer, "same")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert len(purchase_lots(db, big)) == 1
    # The same key for another body (a charge, another package) is a 409 changing nothing.
    before = everything(db)
    assert_problem(
        buy(client, big, buyer, "same", package="professional"), 409, "idempotency_key_reused"
    )
    assert_problem(
        buy(client, big, buyer, "same", package="standard", billing="on_account"),
        409,
        "idempotency_key_reused",
    )
    assert everything(db) == before


class NoProcessor:
    """A payment provider that must not be called: a purchase on account charges nothing."""

    name = "sandbox"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the processor was called ({name}) for a purchase on account")


def test_four_twins_with_the_same_key_at_once_make_one_purchase_and_one_lot(
    db: Database, big: str
) -> None:
    request = purchases.PurchaseRequest("professional", billing=purchases.ON_ACCOUNT)

    def twin() -> str:
        processor: Any = NoProcessor()
        row = purchases.purchase(db, processor, CATALOG, big, "live", request, "k", now=JAN_12)
        return row.id

    ids = in_parallel([twin] * 4)
    assert len(set(ids)) == 1
    assert len(purchase_lots(db, big)) == 1
    assert count(db, Purchase) == 1


def test_a_standard_organization_may_not_buy_on_account(
    client: TestClient,
    db: Database,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
    operator: Headers,
) -> None:
    org = make_org("Small Co")
    admin = make_key(org, "org:admin")
    subscribe(client, org, admin, {"plan": "standard"})
    assert add_card(client, org, admin).status_code == 201
    before = everything(db)
    body = assert_problem(buy(client, org, operator, "no"), 409, "on_account_not_allowed")
    assert "Standard plan does not allow buying on account" in body["detail"]
    assert everything(db) == before
    # The plan says so, and the same organization may still charge its card.
    subscription = client.get(url(org, "subscription"), headers=admin).json()
    assert subscription["packages_on_account"] is False
    assert buy(client, org, admin, "card", package="standard").status_code == 201


@pytest.mark.parametrize("scope", ["org:admin", "org:read", "org:ingest"])
def test_an_organization_key_may_not_buy_on_account_even_when_the_plan_allows_it(
    client: TestClient, db: Database, big: str, make_key: Callable[..., Headers], scope: str
) -> None:
    """Credits on account are credit the operator extends: an enterprise organization's own key
    gets 403 and nothing changes (no purchase, no lot); its admin may still buy with a card."""
    own = make_key(big, scope)
    before = everything(db)
    for key in ("mine", "mine-2"):
        body = {"credits": "1000000", "billing": "on_account"}
        problem = assert_problem(buy(client, big, own, key, **body), 403)
        expected = "operator_only" if scope == "org:admin" else "insufficient_scope"
        assert problem["code"] == expected
    assert everything(db) == before
    if scope == "org:admin":
        assert add_card(client, big, own).status_code == 201
        charged = buy(client, big, own, "card", package="standard", billing="charge")
        assert (charged.status_code, charged.json()["billing"]) == (201, "charge")


def test_a_canceled_subscription_may_not_buy_on_account(
    client: TestClient, db: Database, big: str, operator: Headers
) -> None:
    with clock.frozen_at(utc(2026, 1, 5)):
        assert client.delete(url(big, "subscription"), headers=operator).is_success
    with clock.frozen_at(utc(2026, 2, 1)):
        close(db, utc(2026, 2, 1), big)
    before = everything(db)
    late = buy(client, big, operator, "late", utc(2026, 2, 3))
    assert_problem(late, 409, "on_account_not_allowed")
    assert everything(db) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"package": "professional", "billing": "invoice"}, "billing"),
        ({"package": "professional", "billing": None}, "billing"),
        ({"package": "professional", "billing": 1}, "billing"),
        ({"package": "nope", "billing": "on_account"}, "package"),
        ({"credits": "150", "billing": "on_account"}, "credits"),
        ({"package": "professional", "billing": "on_account", "payment_method": "pmt_1"}, None),
    ],
)
def test_bad_input_is_a_422_and_changes_nothing(
    client: TestClient,
    db: Database,
    big: str,
    buyer: Headers,
    body: dict[str, Any],
    field: str | None,
) -> None:
    before = everything(db)
    problem = assert_problem(buy(client, big, buyer, "bad", **body), 422)
    fields = {e.get("field") or ".".join(map(str, e.get("loc", []))) for e in problem["errors"]}
    assert any((field or "payment_method") in f for f in fields), problem
    assert everything(db) == before


def test_an_operator_reversal_of_the_grant_before_invoicing_is_the_correction(
    client: TestClient, db: Database, big: str, operator: Headers
) -> None:
    """A package bought on account by mistake: the operator reverses its grant before the month is
    invoiced; the credits go, and the invoice shows the package at nothing owed."""
    bought = buy(client, big, operator, "oops").json()
    with db.read() as s:
        grant_id = s.scalar(
            select(JournalTransaction.id)
            .join(Posting, Posting.transaction_id == JournalTransaction.id)
            .where(JournalTransaction.kind == "grant", Posting.lot_id == bought["lot_id"])
        )
    with clock.frozen_at(utc(2026, 1, 14, 8)):
        reversed_ = client.post(
            url(big, f"ledger/txn_{grant_id}/reverse"),
            json={"reason": "bought by mistake"},
            headers=operator,
        )
    assert reversed_.status_code == 201, reversed_.text
    assert available(db, big, utc(2026, 1, 14, 9)) == 20_000 * C
    close(db, utc(2026, 2, 1), big)
    close(db, utc(2026, 3, 1), big)
    january, february = invoice_lines(db, big)
    assert january == [
        enterprise_fee(),
        (
            2,
            "package",
            f"{PROFESSIONAL_PACKAGE}; credits taken back on 14 January 2026, not billed",
            0,
            0,
        ),
        ("total", 150000),
    ]
    assert [line[1] for line in february] == ["plan_fee", 150000]


def test_the_refund_endpoint_cannot_be_pointed_at_a_purchase_on_account(
    client: TestClient, db: Database, big: str, operator: Headers
) -> None:
    bought = buy(client, big, operator, "jan-12").json()
    before = everything(db)
    response = client.post(
        f"/v1/payments/{bought['id']}/refunds",
        json={"reason": "wrong package"},
        headers={**operator, "Idempotency-Key": "r-1"},
    )
    assert_problem(response, 404)
    assert everything(db) == before


def test_plans_and_subscriptions_show_packages_on_account(
    client: TestClient, big: str, buyer: Headers
) -> None:
    plans = {p["id"]: p for p in client.get("/v1/plans", headers=buyer).json()["data"]}
    assert {k: p["packages_on_account"] for k, p in plans.items()} == {
        "standard": False,
        "professional": False,
        "enterprise": True,
    }
    assert client.get(url(big, "subscription"), headers=buyer).json()["packages_on_account"]


def test_the_migration_matches_the_purchase_model(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from creditmeter.models import metadata

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if "purchases" in repr(d)] == []
