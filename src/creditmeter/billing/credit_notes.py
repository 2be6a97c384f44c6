"""Credit notes: corrections of a period that was already invoiced.

A correction (a reversed usage event, an operator's reversal of a journal transaction) re-credits
the organization *now*, through the ledger, as it always does. When the original happened in a
period whose invoice was already issued, a credit note is also issued against that invoice in the
same transaction; the invoice itself is never edited.

- **Which invoice**: the one of the organization, environment and period that contains the original
  (a usage event's ``occurred_at``, a journal transaction's ``created_at``). No invoice yet (the
  period is still open, or was never closed): no credit note, the statement of that period will
  simply not count the reversed usage.
- **Credits**: what the correction gave back to the organization's lots and arrears. A reversal that
  takes credits away (a reversed grant) is not a credit note.
- **Money** (``amount_minor``): only when the invoice billed money for the credits, i.e. overage of a
  plan with ``overage_in_arrears``. The part of the original that ran into arrears is taken to be
  the part billed as overage (``billed_micros``), up to the overage of that invoice not yet
  credited by earlier notes, at the invoice's overage price, rounded once, half to even, and never
  more than the overage line minus earlier notes. Otherwise 0: prepaid credits are corrected in
  credits.
- **Each credit comes back once, in the form it was paid**: credits paid from prepaid lots come back
  as credits; the credits billed as overage come back as money only. The ledger's correction gave
  every credit back, so for ``billed_micros`` a second journal transaction in the same database
  transaction (kind ``credit_note``, naming the note) takes them off again: from the zero-cost
  adjustment lot the correction put the paid-off arrears in, and for the rest by restoring the
  arrears the correction had paid down. Its counter-account is ``issuance:adjustment``, the account
  that issued the overage settlement: money refunded, that issuance is withdrawn.
- **Numbers** are gapless per operator, year of issue and environment (``CN-2026-000001``,
  ``CN-TEST-2026-000001``), from the same counter table as invoice numbers.
- **Later invoices**: a note with money is deducted as a ``credit_note`` line (negative) on the next
  invoices of the organization, up to what each owes; what remains waits for the next one.

Functions take the caller's ``Session`` and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from creditmeter.billing import domain, invoices
from creditmeter.billing.models import (
    CreditNote,
    CreditNoteApplication,
    CycleClose,
    Invoice,
    InvoiceLine,
)
from creditmeter.kit.credits import format_credits
from creditmeter.kit.ids import new_id
from creditmeter.kit.pagination import decode_cursor
from creditmeter.ledger import service as ledger
from creditmeter.ledger.consumption import Allocation
from creditmeter.ledger.domain import Account, LotSource, Posting
from creditmeter.ledger.models import JournalTransaction, Lot
from creditmeter.ledger.models import Posting as PostingRow
from creditmeter.ledger.service import TransactionDraft, transaction_postings
from creditmeter.metering.models import UsageEvent
from creditmeter.orgs import service as orgs

PREFIX = "CN"
USAGE_REVERSAL = "usage_reversal"
LEDGER_REVERSAL = "ledger_reversal"
#: The journal kind of the transaction that takes back the credits a note refunds as money.
CLAWBACK_KIND = "credit_note"


@dataclass(frozen=True)
class Correction:
    """A correction already posted to the ledger: ``credits_micros`` came back to the organization
    by ``transaction_id``; ``arrears_micros`` of the original had run into arrears."""

    organization_id: str
    environment: str
    occurred_at: datetime
    credits_micros: int
    arrears_micros: int
    transaction_id: int
    source: str
    reference: str
    reason: str


def for_usage_reversal(
    session: Session,
    organization_id: str,
    environment: str,
    event_id: str,
    transaction_id: int,
    reason: str,
    now: datetime,
) -> CreditNote | None:
    """The credit note of a usage event just reversed by ``transaction_id``, if its month was
    already invoiced."""
    event = session.scalars(
        select(UsageEvent).where(
            UsageEvent.organization_id == organization_id,
            UsageEvent.environment == environment,
            UsageEvent.event_id == event_id,
        )
    ).one()
    correction = Correction(
        organization_id,
        environment,
        event.occurred_at,
        event.credits_micros,
        Allocation.from_json(event.allocation).arrears_micros,
        transaction_id,
        USAGE_REVERSAL,
        f"usage event {event_id}",
        reason,
    )
    return issue(session, correction, now)


def for_ledger_reversal(
    session: Session, organization_id: str, reversal_id: int, now: datetime
) -> CreditNote | None:
    """The credit note of a journal reversal just posted, if it gave credits back and the original
    fell in a period already invoiced."""
    reversal = session.get(JournalTransaction, reversal_id)
    if reversal is None or reversal.reverses_id is None:
        return None
    original = session.get(JournalTransaction, reversal.reverses_id)
    if original is None:  # pragma: no cover - the foreign key forbids it
        return None
    given = sum(
        p.amount_micros
        for p in transaction_postings(session, reversal_id)
        if p.account in (Account.LOT, Account.ARREARS)
    )
    arrears = -sum(
        p.amount_micros
        for p in transaction_postings(session, original.id)
        if p.account == Account.ARREARS and p.amount_micros < 0
    )
    correction = Correction(
        organization_id,
        reversal.environment,
        original.created_at,
        given,
        arrears,
        reversal_id,
        LEDGER_REVERSAL,
        f"journal transaction txn_{original.id}",
        reversal.description,
    )
    return issue(session, correction, now)


def issue(session: Session, correction: Correction, now: datetime) -> CreditNote | None:
    """Issue the credit note of ``correction`` against the invoice of the period of its original,
    or nothing when that period has no invoice or no credits came back."""
    if correction.credits_micros <= 0:
        return None
    invoice = session.scalars(
        select(Invoice).where(
            Invoice.organization_id == correction.organization_id,
            Invoice.environment == correction.environment,
            Invoice.period_start <= correction.occurred_at,
            Invoice.period_end > correction.occurred_at,
        )
    ).first()
    if invoice is None:
        return None
    billed, amount = _billed_money(session, invoice, correction)
    from creditmeter.billing.plans import load_catalog

    zone = load_catalog().zone
    series = domain.invoice_series(PREFIX, invoice.environment, now.astimezone(zone).year)
    note = CreditNote(
        id=new_id("cn"),
        number=domain.invoice_number(series, invoices.next_number(session, series)),
        organization_id=invoice.organization_id,
        environment=invoice.environment,
        invoice_id=invoice.id,
        source=correction.source,
        reference=correction.reference[:200],
        reason=correction.reason[:500],
        credits_micros=correction.credits_micros,
        billed_micros=billed,
        amount_minor=amount,
        currency=invoice.currency,
        transaction_id=correction.transaction_id,
        created_at=now,
    )
    session.add(note)
    session.flush()
    if billed:
        note.clawback_transaction_id = _take_back(session, note, invoice, now)
        session.flush()
    return note


def _take_back(session: Session, note: CreditNote, invoice: Invoice, now: datetime) -> int:
    """Take off again the ``billed_micros`` the correction gave back as credits: first from the
    zero-cost adjustment lots that correction created (where paid-off arrears come back), then by
    restoring the arrears it paid down. Returns the journal transaction's id."""
    balance = ledger.lock_balance(session, note.organization_id, note.environment)
    left = note.billed_micros
    postings: list[Posting] = []
    for lot_id, remaining in _lots_created_by(session, note.transaction_id):
        take = min(left, remaining)
        if take:
            postings.append(Posting(Account.LOT, -take, lot_id))
            left -= take
    if left:
        postings.append(Posting(Account.ARREARS, -left))
    postings.append(Posting(Account.issuance(LotSource.ADJUSTMENT.value), note.billed_micros))
    money = domain.format_money(note.amount_minor, note.currency)
    description = (
        f"credit note {note.number}: {format_credits(note.billed_micros)} credits of "
        f"{note.reference}, billed as overage on {invoice.number}, refunded as money "
        f"({note.currency} {money}), not as credits"
    )
    draft = TransactionDraft(CLAWBACK_KIND, description, postings)
    txn_id = ledger.post(session, balance, [draft], now)[0]
    ledger.settle_arrears(session, balance, now)
    return txn_id


def _lots_created_by(session: Session, transaction_id: int) -> list[tuple[str, int]]:
    """(lot, credits left) of the zero-cost adjustment lots whose first posting is this
    transaction, newest posting first."""
    first = (
        select(PostingRow.lot_id, func.min(PostingRow.transaction_id).label("first"))
        .where(
            PostingRow.lot_id.in_(
                select(PostingRow.lot_id).where(
                    PostingRow.transaction_id == transaction_id, PostingRow.amount_micros > 0
                )
            )
        )
        .group_by(PostingRow.lot_id)
        .subquery()
    )
    rows = session.execute(
        select(Lot.id, Lot.remaining_micros)
        .join(first, first.c.lot_id == Lot.id)
        .where(
            first.c.first == transaction_id,
            Lot.source == LotSource.ADJUSTMENT.value,
            Lot.cost_basis_micros == 0,
            Lot.remaining_micros > 0,
        )
        .order_by(Lot.id.desc())
    ).all()
    return [(r.id, int(r.remaining_micros)) for r in rows]


def _billed_money(session: Session, invoice: Invoice, correction: Correction) -> tuple[int, int]:
    """(credits the invoice billed money for, their money) of this correction: its arrears part,
    up to the invoice's overage not yet credited."""
    if correction.arrears_micros <= 0:
        return 0, 0
    close = session.scalars(select(CycleClose).where(CycleClose.invoice_id == invoice.id)).first()
    line_amount = session.scalar(
        select(func.sum(InvoiceLine.amount_minor)).where(
            InvoiceLine.invoice_id == invoice.id, InvoiceLine.kind == "overage"
        )
    )
    if close is None or not close.overage_micros or not close.overage_price_micros:
        return 0, 0
    credited_micros, credited_minor = session.execute(
        select(
            func.coalesce(func.sum(CreditNote.billed_micros), 0),
            func.coalesce(func.sum(CreditNote.amount_minor), 0),
        ).where(CreditNote.invoice_id == invoice.id)
    ).one()
    billed = min(correction.arrears_micros, close.overage_micros - int(credited_micros))
    if billed <= 0:
        return 0, 0
    amount = domain.purchase_price_minor(billed, close.overage_price_micros, invoice.currency)
    return billed, max(0, min(amount, int(line_amount or 0) - int(credited_minor)))


@dataclass(frozen=True)
class Deduction:
    """Money of a credit note deducted on a new invoice."""

    note: CreditNote
    amount_minor: int

    def line(self) -> dict[str, Any]:
        """The invoice's ``credit_note`` line (negative)."""
        return {
            "kind": "credit_note",
            "description": f"Credit note {self.note.number}: {self.note.reason}"[:300],
            "quantity": "1",
            "unit_price": domain.format_money(-self.amount_minor, self.note.currency),
            "amount_minor": -self.amount_minor,
            "credits_micros": None,
            "service_start": None,
            "service_end": None,
            "plan_allocation_id": None,
        }


def deductions(
    session: Session, organization_id: str, environment: str, owed_minor: int, currency: str
) -> list[Deduction]:
    """What a new invoice that owes ``owed_minor`` deducts: the money of earlier credit notes not
    deducted yet, oldest first, each up to what the invoice still owes (its total never goes below
    zero; the rest waits for the next invoice)."""
    applied = (
        select(
            CreditNoteApplication.credit_note_id,
            func.sum(CreditNoteApplication.amount_minor).label("applied"),
        )
        .group_by(CreditNoteApplication.credit_note_id)
        .subquery()
    )
    rows = session.execute(
        select(CreditNote, func.coalesce(applied.c.applied, 0))
        .outerjoin(applied, applied.c.credit_note_id == CreditNote.id)
        .where(
            CreditNote.organization_id == organization_id,
            CreditNote.environment == environment,
            CreditNote.currency == currency,
            CreditNote.amount_minor > 0,
        )
        .order_by(CreditNote.number)
    ).all()
    found = []
    for note, done in rows:
        take = min(note.amount_minor - int(done), owed_minor)
        if take > 0:
            owed_minor -= take
            found.append(Deduction(note, take))
    return found


def record(session: Session, invoice_id: str, made: list[Deduction], now: datetime) -> None:
    """Record the deductions an invoice made (after the invoice row is written)."""
    for d in made:
        session.add(
            CreditNoteApplication(
                credit_note_id=d.note.id,
                invoice_id=invoice_id,
                amount_minor=d.amount_minor,
                created_at=now,
            )
        )
    session.flush()


def list_for(
    session: Session, organization_id: str, environment: str, cursor: str | None, limit: int
) -> tuple[list[CreditNote], str | None]:
    """One page of the organization's credit notes in the environment, oldest first."""
    orgs.get_organization(session, organization_id)
    query = (
        select(CreditNote)
        .where(
            CreditNote.organization_id == organization_id,
            CreditNote.environment == environment,
        )
        .order_by(CreditNote.id)
        .limit(limit + 1)
    )
    after = decode_cursor(cursor, "cn_")
    if after:
        query = query.where(CreditNote.id > after)
    rows = list(session.scalars(query))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)
