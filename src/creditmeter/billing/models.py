"""Tables of billing: subscriptions and the plan allocations (credits granted, fee owed) they made."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from creditmeter.kit.db import Base, BigIntPK, UTCDateTime


class Subscription(Base):
    """An organization's plan in one environment (live, or test for rehearsals).

    ``terms`` is the snapshot of what the plan gives and costs (``billing.domain.Terms``), so a later
    edit of the plans file never rewrites it. ``allocated_through`` is the end of the last period
    whose plan credits were allocated: the cycle close allocates every period that starts at or after
    it. A downgrade or a cancellation waits in ``pending_*`` until ``pending_effective_at``."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("organization_id", "environment"),
        CheckConstraint("status IN ('active', 'canceled')", name="status_known"),
        CheckConstraint(
            "pending_action IS NULL OR pending_action IN ('change', 'cancel')",
            name="pending_action_known",
        ),
        Index("ix_subscriptions_status_allocated_through", "status", "allocated_through"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(12))
    plan: Mapped[str] = mapped_column(String(40))
    terms: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    allocated_through: Mapped[datetime] = mapped_column(UTCDateTime())
    pending_action: Mapped[str | None] = mapped_column(String(10))
    pending_terms: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    pending_effective_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PlanAllocation(Base):
    """One allocation of plan credits and the fee it owes, for the invoice of its period to read.

    ``kind``: ``initial`` (a first subscription: the rest of the cycle, prorated), ``cycle`` (a full
    cycle, made by the cycle close) or ``upgrade`` (the difference an upgrade makes for the rest of
    the cycle, prorated). ``sequence`` numbers a subscription's allocations within a period; the
    period's base allocation (``initial`` or ``cycle``) is 0, so the unique constraint makes a
    cycle's allocation happen at most once. ``share_*`` record the proration (remaining / total
    microseconds; equal for a full cycle). ``invoice_id`` is set when an invoice bills the fee."""

    __tablename__ = "plan_allocations"
    __table_args__ = (
        UniqueConstraint("subscription_id", "period_start", "sequence"),
        CheckConstraint("kind IN ('initial', 'cycle', 'upgrade')", name="kind_known"),
        CheckConstraint("credits_micros >= 0", name="credits_not_negative"),
        CheckConstraint("fee_minor >= 0", name="fee_not_negative"),
        Index(
            "ix_plan_allocations_org_env_period", "organization_id", "environment", "period_start"
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id"))
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    sequence: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(10))
    plan: Mapped[str] = mapped_column(String(40))
    terms: Mapped[dict[str, Any]] = mapped_column(JSON)
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    lot_id: Mapped[str | None] = mapped_column(ForeignKey("lots.id"))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fee_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    share_remaining_us: Mapped[int] = mapped_column(BigInteger)
    share_total_us: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    invoice_id: Mapped[str | None] = mapped_column(String(40))
