"""The event catalog: every event creditmeter sends, with a versioned, documented payload schema.

Design note. An event is written once (``notification_events``), in the transaction of the change it
reports (the outbox rule: an event exists exactly when its cause committed), by
:func:`creditmeter.notify.events.publish`, which fans it out in that same transaction: one delivery
per matching webhook endpoint (``notify.webhooks``) and one e-mail per recipient who wants it
(``notify.email``). The worker sends them later, at least once, with the event id for de-duplication.

Alert rules (``notify.alerts``) watch the balance through marks of the ledger's write path
(``ledger.marks``): the write that crosses a line records the crossing in its own transaction; the
worker turns it into ``alert.triggered`` / ``alert.resolved`` seconds later. Time-based rules are
evaluated by a sweep.

Each type's ``data`` is a Pydantic model below; :data:`CATALOG` lists them with their version. A new
field is added in place; a changed meaning or a removed field is a new version. The body sent to a
webhook is the envelope :class:`Envelope` with ``data`` inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertRef(_Data):
    id: str = Field(description="The alert rule (`alr_…`).")
    type: str = Field(description="The rule's type, e.g. `credits_below`.")
    name: str = Field(description="The rule's name, as the organization set it.")
    threshold: str = Field(description="The rule's threshold, as set (credits, percent or days).")
    project_id: str | None = Field(None, description="The project of a budget rule.")


class AlertData(_Data):
    alert: AlertRef
    value: str = Field(description="The value that crossed the threshold (same unit).")
    available_credits: str | None = Field(
        None, description="Available credits when the line was crossed."
    )
    at: datetime = Field(description="When the line was crossed.")


class BalanceData(_Data):
    available_credits: str = Field(description="Available credits after the change.")
    at: datetime = Field(description="When the balance crossed zero.")


class PausedData(BalanceData):
    reason: str = Field(description="Why new operations are refused: `insufficient_credits`.")


class GrantedData(_Data):
    lot_id: str
    source: str = Field(description="`plan`, `purchase`, `promo` or `adjustment`.")
    credits: str
    effective_at: datetime
    expires_at: datetime | None
    reason: str


class ExpiringLot(_Data):
    lot_id: str
    credits: str = Field(description="Credits left in the lot.")
    expires_at: datetime


class ExpiringData(_Data):
    credits: str = Field(description="Credits that expire within the window.")
    within_days: int
    lots: list[ExpiringLot]


class ExpiredLot(_Data):
    lot_id: str
    credits: str


class ExpiredData(_Data):
    credits: str = Field(description="Credits that expired unused (breakage).")
    lots: list[ExpiredLot]


class PurchaseData(_Data):
    purchase_id: str
    package: str | None = Field(description="The package bought; null for a custom amount.")
    credits: str
    amount: str = Field(
        description="The purchase's price, a decimal string in `currency`: charged to the card, "
        "or billed on the month's invoice when `billing` is `on_account`."
    )
    currency: str
    status: str
    failure_code: str | None = None
    auto_top_up: bool = False
    billing: str = Field(
        "charge", description="`charge` (a card) or `on_account` (billed on the month's invoice)."
    )


class InvoiceData(_Data):
    invoice_id: str
    number: str
    status: str
    total: str = Field(description="The invoice's total, a decimal string in `currency`.")
    amount_due: str
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    due_at: datetime | None = Field(None, description="When payment is due.")
    pdf_url: str = Field(description="The invoice's PDF, under the API (authenticated).")


class PaymentFailedData(_Data):
    payment_id: str
    invoice_id: str | None
    purchase_id: str | None = None
    amount: str
    currency: str
    failure_code: str | None
    failure_message: str | None
    attempt: int | None = Field(None, description="The dunning attempt, for an invoice.")
    next_attempt_at: datetime | None = None


class SubscriptionData(_Data):
    subscription_id: str
    plan: str
    previous_plan: str | None
    status: str
    change: str = Field(
        description="`created` (a first subscription, or again after a cancellation), "
        "`upgraded` (at once), `downgrade_scheduled` (`plan` from `effective_at`), `downgraded` "
        "(applied by the cycle close), `cancellation_scheduled`, `cancelled` (took effect), "
        "`pending_change_withdrawn`, `allocation_withheld` (a cycle begun while suspended for "
        "non-payment: no credits, no fee), `allocation_released` (paid: the rest of the cycle "
        "allocated)."
    )
    effective_at: datetime
    reason: str | None = Field(None, description="Why, when billing made the change itself.")


class AutoTopUpFailedData(_Data):
    purchase_id: str | None
    package: str | None = Field(description="The package it buys; null for a custom amount.")
    failure_code: str | None
    reason: str = Field(description="What happened, in plain words.")
    disabled: bool = Field(description="Whether auto top-up was turned off.")


class SuspendedData(_Data):
    invoice_id: str | None
    reason: str


class TestData(_Data):
    message: str


@dataclass(frozen=True)
class EventType:
    name: str
    version: int
    description: str
    data: type[_Data]
    #: Whether members get an e-mail of it by default (their preferences can change that).
    emailed: bool = False


CATALOG: dict[str, EventType] = {
    t.name: t
    for t in [
        EventType(
            "alert.triggered",
            1,
            "An alert rule's threshold was crossed; fires once per crossing.",
            AlertData,
            emailed=True,
        ),
        EventType(
            "alert.resolved",
            1,
            "The value came back past the threshold plus the rule's hysteresis.",
            AlertData,
            emailed=True,
        ),
        EventType("balance.depleted", 1, "Available credits reached zero or below.", BalanceData),
        EventType(
            "organization.paused",
            1,
            "New operations are refused: available credits are at or below zero.",
            PausedData,
            emailed=True,
        ),
        EventType(
            "organization.resumed",
            1,
            "Credits arrived (purchase, grant, allocation): operations run again.",
            BalanceData,
        ),
        EventType("credits.granted", 1, "A lot of credits was granted.", GrantedData),
        EventType(
            "credits.expiring",
            1,
            "Credits of lots expire within the window (sent once per lot).",
            ExpiringData,
            emailed=True,
        ),
        EventType("credits.expired", 1, "Unused credits expired.", ExpiredData),
        EventType("purchase.succeeded", 1, "A credit package was paid and granted.", PurchaseData),
        EventType(
            "purchase.failed",
            1,
            "A credit package's payment failed; nothing was granted.",
            PurchaseData,
            emailed=True,
        ),
        EventType(
            "invoice.issued",
            1,
            "A cycle's invoice was issued (the e-mail attaches its PDF).",
            InvoiceData,
            emailed=True,
        ),
        EventType("invoice.paid", 1, "An invoice was paid in full.", InvoiceData),
        EventType(
            "invoice.past_due",
            1,
            "An invoice's dunning schedule ran out unpaid.",
            InvoiceData,
            emailed=True,
        ),
        EventType(
            "payment.failed",
            1,
            "A charge of the stored payment method failed.",
            PaymentFailedData,
            emailed=True,
        ),
        EventType(
            "subscription.updated",
            1,
            "A subscription was created, changed or cancelled.",
            SubscriptionData,
        ),
        EventType(
            "auto_top_up.failed",
            1,
            "An automatic top-up could not buy credits.",
            AutoTopUpFailedData,
            emailed=True,
        ),
        EventType(
            "organization.suspended",
            1,
            "The organization was suspended for non-payment.",
            SuspendedData,
            emailed=True,
        ),
        EventType(
            "webhook.test",
            1,
            "Sent on request, to check an endpoint. Never sent otherwise.",
            TestData,
        ),
    ]
}


class UnknownEventType(ValueError):
    pass


def event_type(name: str) -> EventType:
    found = CATALOG.get(name)
    if found is None:
        raise UnknownEventType(f"unknown event type {name!r}")
    return found


def check_data(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` validated against its type's schema, as JSON-ready values."""
    return event_type(name).data.model_validate(data).model_dump(mode="json")


def matches(patterns: list[str], name: str) -> bool:
    """Whether an event type is chosen by a filter: empty (every type), exact names, ``prefix.*``."""
    if not patterns:
        return True
    return any(p == name or (p.endswith(".*") and name.startswith(p[:-1])) for p in patterns)


def valid_filter(pattern: str) -> bool:
    if pattern in CATALOG:
        return True
    return pattern.endswith(".*") and any(n.startswith(pattern[:-1]) for n in CATALOG)


class Envelope(BaseModel):
    """The body of every webhook request."""

    id: str = Field(
        description="The event id (`evt_…`): the same on every retry; de-duplicate on it."
    )
    type: str = Field(description="The event type, e.g. `alert.triggered`.")
    version: int = Field(description="The version of the type's `data` schema.")
    organization_id: str | None = Field(
        description="The organization the event is about (null for none)."
    )
    environment: str = Field(description="`live` or `test`.")
    occurred_at: datetime = Field(
        description="When it happened (the organization's test-clock time for one on a test clock)."
    )
    created_at: datetime = Field(description="When the event was written.")
    data: dict[str, Any] = Field(description="The type's payload (below).")


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each type's ``data``, by type name (for the docs)."""
    return {name: t.data.model_json_schema() for name, t in CATALOG.items()}
