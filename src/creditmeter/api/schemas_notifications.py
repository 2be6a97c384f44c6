"""Bodies of the e-mail endpoints: the outbox of messages and members' notification preferences."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from creditmeter.api.schemas import Request, checked_text

EventTypeName = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=60), AfterValidator(checked_text)
]


class AttachmentRef(BaseModel):
    kind: str = Field(description="`invoice_pdf`, …: rendered when the message is sent.")
    id: str


class EmailOut(BaseModel):
    id: str
    organization_id: str | None
    environment: str | None
    event_id: str | None = Field(description="The event that caused it (`evt_…`); null if none.")
    to: str
    subject: str
    status: str = Field(
        description="`queued` (waiting for the worker, or retrying), `sent`, `failed` (every "
        "attempt failed), `held` (no SMTP server is configured: kept until one is)."
    )
    attempts: int
    last_error: str | None
    attachments: list[AttachmentRef]
    created_at: datetime
    sent_at: datetime | None


class EmailDetail(EmailOut):
    text: str = Field(description="The plain-text body.")
    html: str = Field(description="The HTML body.")


class PreferencesIn(Request):
    event_types: list[EventTypeName] | None = Field(
        None,
        max_length=50,
        description="E-mailed event types to receive; null (or absent): the defaults (every "
        "e-mailed type); []: none.",
    )
    unsubscribed: bool = Field(False, description="true: no e-mail at all.")


class PreferencesOut(BaseModel):
    member_id: str
    email: str
    role: str
    event_types: list[str] | None = Field(description="As set; null: the defaults.")
    effective_event_types: list[str] = Field(
        description="What the member is sent (their role permitting); empty when unsubscribed."
    )
    available_event_types: list[str] = Field(description="The types that can be chosen.")
    unsubscribed: bool
    updated_at: datetime | None


class UnsubscribedOut(BaseModel):
    unsubscribed: bool
    email: str
    organization_id: str
