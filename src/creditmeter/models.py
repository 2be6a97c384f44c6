"""Every table, imported in one place so migrations and tests see the whole schema."""

from __future__ import annotations

from creditmeter.billing.models import (
    CreditNote,
    CreditNoteApplication,
    CycleClose,
    Invoice,
    InvoiceCounter,
    InvoiceLine,
    PlanAllocation,
    Subscription,
    TestClock,
    TestClockAttachment,
    UsageStatementLine,
    WithheldAllocation,
)
from creditmeter.billing.payments.models import (
    AutoTopUp,
    Payment,
    PaymentCustomer,
    PaymentMethod,
    Purchase,
    Refund,
)
from creditmeter.billing.payments.sandbox_models import (
    SandboxCharge,
    SandboxCustomer,
    SandboxPaymentMethod,
    SandboxRefund,
)
from creditmeter.kit.db import Base
from creditmeter.kit.idempotency import IdempotencyRecord
from creditmeter.kit.outbox import Job
from creditmeter.ledger.marks import BalanceMark
from creditmeter.ledger.models import Balance, JournalTransaction, Lot, Posting
from creditmeter.metering.models import Hold, ProjectUsage, UsageEvent
from creditmeter.notify.models import (
    AlertRule,
    Email,
    NotificationEvent,
    NotificationPreference,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from creditmeter.orgs.models import ApiKey, Member, Organization, Project

metadata = Base.metadata

__all__ = [
    "AlertRule",
    "ApiKey",
    "AutoTopUp",
    "Balance",
    "BalanceMark",
    "CreditNote",
    "CreditNoteApplication",
    "CycleClose",
    "Email",
    "Hold",
    "IdempotencyRecord",
    "Invoice",
    "InvoiceCounter",
    "InvoiceLine",
    "Job",
    "JournalTransaction",
    "Lot",
    "Member",
    "NotificationEvent",
    "NotificationPreference",
    "Organization",
    "Payment",
    "PaymentCustomer",
    "PaymentMethod",
    "PlanAllocation",
    "Posting",
    "Project",
    "ProjectUsage",
    "Purchase",
    "Refund",
    "SandboxCharge",
    "SandboxCustomer",
    "SandboxPaymentMethod",
    "SandboxRefund",
    "Subscription",
    "TestClock",
    "TestClockAttachment",
    "UsageEvent",
    "UsageStatementLine",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WithheldAllocation",
    "metadata",
]
