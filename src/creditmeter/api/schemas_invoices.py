"""Response bodies of invoices. Money is integer minor units with an ISO 4217 currency; credits and
quantities are exact decimal strings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from creditmeter.api.schemas import Reason, Request, checked_text
from creditmeter.api.schemas_billing import Money
from creditmeter.api.schemas_corrections import CreditNoteOut


class InvoicePeriod(BaseModel):
    label: str = Field(description="The month in the billing time zone, e.g. 2026-01.")
    start: datetime
    end: datetime = Field(description="Exclusive: the 1st 00:00 of the next month.")


class Party(BaseModel):
    name: str
    address: list[str] = []
    email: str = ""
    website: str = ""
    tax_id: str = ""


class Customer(BaseModel):
    id: str
    name: str
    external_id: str | None = None


class InvoiceLineOut(BaseModel):
    position: int
    kind: Literal["plan_fee", "proration", "package", "overage", "credit_note", "adjustment"]
    description: str
    quantity: str = Field(description="A decimal string (credits for an overage line).")
    unit_price: str | None = Field(description="In the currency's major unit, a decimal string.")
    amount: Money
    credits: str | None = Field(description="Credits this line allocated or billed, if any.")
    service_start: datetime | None
    service_end: datetime | None


class UsageByOperation(BaseModel):
    operation: str
    events: int
    credits: str
    quantities: dict[str, str] = Field(description="Exact sum of each numeric dimension.")


class UsageByProject(BaseModel):
    project_id: str | None = Field(description="None: usage recorded without a project.")
    project_name: str
    events: int
    credits: str
    quantities: dict[str, str]


class UsageSummary(BaseModel):
    by_operation: list[UsageByOperation]
    by_project: list[UsageByProject]


class InvoiceSummaryOut(BaseModel):
    id: str
    number: str = Field(description="Gapless per year and environment: INV-2026-000001.")
    organization_id: str
    environment: Literal["live", "test"]
    status: Literal["open", "paid", "past_due", "void"]
    period: InvoicePeriod
    currency: str
    subtotal: Money
    total: Money
    amount_due: Money
    issued_at: datetime
    due_at: datetime
    paid_at: datetime | None
    voided_at: datetime | None
    void_reason: str | None
    pdf_url: str


class InvoiceOut(InvoiceSummaryOut):
    seller: Party
    customer: Customer
    lines: list[InvoiceLineOut]
    usage_summary: UsageSummary
    credit_notes: list[CreditNoteOut] = Field(
        default=[], description="Credit notes issued against this invoice (it is never edited)."
    )
    payment_attempts: int = Field(
        default=0, description="Charges tried so far (each is a line of the billing history)."
    )
    refunded_minor: int = Field(
        default=0,
        description="What operator refunds gave back of this invoice's payments, in minor units "
        "(a refunded invoice stays paid).",
    )
    next_payment_attempt_at: datetime | None = Field(
        default=None,
        description="When the next automatic charge (dunning retry) is due; None when the invoice "
        "is not open or no retry is left.",
    )


class InvoiceVoidIn(Request):
    reason: Reason = Field(description="Why the invoice is not collected (kept on the invoice).")


class InvoicePayIn(Request):
    payment_method: (
        Annotated[str, StringConstraints(min_length=1, max_length=40), AfterValidator(checked_text)]
        | None
    ) = Field(default=None, description="A payment method id; default: the organization's default.")


class InvoicePage(BaseModel):
    data: list[InvoiceSummaryOut]
    has_more: bool
    next_cursor: str | None
