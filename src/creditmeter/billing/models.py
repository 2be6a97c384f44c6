"""Tables of billing: subscriptions, the plan allocations (credits granted, fee owed) they made,
cycle closes with the usage statements they finalize, and invoices."""

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
from sqlalchemy.sql.naming import conv

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


class WithheldAllocation(Base):
    """A cycle's plan allocation that the cycle close withheld because the organization was
    suspended for non-payment when the cycle began: the full credits and fee it would have had, and
    the lot's expiry. Nothing was granted and no fee is billed for it.

    ``released_at`` and ``plan_allocation_id`` are set when the suspension ends inside that cycle
    and the rest of the cycle is allocated then (prorated, billed like any allocation); a row whose
    cycle ended unreleased has lapsed. One per subscription and cycle (unique), so a cycle is
    withheld, and released, at most once."""

    __tablename__ = "withheld_allocations"
    __table_args__ = (
        UniqueConstraint("subscription_id", "period_start"),
        CheckConstraint("credits_micros >= 0", name="credits_not_negative"),
        CheckConstraint("fee_minor >= 0", name="fee_not_negative"),
        Index("ix_withheld_allocations_org_released", "organization_id", "released_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id"))
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    plan: Mapped[str] = mapped_column(String(40))
    terms: Mapped[dict[str, Any]] = mapped_column(JSON)
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    fee_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    withheld_at: Mapped[datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    plan_allocation_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("plan_allocations.id")
    )


class CycleClose(Base):
    """The cycle close of one organization, environment and closed period, and the last step it
    finished (``started`` → ``statement`` → ``expiry`` → ``allocation`` → ``invoice`` → ``charge``).

    Each step runs in its own transaction together with the update of ``step``, so a rerun after a
    crash starts at the first step not recorded. The unique constraint makes the close of a period
    happen at most once. ``completed_at`` is set with the last step. ``expired_micros`` and
    ``allocated_micros`` report what the close did; ``overage_micros`` is the arrears a plan with
    ``overage_in_arrears`` had at the boundary, settled at ``overage_price_micros`` per credit and
    billed on the invoice."""

    __tablename__ = "cycle_closes"
    __table_args__ = (
        UniqueConstraint("organization_id", "environment", "period_start"),
        CheckConstraint(
            "step IN ('started', 'statement', 'expiry', 'allocation', 'invoice', 'charge')",
            name="step_known",
        ),
        Index("ix_cycle_closes_completed_at", "completed_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id"))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    step: Mapped[str] = mapped_column(String(12))
    invoice_id: Mapped[str | None] = mapped_column(ForeignKey("invoices.id"))
    expired_micros: Mapped[int] = mapped_column(BigInteger)
    allocated_micros: Mapped[int] = mapped_column(BigInteger)
    overage_micros: Mapped[int] = mapped_column(BigInteger)
    overage_price_micros: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class UsageStatementLine(Base):
    """One line of a closed month's usage statement: the usage of one operation or one project
    (``key`` is the operation, the project id, or ``""`` for usage without a project).
    ``quantities`` maps each dimension to its exact total as a decimal string."""

    __tablename__ = "usage_statement_lines"
    __table_args__ = (
        UniqueConstraint(
            "organization_id",
            "environment",
            "period_start",
            "dimension",
            "key",
            name=conv("uq_usage_statement_lines_period_key"),
        ),
        CheckConstraint("dimension IN ('operation', 'project')", name="dimension_known"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    dimension: Mapped[str] = mapped_column(String(10))
    key: Mapped[str] = mapped_column(String(100))
    label: Mapped[str] = mapped_column(String(200))
    event_count: Mapped[int] = mapped_column(BigInteger)
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    quantities: Mapped[dict[str, str]] = mapped_column(JSON)


class InvoiceCounter(Base):
    """The last invoice number given in a series (``INV-2026``). The number of a new invoice is
    taken by incrementing this row in the invoice's own transaction: a rollback gives it back, so
    numbers have no gaps, and the row lock makes concurrent invoices take distinct numbers."""

    __tablename__ = "invoice_counters"

    series: Mapped[str] = mapped_column(String(20), primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger)


class Invoice(Base):
    """The invoice of one organization, environment and closed period, issued on the 1st of the
    next. Amounts are integer minor units of ``currency``; ``total_minor`` is the sum of the lines.
    ``customer`` and ``seller`` are snapshots taken when it was issued: an invoice is never edited
    afterwards, except for its status (``open``, ``paid``, ``past_due``, ``void``)."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("organization_id", "environment", "period_start"),
        CheckConstraint("status IN ('open', 'paid', 'past_due', 'void')", name="status_known"),
        Index("ix_invoices_organization_id_id", "organization_id", "id"),
        Index("ix_invoices_status_due_at", "status", "due_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    number: Mapped[str] = mapped_column(String(40), unique=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    subscription_id: Mapped[str | None] = mapped_column(ForeignKey("subscriptions.id"))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    currency: Mapped[str] = mapped_column(String(3))
    subtotal_minor: Mapped[int] = mapped_column(BigInteger)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(10))
    customer: Mapped[dict[str, Any]] = mapped_column(JSON)
    seller: Mapped[dict[str, Any]] = mapped_column(JSON)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    void_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class InvoiceLine(Base):
    """One line of an invoice. ``quantity`` and ``unit_price`` (major units) are exact decimal
    strings for display; ``amount_minor`` is what the line adds to the total (negative for a credit
    note). ``service_*`` is the time the line pays for; ``plan_allocation_id`` the allocation
    it bills, if any."""

    __tablename__ = "invoice_lines"
    __table_args__ = (
        UniqueConstraint("invoice_id", "position"),
        CheckConstraint(
            "kind IN ('plan_fee', 'proration', 'package', 'overage', 'credit_note', 'adjustment')",
            name="kind_known",
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(12))
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[str] = mapped_column(String(40))
    unit_price: Mapped[str | None] = mapped_column(String(40))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    credits_micros: Mapped[int | None] = mapped_column(BigInteger)
    service_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    service_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    plan_allocation_id: Mapped[int | None] = mapped_column(BigInteger)


class CreditNote(Base):
    """A correction of a period already invoiced (a reversed usage event, a reversed journal
    transaction): the credits given back now and, if the invoice billed money for them (overage),
    the money credited. Issued against the invoice, which itself is never edited. Numbers are
    gapless like invoice numbers (``CN-2026-000001``, counted in ``invoice_counters``);
    ``transaction_id`` is the ledger transaction that re-credited the organization (one note each).
    ``billed_micros`` are the credits of the note the invoice billed money for: they come back as
    money only, so ``clawback_transaction_id`` took them off again (each credit comes back once)."""

    __tablename__ = "credit_notes"
    __table_args__ = (
        CheckConstraint("credits_micros > 0", name="credits_positive"),
        CheckConstraint("amount_minor >= 0", name="amount_not_negative"),
        CheckConstraint("source IN ('usage_reversal', 'ledger_reversal')", name="source_known"),
        Index("ix_credit_notes_organization_id_id", "organization_id", "id"),
        Index("ix_credit_notes_invoice_id", "invoice_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    number: Mapped[str] = mapped_column(String(40), unique=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    source: Mapped[str] = mapped_column(String(20))
    reference: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(500))
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    billed_micros: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    transaction_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: The journal transaction that took back the credits refunded as money (``billed_micros``).
    clawback_transaction_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)


class CreditNoteApplication(Base):
    """Money of a credit note deducted on a later invoice (a ``credit_note`` line of that invoice).
    A note is applied up to what the invoice owes; the rest waits for the next one."""

    __tablename__ = "credit_note_applications"
    __table_args__ = (
        UniqueConstraint("credit_note_id", "invoice_id"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    credit_note_id: Mapped[str] = mapped_column(ForeignKey("credit_notes.id"))
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TestClock(Base):
    """A clock the operator sets and moves forward by hand; organizations attached to it are
    billed on its time instead of real time (``billing.test_clocks``)."""

    __tablename__ = "test_clocks"
    __test__ = False  # not a pytest class

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    frozen_time: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TestClockAttachment(Base):
    """An organization billed on a test clock (one clock per organization)."""

    __tablename__ = "test_clock_attachments"
    __test__ = False

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    test_clock_id: Mapped[str] = mapped_column(ForeignKey("test_clocks.id"), index=True)
    attached_at: Mapped[datetime] = mapped_column(UTCDateTime())
