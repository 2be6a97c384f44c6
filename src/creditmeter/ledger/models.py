"""Tables of the ledger: lots, journal transactions, postings and materialized balances."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from creditmeter.kit.db import Base, BigIntPK, UTCDateTime


class Lot(Base):
    __tablename__ = "lots"
    __table_args__ = (
        CheckConstraint("remaining_micros >= 0", name="remaining_not_negative"),
        CheckConstraint("amount_micros > 0", name="amount_positive"),
        Index("ix_lots_org_env", "organization_id", "environment"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    source: Mapped[str] = mapped_column(String(20))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    remaining_micros: Mapped[int] = mapped_column(BigInteger)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    priority: Mapped[int] = mapped_column(Integer, default=100)
    #: Money paid per credit, in millionths of the currency's major unit (USD 0.01 = 10_000).
    cost_basis_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JournalTransaction(Base):
    __tablename__ = "journal_transactions"
    __table_args__ = (Index("ix_journal_org_env_id", "organization_id", "environment", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    kind: Mapped[str] = mapped_column(String(30))
    description: Mapped[str] = mapped_column(String(500))
    #: The transaction this one reverses; unique, so a transaction is reversed at most once.
    reverses_id: Mapped[int | None] = mapped_column(
        ForeignKey("journal_transactions.id"), unique=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Posting(Base):
    __tablename__ = "postings"
    __table_args__ = (
        CheckConstraint("amount_micros <> 0", name="amount_not_zero"),
        Index("ix_postings_transaction_id", "transaction_id"),
        Index("ix_postings_lot_id", "lot_id"),
        Index("ix_postings_org_account", "organization_id", "account"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("journal_transactions.id"))
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    account: Mapped[str] = mapped_column(String(80))
    lot_id: Mapped[str | None] = mapped_column(ForeignKey("lots.id"))
    amount_micros: Mapped[int] = mapped_column(BigInteger)


class Balance(Base):
    """Materialized sums of an organization's accounts in one environment.

    ``lots_micros`` = sum of all lot postings (= sum of ``lots.remaining_micros``);
    ``arrears_micros`` = minus the ``arrears`` account (never negative);
    ``held_micros`` = the ``held`` account.
    ``watch_below_micros`` is no sum: the low-balance mark of ``ledger.watch``; nor are the band,
    ``paused_since`` and ``refresh_on_grant`` of ``ledger.marks``.
    """

    __tablename__ = "balances"
    __table_args__ = (CheckConstraint("arrears_micros >= 0", name="arrears_not_negative"),)

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    environment: Mapped[str] = mapped_column(String(10), primary_key=True)
    lots_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    arrears_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    held_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    #: When a write leaves available credits below this, the ledger enqueues a ``low_balance`` job
    #: (``ledger.watch``); None: not watched.
    watch_below_micros: Mapped[int | None] = mapped_column(BigInteger)
    #: The highest mark line available credits may not go below without a crossing
    #: (``ledger.marks``); None: none can fire.
    band_low_micros: Mapped[int | None] = mapped_column(BigInteger)
    #: The lowest line whose reaching re-arms a fired mark or resumes; None: none.
    band_high_micros: Mapped[int | None] = mapped_column(BigInteger)
    #: Since when available credits are at or below zero (the organization is paused); None: not.
    paused_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Whether a grant enqueues a ``marks_refresh`` job (a mark depends on credits granted).
    refresh_on_grant: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
