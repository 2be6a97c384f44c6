"""Tables of metering: usage events, holds and per-project monthly usage."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from creditmeter.kit.db import Base, BigIntPK, UTCDateTime


class UsageEvent(Base):
    __tablename__ = "usage_events"
    __table_args__ = (
        UniqueConstraint("organization_id", "environment", "event_id"),
        # Partial (it holds every row: occurred_at is NOT NULL) so that only a query naming a time can
        # use it, never the duplicate-id lookup, which the unique index serves (migration 0011).
        Index(
            "ix_usage_events_org_env_occurred",
            "organization_id",
            "environment",
            "occurred_at",
            postgresql_where=text("occurred_at IS NOT NULL"),
            sqlite_where=text("occurred_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    #: The client's id: its idempotency key, unique per organization and environment.
    event_id: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"))
    member_id: Mapped[str | None] = mapped_column(ForeignKey("members.id"))
    operation: Mapped[str] = mapped_column(String(100))
    quantities: Mapped[dict[str, Any]] = mapped_column(JSON)
    cache_hit: Mapped[bool] = mapped_column(Boolean)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    breakdown: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    rate_card_version: Mapped[str] = mapped_column(String(100))
    request_hash: Mapped[str] = mapped_column(String(64))
    transaction_id: Mapped[int | None] = mapped_column(ForeignKey("journal_transactions.id"))
    #: Which lots paid and how much went to arrears: ``{"lots": [[lot_id, micros]], "arrears": n}``.
    allocation: Mapped[dict[str, Any]] = mapped_column(JSON)
    hold_id: Mapped[str | None] = mapped_column(String(40))
    event_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    reversal_transaction_id: Mapped[int | None] = mapped_column(
        ForeignKey("journal_transactions.id")
    )
    reversed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Hold(Base):
    __tablename__ = "holds"
    __table_args__ = (Index("ix_holds_org_env_status", "organization_id", "environment", "status"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"))
    operation: Mapped[str] = mapped_column(String(100))
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    #: active | settled | released | expired
    status: Mapped[str] = mapped_column(String(10))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    settled_event_id: Mapped[str | None] = mapped_column(String(255))


class ProjectUsage(Base):
    """Credits a project consumed in one calendar month (UTC), kept for its budget."""

    __tablename__ = "project_usage"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    environment: Mapped[str] = mapped_column(String(10), primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    #: When usage reaches this, the write enqueues a ``project_usage_check`` job (the next budget
    #: alert line, set by ``notify``); 0 on a new month's row: checked once.
    alert_at_micros: Mapped[int] = mapped_column(BigInteger, default=0)
