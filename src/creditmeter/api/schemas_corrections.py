"""Bodies of credit notes and test clocks. Credits are exact decimal strings; money is integer minor
units with an ISO 4217 currency."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from creditmeter.api.schemas import Request, Timestamp, checked_text
from creditmeter.api.schemas_billing import Money


class CreditNoteOut(BaseModel):
    id: str
    number: str = Field(description="Gapless per year and environment: CN-2026-000001.")
    organization_id: str
    environment: Literal["live", "test"]
    invoice_id: str = Field(description="The invoice of the period the corrected original fell in.")
    invoice_number: str
    source: Literal["usage_reversal", "ledger_reversal"]
    reference: str = Field(
        description="What was corrected: a usage event or a journal transaction."
    )
    reason: str
    credits: str = Field(description="Credits the correction covers (what the original cost).")
    credits_returned: str = Field(
        description="Of those, the credits given back as credits (they were paid from prepaid lots)."
    )
    credits_billed: str = Field(
        description="Of those, the credits the invoice billed as overage: they come back as money "
        "(`amount`) only, never also as credits."
    )
    amount: Money = Field(
        description="Money credited: what the invoice billed for those credits (overage), else 0. "
        "Deducted as a credit_note line on the next invoices."
    )
    transaction_id: str = Field(description="The ledger transaction that re-credited the credits.")
    clawback_transaction_id: str | None = Field(
        description="The ledger transaction (kind credit_note) that took `credits_billed` off "
        "again, when there were any."
    )
    created_at: datetime
    pdf_url: str = Field(description="The credit note as a PDF: GET /v1/credit-notes/{id}/pdf.")


class CreditNotePage(BaseModel):
    data: list[CreditNoteOut]
    has_more: bool
    next_cursor: str | None


class TestClockCreate(Request):
    __test__ = False
    frozen_time: Timestamp
    name: (
        Annotated[
            str, StringConstraints(min_length=1, max_length=200), AfterValidator(checked_text)
        ]
        | None
    ) = None


class TestClockAdvance(Request):
    __test__ = False
    to: Timestamp


class TestClockAttach(Request):
    __test__ = False
    test_clock: Annotated[
        str, StringConstraints(min_length=1, max_length=40), AfterValidator(checked_text)
    ]


class TestClockOut(BaseModel):
    __test__ = False
    id: str
    name: str
    frozen_time: datetime
    organizations: list[str] = Field(description="Organizations billed on this clock.")
    created_at: datetime
    updated_at: datetime


class CloseOut(BaseModel):
    organization_id: str
    environment: Literal["live", "test"]
    period: str
    steps_run: list[str]
    invoice_number: str | None
    error: str | None


class TestClockAdvanced(TestClockOut):
    __test__ = False
    boundaries: list[datetime] = Field(description="Month boundaries crossed, in order.")
    closes: list[CloseOut] = Field(description="Every cycle close run on the way, in order.")


class TestClockAttached(BaseModel):
    __test__ = False
    organization_id: str
    test_clock: str
    frozen_time: datetime


class OrganizationTestClock(BaseModel):
    __test__ = False
    organization_id: str
    test_clock: str | None = Field(description="The clock it is billed on; null: real time.")
    frozen_time: datetime | None = Field(description="The clock's time: the organization's now.")
    attached_at: datetime | None


class TestClockDetached(BaseModel):
    __test__ = False
    organization_id: str
    test_clock: None = Field(description="Billed on real time from now on.")
    detached_from: str = Field(description="The clock it was on.")
    frozen_time: datetime = Field(description="That clock's time when it was detached.")
    ahead_of_real_time: bool = Field(
        description="The clock was ahead: the periods it closed are not closed again by real time."
    )


class TestClockDeleted(BaseModel):
    __test__ = False
    id: str
    deleted: bool
