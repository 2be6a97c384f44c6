"""The credit note as a PDF a person would accept: seller, customer, number, date of issue, the
invoice it corrects (number, date, billing period), the reason and what was corrected, the credits
returned and the money credited, and where that money was deducted so far.

Credits the invoice billed as overage (``billed_micros``) come back as money only (the note's
``amount``); the rest of the credits the correction covers come back as credits.

The parties are the corrected invoice's (copied onto it when it was issued): a credit note corrects
that invoice between the same seller and customer. Same page style as the invoice
(``billing.pdf``). Dates are calendar dates in the billing time zone; amounts are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta, tzinfo

from sqlalchemy.orm import Session

from creditmeter.billing import pdf
from creditmeter.billing.models import CreditNote, Invoice
from creditmeter.errors import NotFound

_SOURCES = {"usage_reversal": "Reversal of usage", "ledger_reversal": "Reversal of a ledger entry"}


class CreditNoteNotFound(NotFound):
    code = "credit_note_not_found"


@dataclass(frozen=True)
class CreditNoteDocument:
    """A credit note, the invoice it corrects and the deductions of its money so far."""

    note: CreditNote
    invoice: Invoice
    deductions: list[pdf.Deduction]


def document(session: Session, credit_note_id: str) -> CreditNoteDocument:
    """The credit note ``credit_note_id`` with its invoice and deductions (404 when unknown)."""
    storable = 0 < len(credit_note_id) <= 40 and credit_note_id.isprintable()
    note = session.get(CreditNote, credit_note_id) if storable else None
    if note is None:
        raise CreditNoteNotFound(f"credit note {credit_note_id} not found")
    invoice = session.get(Invoice, note.invoice_id)
    assert invoice is not None  # the foreign key guarantees it
    return CreditNoteDocument(note, invoice, pdf.deductions(session, note_ids=[note.id]))


def render(doc: CreditNoteDocument, zone: tzinfo) -> bytes:
    """The PDF of the credit note (A4)."""
    note, inv = doc.note, doc.invoice
    seller = inv.seller
    page = pdf.Document(
        f"{seller.get('name', '')} - credit note {note.number} - issued "
        f"{pdf.date_text(note.created_at, zone)}"
    )
    page.set_title(f"Credit note {note.number}")
    page.set_author(str(seller.get("name", "")))
    page.set_creator("creditmeter")
    page.set_creation_date(note.created_at)
    page.add_page()
    _header(page, doc)
    pdf.parties(page, seller, inv.customer, customer_title="Credit to")
    _details(page, doc, zone)
    _amounts(page, doc)
    _settlement(page, doc, zone)
    return bytes(page.output())


def _header(page: pdf.Document, doc: CreditNoteDocument) -> None:
    top = page.get_y()
    page.font(22, bold=True)
    page.cell(100, 10, "Credit note")
    page.set_xy(page.w - page.r_margin - 70, top)
    page.font(10, bold=True)
    page.cell(70, 5, page.text_of(doc.note.number), align="R", new_x="LEFT", new_y="NEXT")
    page.font(9, color=pdf.MUTED)
    page.cell(70, 6, page.text_of(f"Corrects invoice {doc.invoice.number}"), align="R")
    page.set_y(top + 16)
    page.set_draw_color(*pdf.RULE)
    page.line(page.l_margin, page.get_y(), page.w - page.r_margin, page.get_y())
    page.ln(4)


def _details(page: pdf.Document, doc: CreditNoteDocument, zone: tzinfo) -> None:
    note, inv = doc.note, doc.invoice
    last_day = inv.period_end - timedelta(microseconds=1)
    rows = [
        ("Credit note number", note.number),
        ("Date of issue", pdf.date_text(note.created_at, zone)),
        ("Corrects invoice", f"{inv.number}, issued {pdf.date_text(inv.issued_at, zone)}"),
        (
            "Billing period",
            f"{pdf.date_text(inv.period_start, zone)} to {pdf.date_text(last_day, zone)}",
        ),
        ("Currency", note.currency),
        ("Reason", note.reason or "-"),
        ("Correction", f"{_SOURCES.get(note.source, note.source)}: {note.reference}"),
    ]
    if note.environment == "test":
        rows.append(("Environment", "TEST - not a real credit"))
    for label, value in rows:
        page.font(9, color=pdf.MUTED)
        page.cell(38, 5, label)
        page.font(9, bold=label in {"Credit note number", "Corrects invoice"})
        page.multi_cell(0, 5, page.text_of(value), new_x="LMARGIN", new_y="NEXT")
    page.ln(5)


def _amounts(page: pdf.Document, doc: CreditNoteDocument) -> None:
    """The credits the correction covers; of those, the credits returned as credits and those the
    invoice billed as overage, which come back as money (``amount``) only."""
    note = doc.note
    returned = note.credits_micros - note.billed_micros
    with pdf.table_of(page, (110, 32, 32), ("LEFT", "RIGHT", "RIGHT"), size=9) as table:
        table.row(["Description", "Credits", "Amount"])
        if note.billed_micros > 0:
            table.row(
                [
                    page.text_of(f"Usage corrected ({note.reference})"),
                    pdf.credits_text(note.credits_micros),
                    "",
                ]
            )
            table.row(
                ["  of which returned to the credit balance", pdf.credits_text(returned), "-"]
            )
            table.row(
                [
                    page.text_of(f"  of which billed as overage on {doc.invoice.number}"),
                    pdf.credits_text(note.billed_micros),
                    pdf.money_text(note.amount_minor, note.currency),
                ]
            )
        else:
            table.row(
                [
                    page.text_of(f"Credits returned to the credit balance ({note.reference})"),
                    pdf.credits_text(returned),
                    "-",
                ]
            )
    page.ln(3)
    for label, value in (
        ("Credits returned", pdf.credits_text(returned)),
        ("Total credit", pdf.money_text(note.amount_minor, note.currency)),
    ):
        page.set_x(page.w - page.r_margin - 90)
        page.font(10, bold=True)
        page.cell(55, 6, label, align="R")
        page.cell(35, 6, value, align="R", new_x="LMARGIN", new_y="NEXT")
    page.ln(4)


def _settlement(page: pdf.Document, doc: CreditNoteDocument, zone: tzinfo) -> None:
    note = doc.note
    page.line_of("Settlement", size=12, bold=True, h=7)
    page.font(9)
    on = pdf.date_text(note.created_at, zone)
    if note.amount_minor <= 0:
        text = (
            f"The credits were prepaid: {pdf.credits_text(note.credits_micros)} credits were returned "
            f"to the organization's credit balance on {on}. No money is credited or refunded, "
            f"and invoice {doc.invoice.number} itself is unchanged."
        )
        page.multi_cell(0, 4.8, page.text_of(text), new_x="LMARGIN", new_y="NEXT")
        return
    returned = note.credits_micros - note.billed_micros
    text = (
        f"{pdf.credits_text(returned)} credits were returned to the organization's credit balance on "
        f"{on}. The {pdf.credits_text(note.billed_micros)} credits billed as overage come back as "
        f"money: {pdf.money_text(note.amount_minor, note.currency)}, deducted from the next "
        f"invoices, up to what each one owes; invoice {doc.invoice.number} itself is unchanged."
    )
    page.multi_cell(0, 4.8, page.text_of(text), new_x="LMARGIN", new_y="NEXT")
    page.ln(2)
    with pdf.table_of(page, (60, 60, 54), ("LEFT", "LEFT", "RIGHT"), size=9) as table:
        table.row(["Deducted on invoice", "Invoice date", "Amount deducted"])
        for d in doc.deductions:
            table.row(
                [
                    page.text_of(d.invoice_number),
                    pdf.date_text(d.invoice_issued_at, zone),
                    pdf.money_text(d.amount_minor, note.currency),
                ]
            )
        left = note.amount_minor - sum(d.amount_minor for d in doc.deductions)
        if left > 0:
            table.row(
                ["Still to deduct", "from the next invoice", pdf.money_text(left, note.currency)]
            )
