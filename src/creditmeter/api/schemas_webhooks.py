"""Request and response bodies of webhook endpoints, their delivery log and the notification events.

The signing secret appears in two answers only: creating an endpoint and rotating its secret."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from creditmeter.api.schemas import Request, checked_text
from creditmeter.notify.webhooks import MAX_EVENT_TYPES

Url = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2000),
    AfterValidator(checked_text),
    Field(
        description="Where events are POSTed: an `https://` (or `http://`) URL whose host "
        "resolves to public addresses only.",
        examples=["https://example.com/webhooks/creditmeter"],
    ),
]
Description = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=500), AfterValidator(checked_text)
]
EventPattern = Annotated[
    str, StringConstraints(min_length=1, max_length=100), AfterValidator(checked_text)
]
EventTypes = Annotated[
    list[EventPattern],
    Field(
        max_length=MAX_EVENT_TYPES,
        description="Event types sent: exact names of the catalog (`invoice.paid`) or prefix "
        "patterns (`invoice.*`). Empty: every type.",
        examples=[["invoice.*", "alert.triggered"]],
    ),
]


class EndpointIn(Request):
    url: Url
    description: Description = ""
    event_types: EventTypes = []


class EndpointUpdate(Request):
    url: Url | None = None
    description: Description | None = None
    event_types: EventTypes | None = None
    status: Literal["enabled", "disabled"] | None = Field(
        None,
        description="`enabled` re-enables a disabled endpoint (and forgets its failures); "
        "`disabled` stops its deliveries (pending ones are cancelled).",
    )


class RotateIn(Request):
    overlap_hours: int = Field(
        24,
        ge=0,
        le=168,
        description="How long the previous secret keeps signing (a second signature), 0 to 168.",
    )


class SendTestIn(Request):
    message: Description | None = Field(None, description="Put in the test event's `data`.")


class EndpointOut(BaseModel):
    id: str
    organization_id: str | None = Field(
        description="None: an operator-wide endpoint, sent the events of every organization."
    )
    environment: str
    url: str
    description: str
    event_types: list[str]
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None = Field(
        description="Since when every attempt failed (None after a success); disabled after 5 days."
    )
    previous_secret_expires_at: datetime | None = Field(
        description="While set, requests carry a second signature with the previous secret."
    )
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(
        description="The signing secret (`whsec_…`). Shown in this answer only: store it now."
    )


class AttemptOut(BaseModel):
    number: int
    started_at: datetime
    status_code: int | None = Field(description="None when no answer came (see `error`).")
    latency_ms: int
    succeeded: bool
    response_excerpt: str = Field(description="The first 1000 characters of the response body.")
    error: str | None


class DeliveryOut(BaseModel):
    id: str
    endpoint_id: str
    event_id: str = Field(description="Sent as `webhook-id`: the same on every attempt.")
    event_type: str
    kind: Literal["automatic", "redelivery", "test"]
    status: Literal["pending", "succeeded", "failed", "cancelled"]
    next_attempt_at: datetime | None
    last_status_code: int | None
    attempts: list[AttemptOut]
    created_at: datetime
    updated_at: datetime


class NotificationEventOut(BaseModel):
    """An event as sent to webhooks (the body of the request)."""

    id: str
    type: str
    version: int
    organization_id: str | None
    environment: str
    occurred_at: datetime
    created_at: datetime
    data: dict[str, Any]
