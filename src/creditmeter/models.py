"""Every table, imported in one place so migrations and tests see the whole schema."""

from __future__ import annotations

from creditmeter.billing.models import (
    CycleClose,
    Invoice,
    InvoiceCounter,
    InvoiceLine,
    PlanAllocation,
    Subscription,
    UsageStatementLine,
)
from creditmeter.kit.db import Base
from creditmeter.kit.idempotency import IdempotencyRecord
from creditmeter.ledger.models import Balance, JournalTransaction, Lot, Posting
from creditmeter.metering.models import Hold, ProjectUsage, UsageEvent
from creditmeter.orgs.models import ApiKey, Member, Organization, Project

metadata = Base.metadata

__all__ = [
    "ApiKey",
    "Balance",
    "CycleClose",
    "Hold",
    "IdempotencyRecord",
    "Invoice",
    "InvoiceCounter",
    "InvoiceLine",
    "JournalTransaction",
    "Lot",
    "Member",
    "Organization",
    "PlanAllocation",
    "Posting",
    "Project",
    "ProjectUsage",
    "Subscription",
    "UsageEvent",
    "UsageStatementLine",
    "metadata",
]
