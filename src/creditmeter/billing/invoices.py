"""Invoices: one per organization, environment and closed month, issued on the 1st of the next.

- **Lines.** Every plan allocation of the month (or earlier) that no invoice has billed yet: a full
  cycle is a ``plan_fee`` line, a first subscription or an upgrade inside the month a ``proration``
  (``PlanAllocation.invoice_id`` is set in the same transaction, so a fee is billed once). Then a
  ``package`` line per purchase on account made before the end of the month and not billed yet
  (``Purchase.invoice_id`` set in the same transaction, so it is billed once). Then the overage a
  plan with ``overage_in_arrears`` ran up, at its price per credit, and last the credit notes
  deducted. The total is the sum of the lines, in integer minor units of the subscription's
  currency.
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

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from creditmeter.billing import domain, notices, statements
from creditmeter.billing.domain import Catalog, Period, Share
from creditmeter.billing.models import (
    CreditNote,
    Invoice,
    InvoiceCounter,
    InvoiceLine,
    PlanAllocation,
    UsageStatementLine,
)
from creditmeter.billing.payments.models import Purchase
from creditmeter.errors import NotFound
from creditmeter.kit.credits import format_credits
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id
from creditmeter.kit.pagination import decode_cursor
from creditmeter.ledger.models import JournalTransaction, Posting
from creditmeter.orgs import service as orgs
from creditmeter.orgs.models import Organization

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


@dataclass(frozen=True)
class ToIssue:
    """What the invoice of one closed month needs from its cycle close and subscription."""

    subscription_id: str
    organization_id: str
    environment: str
    currency: str
    overage_micros: int = 0
    overage_price_micros: int | None = None


def issue_many(
    session: Session, catalog: Catalog, closes: Sequence[ToIssue], of: Period, now: datetime
) -> dict[str, str]:
    """Create the invoices of ``of`` (the cycle close's invoice step, for several organizations
    whose locks the caller holds), issued at the end of ``of``: the customers, the unbilled
    allocations, the unbilled purchases on account and the credit notes to deduct read with one
    query each, the numbers taken as one range per series (gapless, in organization id order), the
    invoices, lines, allocation marks and purchase marks written with one statement each. Lines:
    allocations, packages, overage, then credit-note deductions (against what the others owe).
    Publishes ``invoice.issued`` for each (and ``invoice.paid`` for one with nothing to pay: one
    insert per event, ``billing.notices``). Returns the invoice id per organization."""
    ordered = sorted(closes, key=lambda c: (c.organization_id, c.environment))
    if not ordered:
        return {}
    orgs_ = [c.organization_id for c in ordered]
    customers = _customers(session, orgs_)
    allocations = _unbilled(session, orgs_, of)
    on_account = _unbilled_purchases(session, orgs_, of)
    noted = _with_credit_notes(session, orgs_)
    from creditmeter.billing import credit_notes  # it numbers its notes with next_number

    invoices_: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    billed: list[dict[str, Any]] = []
    sold: list[dict[str, Any]] = []
    deducted_by: list[tuple[str, list[credit_notes.Deduction]]] = []
    periods: dict[datetime, Period] = {}
    for close in ordered:
        key = (close.organization_id, close.environment)
        invoice_id = new_id("inv")
        mine = _allocation_lines(catalog, allocations.get(key, []), periods)
        billed += [{"b_id": line["plan_allocation_id"], "b_invoice": invoice_id} for line in mine]
        bought = on_account.get(key, [])
        mine += _package_lines(catalog, bought)
        sold += [{"p_id": row.id, "p_invoice": invoice_id} for row in bought]
        if close.overage_micros > 0 and close.overage_price_micros is not None:
            mine.append(_overage_line(close, of))
        if key in noted:
            owed = sum(line["amount_minor"] for line in mine)
            deducted = credit_notes.deductions(
                session, close.organization_id, close.environment, owed, close.currency
            )
            mine += [d.line() for d in deducted]
            deducted_by.append((invoice_id, deducted))
        invoices_.append(_invoice_row(catalog, close, customers, mine, invoice_id, of, now))
        lines += [
            {"invoice_id": invoice_id, "position": i, **line} for i, line in enumerate(mine, 1)
        ]
    _number(session, catalog, invoices_, of)
    session.connection().execute(insert(_INVOICES), invoices_)
    for invoice_id, deducted in deducted_by:
        credit_notes.record(session, invoice_id, deducted, now)
    if lines:
        session.connection().execute(insert(_LINES), lines)
    if billed:
        session.connection().execute(_MARK_BILLED, billed)
    if sold:
        session.connection().execute(_MARK_PURCHASES_BILLED, sold)
    notices.invoices_issued(session, invoices_)
    return {row["organization_id"]: row["id"] for row in invoices_}


_ALLOCATIONS = cast(Table, PlanAllocation.__table__)
_INVOICES = cast(Table, Invoice.__table__)
_LINES = cast(Table, InvoiceLine.__table__)
_MARK_BILLED = (
    update(_ALLOCATIONS)
    .where(_ALLOCATIONS.c.id == bindparam("b_id"))
    .values(invoice_id=bindparam("b_invoice"))
)


def _invoice_row(
    catalog: Catalog,
    close: ToIssue,
    customers: dict[str, dict[str, Any]],
    lines: list[dict[str, Any]],
    invoice_id: str,
    of: Period,
    now: datetime,
) -> dict[str, Any]:
    total = sum(line["amount_minor"] for line in lines)
    issued_at = of.end
    return {
        "id": invoice_id,
        "number": "",  # set by _number
        "organization_id": close.organization_id,
        "environment": close.environment,
        "subscription_id": close.subscription_id,
        "period_start": of.start,
        "period_end": of.end,
        "currency": close.currency,
        "subtotal_minor": total,
        "total_minor": total,
        "status": OPEN if total > 0 else PAID,
        "customer": customers[close.organization_id],
        "seller": catalog.seller.to_json(),
        "issued_at": issued_at,
        "due_at": issued_at + timedelta(days=catalog.invoicing.payment_terms_days),
        "paid_at": None if total > 0 else issued_at,
        "voided_at": None,
        "void_reason": None,
        "created_at": now,
        "updated_at": now,
    }


def _number(session: Session, catalog: Catalog, rows: list[dict[str, Any]], of: Period) -> None:
    """Number the invoices (in order), one range of each series taken from its counter row."""
    year = of.end.astimezone(catalog.zone).year
    by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        prefix = catalog.invoicing.number_prefix
        by_series[domain.invoice_series(prefix, row["environment"], year)].append(row)
    for series in sorted(by_series):
        mine = by_series[series]
        first = next_number(session, series, len(mine))
        for offset, row in enumerate(mine):
            row["number"] = domain.invoice_number(series, first + offset)


def _customers(session: Session, organization_ids: list[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for start in range(0, len(organization_ids), 500):
        rows = session.execute(
            select(Organization.id, Organization.name, Organization.external_id).where(
                Organization.id.in_(organization_ids[start : start + 500])
            )
        )
        for org_id, name, external_id in rows:
            found[org_id] = {"id": org_id, "name": name, "external_id": external_id}
    missing = set(organization_ids) - set(found)
    if missing:
        raise NotFound(f"organization {min(missing)} not found")
    return found


def _unbilled(
    session: Session, organization_ids: list[str], of: Period
) -> dict[tuple[str, str], list[Any]]:
    """The allocations of ``of`` or earlier that no invoice billed yet, per organization and
    environment, by period and sequence."""
    found: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for start in range(0, len(organization_ids), 500):
        rows = session.execute(
            select(_ALLOCATIONS)
            .where(
                _ALLOCATIONS.c.organization_id.in_(organization_ids[start : start + 500]),
                _ALLOCATIONS.c.period_start < of.end,
                _ALLOCATIONS.c.invoice_id.is_(None),
            )
            .order_by(_ALLOCATIONS.c.period_start, _ALLOCATIONS.c.sequence)
        )
        for row in rows:
            found[(row.organization_id, row.environment)].append(row)
    return found


def _with_credit_notes(session: Session, organization_ids: list[str]) -> set[tuple[str, str]]:
    """The organizations (and environments) with a credit note that may still be deducted."""
    found: set[tuple[str, str]] = set()
    for start in range(0, len(organization_ids), 500):
        rows = session.execute(
            select(CreditNote.organization_id, CreditNote.environment)
            .where(
                CreditNote.organization_id.in_(organization_ids[start : start + 500]),
                CreditNote.amount_minor > 0,
            )
            .distinct()
        )
        found.update((org, env) for org, env in rows)
    return found


_PURCHASES = cast(Table, Purchase.__table__)
_MARK_PURCHASES_BILLED = (
    update(_PURCHASES)
    .where(_PURCHASES.c.id == bindparam("p_id"))
    .values(invoice_id=bindparam("p_invoice"))
)


def _grant_reversed_at() -> Any:
    """When the operator reversed the grant of a purchase's lot (a correction before invoicing), or
    null: a correlated subquery of the purchase row."""
    grant, reversal = aliased(JournalTransaction), aliased(JournalTransaction)
    return (
        select(reversal.created_at)
        .join(grant, reversal.reverses_id == grant.id)
        .join(Posting, Posting.transaction_id == grant.id)
        .where(grant.kind == "grant", Posting.lot_id == _PURCHASES.c.lot_id)
        .limit(1)
        .scalar_subquery()
    )


def _unbilled_purchases(
    session: Session, organization_ids: list[str], of: Period
) -> dict[tuple[str, str], list[Any]]:
    """The purchases on account made before the end of ``of`` that no invoice billed yet, per
    organization and environment, oldest first, each with when its grant was reversed (if it
    was): one query per 500 organizations."""
    found: dict[tuple[str, str], list[Any]] = defaultdict(list)
    p = _PURCHASES.c
    reversed_at = _grant_reversed_at().label("reversed_at")
    for start in range(0, len(organization_ids), 500):
        rows = session.execute(
            select(_PURCHASES, reversed_at)
            .where(
                p.organization_id.in_(organization_ids[start : start + 500]),
                p.billing == "on_account",
                p.invoice_id.is_(None),
                p.status == "succeeded",
                p.created_at < of.end,
            )
            .order_by(p.created_at, p.id)
        )
        for row in rows:
            found[(row.organization_id, row.environment)].append(row)
    return found


def _package_lines(catalog: Catalog, rows: list[Any]) -> list[dict[str, Any]]:
    """One ``package`` line per purchase on account: quantity 1 at the purchase's amount, or 0 (and
    nothing owed) when the operator reversed its grant before this invoice."""
    lines = []
    for row in rows:
        package = catalog.packages.get(row.package) if row.package else None
        name = package.name if package else (f"{row.package} package" if row.package else None)
        description = domain.describe_package(
            name, row.credits_micros, row.created_at, catalog.zone
        )
        billed = row.reversed_at is None
        if not billed:
            description += (
                f"; credits taken back on {domain.describe_day(row.reversed_at, catalog.zone)}, "
                "not billed"
            )
        lines.append(
            {
                "kind": "package",
                "description": description,
                "quantity": "1" if billed else "0",
                "unit_price": domain.format_money(row.amount_minor, row.currency),
                "amount_minor": row.amount_minor if billed else 0,
                "credits_micros": row.credits_micros if billed else 0,
                "service_start": row.created_at,  # the credits bought, valid until they expire
                "service_end": row.expires_at,
                "plan_allocation_id": None,
            }
        )
    return lines


def _allocation_lines(
    catalog: Catalog, rows: list[Any], periods: dict[datetime, Period]
) -> list[dict[str, Any]]:
    """The lines of these allocations (``periods``: the periods already worked out, by start)."""
    lines: list[dict[str, Any]] = []
    for row in rows:
        share = Share(row.share_remaining_us, row.share_total_us)
        allocated_for = periods.get(row.period_start)
        if allocated_for is None:
            allocated_for = periods[row.period_start] = domain.period_of(
                row.period_start, catalog.zone
            )
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
    return lines


def _overage_line(close: ToIssue, of: Period) -> dict[str, Any]:
    price = close.overage_price_micros or 0
    return {
        "kind": "overage",
        "description": "Usage beyond the credits (overage, billed in arrears)",
        "quantity": format_credits(close.overage_micros),
        "unit_price": domain.format_price(price),
        "amount_minor": domain.purchase_price_minor(close.overage_micros, price, close.currency),
        "credits_micros": close.overage_micros,
        "service_start": of.start,
        "service_end": of.end,
        "plan_allocation_id": None,
    }


def next_number(session: Session, series: str, count: int = 1) -> int:
    """Take the next ``count`` numbers of ``series`` in the caller's transaction and return the
    first (they run ``first … first + count - 1``): gapless (a rollback returns them) and unique
    (the counter row stays locked until the transaction ends)."""
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
        .values(last_number=InvoiceCounter.last_number + count)
        .returning(InvoiceCounter.last_number)
    ).scalar_one()
    return int(number) - count + 1


def charge(db: Database, invoice_id: str, now: datetime) -> None:
    """The cycle close's charge step (its default hook), called outside any transaction for an open
    invoice: attempt 1 with the default payment method through the provider configured in the
    environment (``CREDITMETER_PAYMENT_PROVIDER``), idempotent by the invoice id (see
    ``billing.dunning``). The worker passes its own provider (``dunning.charger``). A run of
    closes given this hook charges through one ``close_charger`` instead (the provider built once
    per run, the invoices of a chunk charged together)."""
    failures = close_charger().many(db, [invoice_id], now)
    if failures:
        raise failures[invoice_id]


def close_charger() -> Any:
    """A ``dunning.charger`` for the provider configured in the environment, built on first use."""
    from creditmeter.billing import dunning
    from creditmeter.billing.payments import build_provider
    from creditmeter.config import Settings

    def build(db: Database) -> Any:
        settings = Settings.from_env()
        return build_provider(settings.payment_provider, db, settings.stripe_secret_key)

    return dunning.LazyCharger(build)


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
