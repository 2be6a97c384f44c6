"""Every table, imported in one place so migrations and tests see the whole schema."""

from __future__ import annotations

from creditmeter.billing.models import PlanAllocation, Subscription
from creditmeter.kit.db import Base
from creditmeter.kit.idempotency import IdempotencyRecord
from creditmeter.ledger.models import Balance, JournalTransaction, Lot, Posting
from creditmeter.metering.models import Hold, ProjectUsage, UsageEvent
from creditmeter.orgs.models import ApiKey, Member, Organization, Project

metadata = Base.metadata

__all__ = [
    "ApiKey",
    "Balance",
    "Hold",
    "IdempotencyRecord",
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
    "metadata",
]
