"""Invoices: one per organization, environment and closed month, issued on the 1st of the next.

- **Lines.** Every plan allocation of the month (or earlier) that no invoice has billed yet: a full
  cycle is a ``plan_fee`` line, a first subscription or an upgrade inside the month a ``proration``
  (``PlanAllocation.invoice_id`` is set in the same transaction, so a fee is billed once). Then the
  overage a plan with ``overage_in_arrears`` ran up, at its price per credit. The total is the sum of
  the lines, in integer minor units of the subscription's currency.
- **Numbers** are gapless per operator, year and environment (``INV-2026-000001``,
  ``INV-TEST-2026-000001``): the number is taken from the series' counter row in the invoice's own
  transaction, near its end. A rollback gives the number back; the row lock makes concurrent
  invoices take consecutive numbers.
- **Status**: ``open`` until paid; an invoice with nothing to pay is ``paid`` when issued.
  ``paid`` after a charge and ``past_due`` after the last retry are set by ``billing.dunning``.
- An invoice is never edited after it is issued (only its status changes); a later correction is a
  credit note against it.

Functions take the caller's ``Session`` and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from creditmeter.billing import domain, statements
from creditmeter.billing.domain import Catalog, Period, Share
from creditmeter.billing.models import (
    CreditNote,
    CycleClose,
    Invoice,
    InvoiceCounter,
    InvoiceLine,
    PlanAllocation,
    Subscription,
    UsageStatementLine,
)
from creditmeter.errors import NotFound
from creditmeter.kit.credits import format_credits
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id
from creditmeter.kit.pagination import decode_cursor
from creditmeter.orgs import service as orgs

OPEN = "open"
PAID = "paid"
PAST_DUE = "past_due"
VOID = "void"


class InvoiceNotFound(NotFound):
    code = "invoice_not_found"


@dataclass(frozen=True)
class InvoiceView:
    """An invoice with its lines and the usage statement of its month."""

    invoice: Invoice
    lines: list[InvoiceLine]
    usage: list[UsageStatementLine]
    credit_notes: list[CreditNote] = field(default_factory=list)


def issue(
    session: Session,
    catalog: Catalog,
    sub: Subscription,
    close: CycleClose,
    of: Period,
    now: datetime,
) -> Invoice:
    """Create the invoice of ``of`` for the subscription's organization (the cycle close's invoice
    step; the caller holds the organization's lock). Issued at the end of ``of``."""
    organization = orgs.get_organization(session, sub.organization_id)
    currency = domain.Terms.from_json(sub.terms).currency
    invoice_id = new_id("inv")
    lines = _allocation_lines(session, catalog, sub, of, invoice_id)
    if close.overage_micros > 0 and close.overage_price_micros is not None:
        lines.append(_overage_line(close, currency))
    from creditmeter.billing import credit_notes  # it numbers its notes with next_number

    owed = sum(line["amount_minor"] for line in lines)
    deducted = credit_notes.deductions(
        session, sub.organization_id, sub.environment, owed, currency
    )
    lines += [d.line() for d in deducted]
    total = sum(line["amount_minor"] for line in lines)
    issued_at = of.end
    series = domain.invoice_series(
        catalog.invoicing.number_prefix, sub.environment, of.end.astimezone(catalog.zone).year
    )
    invoice = Invoice(
        id=invoice_id,
        number=domain.invoice_number(series, next_number(session, series)),
        organization_id=sub.organization_id,
        environment=sub.environment,
        subscription_id=sub.id,
        period_start=of.start,
        period_end=of.end,
        currency=currency,
        subtotal_minor=total,
        total_minor=total,
        status=OPEN if total > 0 else PAID,
        customer={
            "id": organization.id,
            "name": organization.name,
            "external_id": organization.external_id,
        },
        seller=catalog.seller.to_json(),
        issued_at=issued_at,
        due_at=issued_at + timedelta(days=catalog.invoicing.payment_terms_days),
        paid_at=None if total > 0 else issued_at,
        created_at=now,
        updated_at=now,
    )
    session.add(invoice)
    session.flush()
    credit_notes.record(session, invoice_id, deducted, now)
    if lines:
        session.execute(
            insert(InvoiceLine),
            [{"invoice_id": invoice_id, "position": i, **line} for i, line in enumerate(lines, 1)],
        )
    return invoice


def _allocation_lines(
    session: Session, catalog: Catalog, sub: Subscription, of: Period, invoice_id: str
) -> list[dict[str, Any]]:
    rows = list(
        session.scalars(
            select(PlanAllocation)
            .where(
                PlanAllocation.organization_id == sub.organization_id,
                PlanAllocation.environment == sub.environment,
                PlanAllocation.period_start < of.end,
                PlanAllocation.invoice_id.is_(None),
            )
            .order_by(PlanAllocation.period_start, PlanAllocation.sequence)
        )
    )
    lines: list[dict[str, Any]] = []
    for row in rows:
        share = Share(row.share_remaining_us, row.share_total_us)
        allocated_for = domain.period_of(row.period_start, catalog.zone)
        start = row.period_end - timedelta(microseconds=row.share_remaining_us)
        plan_name = str(row.terms.get("plan_name", row.plan))
        lines.append(
            {
                "kind": domain.allocation_line_kind(share),
                "description": domain.describe_allocation(
                    row.kind, plan_name, allocated_for, start, catalog.zone
                )
                + f": {domain.group_digits(format_credits(row.credits_micros))} credits",
                "quantity": "1",
                "unit_price": domain.format_money(row.fee_minor, row.currency),
                "amount_minor": row.fee_minor,
                "credits_micros": row.credits_micros,
                "service_start": start,
                "service_end": row.period_end,
                "plan_allocation_id": row.id,
            }
        )
        row.invoice_id = invoice_id
    return lines


def _overage_line(close: CycleClose, currency: str) -> dict[str, Any]:
    price = close.overage_price_micros or 0
    return {
        "kind": "overage",
        "description": "Usage beyond the credits (overage, billed in arrears)",
        "quantity": format_credits(close.overage_micros),
        "unit_price": domain.format_price(price),
        "amount_minor": domain.purchase_price_minor(close.overage_micros, price, currency),
        "credits_micros": close.overage_micros,
        "service_start": close.period_start,
        "service_end": close.period_end,
        "plan_allocation_id": None,
    }


def next_number(session: Session, series: str) -> int:
    """Take the next number of ``series`` in the caller's transaction: gapless (a rollback returns
    it) and unique (the counter row stays locked until the transaction ends)."""
    dialect = session.get_bind().dialect.name
    ensure = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(InvoiceCounter)
    session.execute(
        ensure.values(series=series, last_number=0).on_conflict_do_nothing(
            index_elements=["series"]
        )
    )
    number = session.execute(
        update(InvoiceCounter)
        .where(InvoiceCounter.series == series)
        .values(last_number=InvoiceCounter.last_number + 1)
        .returning(InvoiceCounter.last_number)
    ).scalar_one()
    return int(number)


def charge(db: Database, invoice_id: str, now: datetime) -> None:
    """The cycle close's charge step (its default hook), called outside any transaction for an open
    invoice: attempt 1 with the default payment method through the provider configured in the
    environment (``CREDITMETER_PAYMENT_PROVIDER``), idempotent by the invoice id (see
    ``billing.dunning``). The worker passes its own provider (``dunning.charger``)."""
    from creditmeter.billing import dunning
    from creditmeter.billing.payments import build_provider
    from creditmeter.config import Settings

    settings = Settings.from_env()
    provider = build_provider(settings.payment_provider, db, settings.stripe_secret_key)
    dunning.charge_at_close(db, provider, invoice_id, now)


def get(session: Session, invoice_id: str) -> InvoiceView:
    invoice = session.get(Invoice, invoice_id) if _storable(invoice_id) else None
    if invoice is None:
        raise InvoiceNotFound(f"invoice {invoice_id} not found")
    return view(session, invoice)


def view(session: Session, invoice: Invoice) -> InvoiceView:
    lines = list(
        session.scalars(
            select(InvoiceLine)
            .where(InvoiceLine.invoice_id == invoice.id)
            .order_by(InvoiceLine.position)
        )
    )
    usage = statements.lines(
        session, invoice.organization_id, invoice.environment, invoice.period_start
    )
    notes = session.scalars(
        select(CreditNote).where(CreditNote.invoice_id == invoice.id).order_by(CreditNote.id)
    )
    return InvoiceView(invoice, lines, usage, list(notes))


def list_for(
    session: Session, organization_id: str, environment: str, cursor: str | None, limit: int
) -> tuple[list[Invoice], str | None]:
    """One page of the organization's invoices in the environment, oldest first (ids sort by
    creation), and the id to continue after."""
    orgs.get_organization(session, organization_id)
    query = (
        select(Invoice)
        .where(Invoice.organization_id == organization_id, Invoice.environment == environment)
        .order_by(Invoice.id)
        .limit(limit + 1)
    )
    after = decode_cursor(cursor, "inv_")
    if after:
        query = query.where(Invoice.id > after)
    rows = list(session.scalars(query))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def _storable(value: str) -> bool:
    return 0 < len(value) <= 40 and value.isprintable() and "\x00" not in value
