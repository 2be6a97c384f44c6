"""Credit notes (DESIGN.md §2, "Corrections after a cycle closed"), on SQLite and PostgreSQL: a
correction of a month already invoiced gives the credits back now and issues a credit note against
that invoice, which itself never changes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.billing import cycle
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.models import Invoice, InvoiceLine
from creditmeter.billing.plans import load_catalog
from creditmeter.billing.subscriptions import SubscriptionRequest
from creditmeter.kit import clock
from creditmeter.kit.credits import MICROS_PER_CREDIT
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.verify import verify
from creditmeter.metering.domain import EventInput
from creditmeter.metering.ingest import IngestContext, ingest
from creditmeter.pricing import load_rate_card
from tests.conftest import utc

C = MICROS_PER_CREDIT
CATALOG = load_catalog()
Headers = dict[str, str]


def no_charge(db: Database, invoice_id: str, now: datetime) -> None:
    """The payment side is not under test here."""


def subscribe(db: Database, org: str, plan: str, at: datetime, **extra: Any) -> None:
    with db.write() as session:
        subs.subscribe(session, CATALOG, org, "live", SubscriptionRequest(plan, **extra), at)


def close(db: Database, at: datetime) -> None:
    results = cycle.run_due(db, at, catalog=CATALOG, charge=no_charge)
    assert all(r.ok for r in results), results


def use(db: Database, org: str, event_id: str, credits: int, at: datetime) -> None:
    """One inference event costing ``credits`` (0.002 credits per 1,000 input tokens)."""
    context = IngestContext(
        "live", None, at, load_rate_card(), timedelta(days=35), timedelta(minutes=5), "USD"
    )
    event = EventInput(
        event_id, org, "inference", {"input_tokens": str(credits * 500_000)}, occurred_at=at
    )
    with db.write() as session:
        [result] = ingest(session, context, [event])
    assert (result.status, result.credits_micros) == ("applied", credits * C)


def invoice_rows(db: Database, org: str) -> list[tuple[Any, ...]]:
    """Every invoice of ``org`` and its lines, all columns, to prove they never change."""
    with db.read() as session:
        rows: list[tuple[Any, ...]] = []
        for inv in session.scalars(
            select(Invoice).where(Invoice.organization_id == org).order_by(Invoice.period_start)
        ):
            rows.append(tuple(repr(getattr(inv, c.key)) for c in Invoice.__table__.c))
            rows += [
                tuple(repr(getattr(line, c.key)) for c in InvoiceLine.__table__.c)
                for line in session.scalars(
                    select(InvoiceLine).where(InvoiceLine.invoice_id == inv.id)
                )
            ]
    return rows


def available(db: Database, org: str, at: datetime) -> int:
    with db.read() as session:
        return ledger.get_balance(session, org, "live", at).available_micros


def assert_clean(db: Database) -> None:
    with db.read() as session:
        assert verify(session) == []


def test_a_january_event_reversed_in_february_gets_a_credit_note_on_the_january_invoice(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org("Pro Co")
    subscribe(db, org, "professional", utc(2026, 1, 1))
    use(db, org, "jan-run", 300, utc(2026, 1, 20))
    close(db, utc(2026, 2, 1))
    january = invoice_rows(db, org)
    with db.read() as session:
        invoice = session.scalars(select(Invoice).where(Invoice.organization_id == org)).one()
        invoice_id, invoice_number = invoice.id, invoice.number
    before = available(db, org, utc(2026, 2, 10))

    with clock.frozen_at(utc(2026, 2, 10)):
        response = client.post(
            f"/v1/organizations/{org}/usage/jan-run/reverse",
            json={"reason": "duplicate run"},
            headers=operator,
        )
        assert response.status_code == 200, response.text
        txn = response.json()["transaction_id"]
        # The credits are back now, to the January lot (still valid: it rolls over to April).
        assert available(db, org, utc(2026, 2, 10)) == before + 300 * C
        # The closed invoice and its lines are untouched.
        assert invoice_rows(db, org) == january

        body = client.get(f"/v1/invoices/{invoice_id}", headers=operator).json()
        [note] = body["credit_notes"]
        assert note["number"] == "CN-2026-000001"
        assert (note["invoice_id"], note["invoice_number"]) == (invoice_id, invoice_number)
        assert (note["source"], note["reference"]) == ("usage_reversal", "usage event jan-run")
        assert (note["credits"], note["reason"], note["transaction_id"]) == (
            "300",
            "duplicate run",
            txn,
        )
        assert note["amount"] == {"amount_minor": 0, "currency": "USD"}  # paid in credits
        assert note["created_at"] == "2026-02-10T00:00:00Z"
        listed = client.get(f"/v1/organizations/{org}/credit-notes", headers=operator).json()
        assert listed["data"] == [note]
        own = client.get(
            f"/v1/organizations/{org}/credit-notes", headers=make_key(org, "org:read")
        ).json()
        assert own["data"] == [note]
    # Without money, the February invoice has no credit note line.
    close(db, utc(2026, 3, 1))
    assert invoice_rows(db, org)[: len(january)] == january
    with db.read() as session:
        kinds = session.scalars(
            select(InvoiceLine.kind).join(Invoice).where(Invoice.organization_id == org)
        ).all()
    assert "credit_note" not in kinds
    assert_clean(db)


def test_a_reversed_overage_event_credits_its_money_on_the_next_invoice(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Overage Co")
    subscribe(db, org, "enterprise", utc(2026, 1, 1), allocation_micros=1000 * C)
    use(db, org, "jan-big", 1250, utc(2026, 1, 20))  # 250 credits of overage
    close(db, utc(2026, 2, 1))
    january = invoice_rows(db, org)

    with clock.frozen_at(utc(2026, 2, 3)):
        response = client.post(
            f"/v1/organizations/{org}/usage/jan-big/reverse",
            json={"reason": "runaway job"},
            headers=operator,
        )
        assert response.status_code == 200, response.text
        [note] = client.get(f"/v1/organizations/{org}/credit-notes", headers=operator).json()[
            "data"
        ]
    # 250 credits were billed as overage at USD 0.04: USD 10.00 credited.
    assert note["credits"] == "1250"
    assert note["amount"] == {"amount_minor": 1000, "currency": "USD"}
    assert invoice_rows(db, org) == january
    close(db, utc(2026, 3, 1))
    with db.read() as session:
        february = session.scalars(
            select(Invoice).where(
                Invoice.organization_id == org, Invoice.period_start == utc(2026, 2, 1)
            )
        ).one()
        lines = session.execute(
            select(InvoiceLine.kind, InvoiceLine.amount_minor, InvoiceLine.description)
            .where(InvoiceLine.invoice_id == february.id)
            .order_by(InvoiceLine.position)
        ).all()
    assert [(k, a) for k, a, _ in lines] == [("plan_fee", 150000), ("credit_note", -1000)]
    assert lines[1][2] == f"Credit note {note['number']}: runaway job"
    assert february.total_minor == 149000
    assert invoice_rows(db, org)[: len(january)] == january
    # Deducted once: the March invoice has none.
    close(db, utc(2026, 4, 1))
    with db.read() as session:
        count = session.scalar(
            select(InvoiceLine.id).where(InvoiceLine.kind == "credit_note").limit(2).offset(1)
        )
    assert count is None
    assert_clean(db)


def test_an_operator_reversal_of_a_january_adjustment_gets_a_credit_note(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Adjusted Co")
    subscribe(db, org, "professional", utc(2026, 1, 1))
    with db.write() as session:  # an operator's debit adjustment in January
        txn = ledger.debit(
            session, org, "live", 40 * C, "inference", "manual correction", utc(2026, 1, 25)
        ).transaction_id
    close(db, utc(2026, 2, 1))
    january = invoice_rows(db, org)
    before = available(db, org, utc(2026, 2, 12))

    with clock.frozen_at(utc(2026, 2, 12)):
        response = client.post(
            f"/v1/organizations/{org}/ledger/txn_{txn}/reverse",
            json={"reason": "charged by mistake"},
            headers=operator,
        )
        assert response.status_code == 201, response.text
        [note] = client.get(f"/v1/organizations/{org}/credit-notes", headers=operator).json()[
            "data"
        ]
    assert available(db, org, utc(2026, 2, 12)) == before + 40 * C
    assert (note["source"], note["reference"]) == (
        "ledger_reversal",
        f"journal transaction txn_{txn}",
    )
    assert (note["credits"], note["reason"]) == ("40", "charged by mistake")
    assert note["transaction_id"] == response.json()["id"]
    assert invoice_rows(db, org) == january
    assert_clean(db)


def test_corrections_of_a_month_not_invoiced_yet_and_reversed_grants_issue_none(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Open Month Co")
    subscribe(db, org, "standard", utc(2026, 1, 1))
    use(db, org, "feb-run", 10, utc(2026, 2, 3))
    close(db, utc(2026, 2, 1))
    with db.write() as session:
        grant_lot = ledger.grant(
            session,
            org,
            "live",
            ledger.GrantRequest(
                5 * C, ledger.domain.LotSource.PROMO, "promo", utc(2026, 1, 5), None
            ),
            utc(2026, 1, 5),
        )
    assert grant_lot
    with db.read() as session:
        from creditmeter.ledger.models import JournalTransaction

        grant_txn = session.scalars(
            select(JournalTransaction.id).where(
                JournalTransaction.organization_id == org,
                JournalTransaction.kind == "grant",
                JournalTransaction.created_at == utc(2026, 1, 5),
            )
        ).one()
    with clock.frozen_at(utc(2026, 2, 10)):
        reversed_usage = client.post(
            f"/v1/organizations/{org}/usage/feb-run/reverse", json={"reason": "x"}, headers=operator
        )
        reversed_grant = client.post(
            f"/v1/organizations/{org}/ledger/txn_{grant_txn}/reverse",
            json={"reason": "y"},
            headers=operator,
        )
        assert (reversed_usage.status_code, reversed_grant.status_code) == (200, 201)
        listed = client.get(f"/v1/organizations/{org}/credit-notes", headers=operator).json()
    assert listed["data"] == []
    assert_clean(db)


def test_credit_notes_of_another_organization_are_invisible(
    client: TestClient, db: Database, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    acme, globex = make_org("Acme"), make_org("Globex")
    response = client.get(
        f"/v1/organizations/{globex}/credit-notes", headers=make_key(acme, "org:admin")
    )
    assert response.status_code == 404
    ingest_only = client.get(
        f"/v1/organizations/{acme}/credit-notes", headers=make_key(acme, "org:ingest")
    )
    assert ingest_only.status_code == 403


def test_the_migration_matches_the_credit_note_and_test_clock_models(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from creditmeter.models import metadata

    mine = ("credit_notes", "credit_note_applications", "test_clocks", "test_clock_attachments")
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if any(name in repr(d) for name in mine)] == []


def test_a_voided_invoice_gives_its_credit_note_deduction_to_the_next_one(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Void Co")
    subscribe(db, org, "enterprise", utc(2026, 1, 1), allocation_micros=1000 * C)
    use(db, org, "jan-big", 1250, utc(2026, 1, 20))  # 250 credits of overage: USD 10.00
    close(db, utc(2026, 2, 1))
    with clock.frozen_at(utc(2026, 2, 3)):
        reversed_ = client.post(
            f"/v1/organizations/{org}/usage/jan-big/reverse",
            json={"reason": "runaway job"},
            headers=operator,
        )
        assert reversed_.status_code == 200, reversed_.text
    close(db, utc(2026, 3, 1))  # February's invoice deducts the USD 10.00

    def invoice_of(start: datetime) -> Invoice:
        with db.read() as session:
            return session.scalars(
                select(Invoice).where(Invoice.organization_id == org, Invoice.period_start == start)
            ).one()

    february = invoice_of(utc(2026, 2, 1))
    assert february.total_minor == 149000
    with clock.frozen_at(utc(2026, 3, 2)):
        voided = client.post(
            f"/v1/invoices/{february.id}/void", json={"reason": "contract ended"}, headers=operator
        )
    assert voided.status_code == 200, voided.text
    close(db, utc(2026, 4, 1))  # the note's money was not used: March's invoice deducts it
    assert invoice_of(utc(2026, 3, 1)).total_minor == 149000
    assert invoice_of(utc(2026, 2, 1)).status == "void"
    assert_clean(db)
