"""The invoice as a PDF a person would accept: seller, customer, number, dates, period, lines,
totals with the currency, status, the credit notes issued against it and deducted on it, and the
month's usage summary by operation and by project. (The credit note's own document is
``billing.credit_note_pdf``, built on the same page style.)

Rendered with fpdf2 on A4. Text uses DejaVu Sans when the system has it (any script), else the
built-in Helvetica, which covers Latin-1: other characters print as ``?``. Dates are calendar dates
in the billing time zone; amounts are the stored integer minor units, formatted exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from fpdf import FPDF
from fpdf.fonts import FontFace
from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.billing import domain
from creditmeter.billing.invoices import InvoiceView
from creditmeter.billing.models import (
    CreditNote,
    CreditNoteApplication,
    Invoice,
    UsageStatementLine,
)
from creditmeter.kit.credits import format_credits

_FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/TTF",
    "/Library/Fonts",
)
_STATUS = {"open": "OPEN", "paid": "PAID", "past_due": "PAST DUE", "void": "VOID"}
_INK = (33, 37, 41)
MUTED = (108, 117, 125)
RULE = (222, 226, 230)
_HEAD = FontFace(emphasis="BOLD", fill_color=(241, 243, 245))


def _dejavu() -> tuple[str, str] | None:
    for folder in _FONT_DIRS:
        regular = os.path.join(folder, "DejaVuSans.ttf")
        bold = os.path.join(folder, "DejaVuSans-Bold.ttf")
        if os.path.exists(regular) and os.path.exists(bold):
            return regular, bold
    return None


class Document(FPDF):
    """An A4 page in creditmeter's document style, with a footer line and page numbers."""

    def __init__(self, footer_text: str) -> None:
        super().__init__(format="A4", unit="mm")
        self.footer_text = footer_text
        fonts = _dejavu()
        if fonts:
            self.add_font("Body", "", fonts[0])
            self.add_font("Body", "B", fonts[1])
            self.body_font = "Body"
            self.any_script = True
        else:
            self.body_font = "Helvetica"
            self.any_script = False
        self.set_auto_page_break(auto=True, margin=20)
        self.set_margins(18, 18, 18)

    def text_of(self, value: object) -> str:
        text = str(value)
        if self.any_script:
            return text
        return text.encode("latin-1", "replace").decode("latin-1")

    def font(self, size: float, bold: bool = False, color: tuple[int, int, int] = _INK) -> None:
        self.set_font(self.body_font, "B" if bold else "", size)
        self.set_text_color(*color)

    def line_of(self, text: object, size: float = 9.5, bold: bool = False, **kw: Any) -> None:
        self.font(size, bold, kw.pop("color", _INK))
        self.cell(
            kw.pop("w", 0), kw.pop("h", 5), self.text_of(text), new_x="LMARGIN", new_y="NEXT", **kw
        )

    def footer(self) -> None:
        self.set_y(-14)
        self.font(7.5, color=MUTED)
        self.cell(0, 4, self.text_of(self.footer_text), align="L")
        self.cell(0, 4, f"Page {self.page_no()}/{{nb}}", align="R")


def date_text(at: datetime, zone: tzinfo) -> str:
    return at.astimezone(zone).strftime("%d %B %Y").lstrip("0")


def money_text(amount_minor: int, currency: str) -> str:
    text = domain.format_money(amount_minor, currency)
    whole, _, frac = text.lstrip("-").partition(".")
    grouped = f"{int(whole):,}" + (f".{frac}" if frac else "")
    return f"{'-' if text.startswith('-') else ''}{currency} {grouped}"


def credits_text(micros: int) -> str:
    return domain.group_digits(format_credits(micros))


def _quantities(values: dict[str, str]) -> str:
    parts = []
    for name, value in values.items():
        number = Decimal(value)
        shown = f"{number:,f}" if number == number.to_integral_value() else f"{number:,}"
        parts.append(f"{name.replace('_', ' ')} {shown}")
    return "; ".join(parts) or "-"


@dataclass(frozen=True)
class Deduction:
    """Money of a credit note deducted on an invoice (one ``credit_note_applications`` row), with
    the numbers a reader needs: the note, the invoice it corrects, the invoice it was deducted on."""

    note_number: str
    note_created_at: datetime
    reason: str
    corrected_invoice: str
    invoice_number: str
    invoice_issued_at: datetime
    amount_minor: int
    credit_note_id: str


@dataclass(frozen=True)
class NotesOf:
    """An invoice's credit notes: those issued against it (with where their money was deducted so
    far) and those deducted on it (its ``credit_note`` lines)."""

    deducted_later: list[Deduction] = field(default_factory=list)
    deducted_here: list[Deduction] = field(default_factory=list)


def deductions(
    session: Session, *, invoice_id: str = "", note_ids: list[str] | None = None
) -> list[Deduction]:
    """The deductions made on ``invoice_id``, or those of the notes ``note_ids``, in the order the
    invoices were issued (then by note number)."""
    corrected = select(Invoice.id, Invoice.number).subquery()
    query = (
        select(
            CreditNote.number,
            CreditNote.created_at,
            CreditNote.reason,
            corrected.c.number,
            Invoice.number,
            Invoice.issued_at,
            CreditNoteApplication.amount_minor,
            CreditNote.id,
        )
        .join(CreditNote, CreditNote.id == CreditNoteApplication.credit_note_id)
        .join(Invoice, Invoice.id == CreditNoteApplication.invoice_id)
        .join(corrected, corrected.c.id == CreditNote.invoice_id)
        .order_by(Invoice.issued_at, Invoice.number, CreditNote.number)
    )
    if note_ids is not None:
        query = query.where(CreditNoteApplication.credit_note_id.in_(note_ids))
    else:
        query = query.where(CreditNoteApplication.invoice_id == invoice_id)
    return [Deduction(*row) for row in session.execute(query)]


def notes_of(session: Session, view: InvoiceView) -> NotesOf:
    """The credit-note context of an invoice's PDF (two indexed reads)."""
    issued = [note.id for note in view.credit_notes if note.amount_minor > 0]
    return NotesOf(
        deductions(session, note_ids=issued) if issued else [],
        deductions(session, invoice_id=view.invoice.id),
    )


def render(view: InvoiceView, zone: tzinfo, notes: NotesOf | None = None) -> bytes:
    """The PDF of ``view`` (an invoice, its lines, the credit notes issued against it and its
    month's usage statement); ``notes`` (``notes_of``) adds where the notes' money was deducted."""
    inv = view.invoice
    seller, customer = inv.seller, inv.customer
    pdf = Document(
        f"{seller.get('name', '')} - invoice {inv.number} - issued {date_text(inv.issued_at, zone)}"
    )
    pdf.set_title(f"Invoice {inv.number}")
    pdf.set_author(str(seller.get("name", "")))
    pdf.set_creator("creditmeter")
    pdf.set_creation_date(inv.created_at)
    pdf.add_page()
    _header(pdf, view, zone)
    parties(pdf, seller, customer)
    _details(pdf, view, zone)
    _lines(pdf, view)
    _credit_notes(pdf, view, notes or NotesOf(), zone)
    _usage(pdf, view.usage)
    return bytes(pdf.output())


def _header(pdf: Document, view: InvoiceView, zone: tzinfo) -> None:
    inv = view.invoice
    top = pdf.get_y()
    pdf.font(22, bold=True)
    pdf.cell(100, 10, "Invoice")
    pdf.set_xy(pdf.w - pdf.r_margin - 60, top)
    pdf.font(10, bold=True)
    pdf.cell(60, 5, pdf.text_of(inv.number), align="R", new_x="LEFT", new_y="NEXT")
    status = _STATUS.get(inv.status, inv.status.upper())
    color = {"paid": (25, 135, 84), "past_due": (220, 53, 69), "void": MUTED}.get(
        inv.status, (13, 110, 253)
    )
    pdf.font(10, bold=True, color=color)
    pdf.cell(60, 6, status, align="R")
    pdf.set_y(top + 16)
    pdf.set_draw_color(*RULE)
    pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
    pdf.ln(4)


def parties(
    pdf: Document,
    seller: dict[str, Any],
    customer: dict[str, Any],
    customer_title: str = "Bill to",
) -> None:
    """The seller ("From") and customer blocks side by side."""
    top = pdf.get_y()
    half = (pdf.w - pdf.l_margin - pdf.r_margin) / 2
    seller_lines = [*seller.get("address", []), seller.get("email", ""), seller.get("website", "")]
    if seller.get("tax_id"):
        seller_lines.append(f"Tax ID: {seller['tax_id']}")
    _block(pdf, pdf.l_margin, top, half, "From", str(seller.get("name", "")), seller_lines)
    after_seller = pdf.get_y()
    customer_lines = [f"Organization {customer.get('id', '')}"]
    if customer.get("external_id"):
        customer_lines.append(f"Customer reference {customer['external_id']}")
    _block(
        pdf,
        pdf.l_margin + half,
        top,
        half,
        customer_title,
        str(customer.get("name", "")),
        customer_lines,
    )
    pdf.set_y(max(after_seller, pdf.get_y()) + 4)


def _block(
    pdf: Document, x: float, y: float, w: float, title: str, name: str, lines: list[Any]
) -> None:
    pdf.set_xy(x, y)
    pdf.font(8, bold=True, color=MUTED)
    pdf.cell(w, 5, title.upper(), new_x="LEFT", new_y="NEXT")
    pdf.font(10.5, bold=True)
    pdf.multi_cell(w - 4, 5, pdf.text_of(name), align="L", new_x="LEFT", new_y="NEXT")
    pdf.font(9)
    for line in lines:
        if line:
            pdf.cell(w, 4.6, pdf.text_of(line), new_x="LEFT", new_y="NEXT")


def _details(pdf: Document, view: InvoiceView, zone: tzinfo) -> None:
    inv = view.invoice
    last_day = inv.period_end - timedelta(microseconds=1)
    rows = [
        ("Invoice number", inv.number),
        ("Issue date", date_text(inv.issued_at, zone)),
        ("Due date", date_text(inv.due_at, zone)),
        ("Billing period", f"{date_text(inv.period_start, zone)} to {date_text(last_day, zone)}"),
        ("Currency", inv.currency),
        ("Status", _STATUS.get(inv.status, inv.status)),
    ]
    if inv.paid_at:
        rows.append(("Paid on", date_text(inv.paid_at, zone)))
    if inv.voided_at:
        voided = date_text(inv.voided_at, zone)
        rows.append(("Voided on", f"{voided}: {inv.void_reason}" if inv.void_reason else voided))
    if inv.environment == "test":
        rows.append(("Environment", "TEST - not a real charge"))
    for label, value in rows:
        pdf.font(9, color=MUTED)
        pdf.cell(38, 5, label)
        pdf.font(9, bold=label in {"Invoice number", "Due date"})
        pdf.cell(0, 5, pdf.text_of(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(5)


def _lines(pdf: Document, view: InvoiceView) -> None:
    inv = view.invoice
    pdf.font(9)
    pdf.set_draw_color(*RULE)
    with pdf.table(
        col_widths=(104, 14, 28, 28),
        text_align=("LEFT", "RIGHT", "RIGHT", "RIGHT"),
        headings_style=_HEAD,
        line_height=5.5,
        borders_layout="HORIZONTAL_LINES",
        padding=1.5,
    ) as table:
        table.row(["Description", "Qty", "Unit price", "Amount"])
        for line in view.lines:
            unit = line.unit_price or ""
            if unit and line.kind != "overage":
                unit = money_text(
                    int(Decimal(unit) * 10 ** domain.currency_exponent(inv.currency)), inv.currency
                )
            elif unit:
                unit = f"{inv.currency} {unit}"
            table.row(
                [
                    pdf.text_of(line.description),
                    line.quantity
                    if line.kind != "overage"
                    else f"{credits_text(line.credits_micros or 0)}",
                    unit,
                    money_text(line.amount_minor, inv.currency),
                ]
            )
        if not view.lines:
            table.row(["Nothing to bill for this period", "", "", money_text(0, inv.currency)])
    pdf.ln(3)
    due = 0 if inv.status in {"paid", "void"} else inv.total_minor
    for label, amount, bold in (
        ("Subtotal", inv.subtotal_minor, False),
        ("Total", inv.total_minor, True),
        ("Amount due", due, True),
    ):
        pdf.set_x(pdf.w - pdf.r_margin - 80)
        pdf.font(10 if bold else 9, bold=bold)
        pdf.cell(45, 6, label, align="R")
        pdf.cell(35, 6, money_text(amount, inv.currency), align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.font(8.5, color=MUTED)
    pdf.multi_cell(
        0,
        4.4,
        "Payment is collected automatically from the payment method on file. Credits are shown "
        "with up to six decimal places; amounts are exact.",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.ln(4)


def table_of(
    pdf: Document, widths: tuple[float, ...], align: tuple[str, ...], size: float = 8.5
) -> Any:
    """A table in the document's style (light heading row, horizontal rules)."""
    pdf.font(size)
    pdf.set_draw_color(*RULE)
    return pdf.table(
        col_widths=widths,
        text_align=align,
        headings_style=_HEAD,
        line_height=4.8,
        borders_layout="HORIZONTAL_LINES",
        padding=1.2,
    )


def _credit_notes(pdf: Document, view: InvoiceView, notes: NotesOf, zone: tzinfo) -> None:
    inv = view.invoice
    if not view.credit_notes and not notes.deducted_here:
        return
    pdf.line_of("Credit notes", size=12, bold=True, h=7)
    if view.credit_notes:
        pdf.line_of("Issued against this invoice", size=9.5, bold=True, h=6)
        with table_of(pdf, (34, 31, 53, 26, 30), ("LEFT", "LEFT", "LEFT", "RIGHT", "RIGHT")) as t:
            t.row(["Number", "Date", "Reason", "Credits", "Amount"])
            for note in view.credit_notes:
                t.row(
                    [
                        pdf.text_of(note.number),
                        date_text(note.created_at, zone),
                        pdf.text_of(note.reason or "-"),
                        credits_text(note.credits_micros),
                        money_text(note.amount_minor, note.currency),
                    ]
                )
        pdf.ln(1.5)
        pdf.font(8.5, color=MUTED)
        for sentence in _settlement_of_notes(view, notes, zone):
            pdf.multi_cell(0, 4.4, pdf.text_of(sentence), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
    if notes.deducted_here:
        pdf.line_of("Deducted on this invoice", size=9.5, bold=True, h=6)
        with table_of(pdf, (34, 31, 34, 45, 30), ("LEFT", "LEFT", "LEFT", "LEFT", "RIGHT")) as t:
            t.row(["Credit note", "Issued", "Corrects invoice", "Reason", "Deducted"])
            for d in notes.deducted_here:
                t.row(
                    [
                        pdf.text_of(d.note_number),
                        date_text(d.note_created_at, zone),
                        pdf.text_of(d.corrected_invoice),
                        pdf.text_of(d.reason or "-"),
                        money_text(-d.amount_minor, inv.currency),
                    ]
                )
        pdf.ln(4)


def _settlement_of_notes(view: InvoiceView, notes: NotesOf, zone: tzinfo) -> list[str]:
    """One sentence per note with money: where it was deducted, and what is still to deduct."""
    sentences = [
        "This invoice is unchanged: each credit note corrects it. Credits were returned to the "
        "credit balance on the note's date; money is deducted from the next invoices."
    ]
    for note in view.credit_notes:
        if note.amount_minor <= 0:
            continue
        done = [d for d in notes.deducted_later if d.credit_note_id == note.id]
        parts = [
            f"{money_text(d.amount_minor, note.currency)} on {d.invoice_number} "
            f"({date_text(d.invoice_issued_at, zone)})"
            for d in done
        ]
        left = note.amount_minor - sum(d.amount_minor for d in done)
        text = f"{note.number}: " + ("deducted " + ", ".join(parts) if parts else "")
        if left > 0:
            text += (
                "; " if parts else ""
            ) + f"{money_text(left, note.currency)} to be deducted from the next invoice"
        sentences.append(text + ".")
    return sentences


def _usage(pdf: Document, usage: list[UsageStatementLine]) -> None:
    pdf.line_of("Usage summary", size=12, bold=True, h=7)
    if not usage:
        pdf.line_of("No usage was recorded in this period.", size=9, color=MUTED)
        return
    for dimension, title in (("operation", "By operation"), ("project", "By project")):
        rows = [u for u in usage if u.dimension == dimension]
        if not rows:
            continue
        pdf.line_of(title, size=9.5, bold=True, h=6)
        pdf.font(8.5)
        with pdf.table(
            col_widths=(50, 18, 30, 76),
            text_align=("LEFT", "RIGHT", "RIGHT", "LEFT"),
            headings_style=_HEAD,
            line_height=4.8,
            borders_layout="HORIZONTAL_LINES",
            padding=1.2,
        ) as table:
            table.row([title.removeprefix("By ").capitalize(), "Events", "Credits", "Quantities"])
            for u in rows:
                table.row(
                    [
                        pdf.text_of(u.label),
                        f"{u.event_count:,}",
                        credits_text(u.credits_micros),
                        pdf.text_of(_quantities(u.quantities)),
                    ]
                )
            total = sum(u.credits_micros for u in rows)
            table.row(["Total", f"{sum(u.event_count for u in rows):,}", credits_text(total), ""])
        pdf.ln(3)
