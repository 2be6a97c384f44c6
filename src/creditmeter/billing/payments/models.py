"""Tables of payments: the processor's customer of each organization, stored payment methods (token,
brand, last four digits and expiry only: never a card number), the billing history of charges and
refunds, credit purchases, and auto top-up settings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from creditmeter.kit.db import Base, UTCDateTime


class PaymentCustomer(Base):
    """The processor's customer of an organization in one environment, per provider."""

    __tablename__ = "payment_customers"
    __table_args__ = (UniqueConstraint("organization_id", "environment", "provider"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    provider: Mapped[str] = mapped_column(String(20))
    provider_customer_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PaymentMethod(Base):
    """A card attached at the processor. ``token`` is the processor's id for it; the full number is
    never stored. At most one attached method per organization and environment is the default (a
    partial unique index). Detaching sets ``detached_at``; the row stays for the billing history."""

    __tablename__ = "payment_methods"
    __table_args__ = (
        Index(
            "uq_payment_methods_one_default",
            "organization_id",
            "environment",
            unique=True,
            sqlite_where=text("is_default AND detached_at IS NULL"),
            postgresql_where=text("is_default AND detached_at IS NULL"),
        ),
        Index("ix_payment_methods_org_env", "organization_id", "environment"),
        CheckConstraint("exp_month BETWEEN 1 AND 12", name="exp_month_range"),
        CheckConstraint("length(last4) = 4", name="last4_four_digits"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    provider: Mapped[str] = mapped_column(String(20))
    token: Mapped[str] = mapped_column(String(255))
    brand: Mapped[str] = mapped_column(String(20))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int] = mapped_column(Integer)
    exp_year: Mapped[int] = mapped_column(Integer)
    is_default: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    detached_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Payment(Base):
    """One line of billing history: a charge or a refund, succeeded or failed, with the processor's
    reason. ``idempotency_key`` is the key the processor was called with (unique: one row per
    attempt); ``reference_id`` names what it paid for (a purchase, an invoice). A charge's
    ``refunded_minor`` is what succeeded refunds gave back of it; a refund names its charge in
    ``refund_of_id``."""

    __tablename__ = "payments"
    __table_args__ = (
        UniqueConstraint("idempotency_key"),
        CheckConstraint("kind IN ('charge', 'refund')", name="kind_known"),
        CheckConstraint("purpose IN ('purchase', 'invoice', 'auto_top_up')", name="purpose_known"),
        CheckConstraint("status IN ('succeeded', 'failed')", name="status_known"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        Index("ix_payments_org_env_id", "organization_id", "environment", "id"),
        Index("ix_payments_reference_id", "reference_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    kind: Mapped[str] = mapped_column(String(10))
    purpose: Mapped[str] = mapped_column(String(20))
    reference_id: Mapped[str] = mapped_column(String(40))
    payment_method_id: Mapped[str | None] = mapped_column(ForeignKey("payment_methods.id"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(10))
    failure_code: Mapped[str | None] = mapped_column(String(60))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    provider: Mapped[str] = mapped_column(String(20))
    provider_id: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    refund_of_id: Mapped[str | None] = mapped_column(ForeignKey("payments.id"))


class Refund(Base):
    """An operator's refund of a succeeded charge: ``pending`` until the processor's answer is
    recorded, then ``succeeded`` or ``failed``. ``credits_micros`` are the credits a refund of a
    purchase takes back from ``lot_id`` (0 for an invoice payment); ``transaction_id`` is the journal
    transaction that took them. ``refund_payment_id`` is its row in the billing history.
    ``idempotency_key`` is the client's key (unique per charge) and ``request_hash`` what it was sent
    with; the processor is called with ``refund:<id>``, so finishing a pending refund never refunds
    twice."""

    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("payment_id", "idempotency_key"),
        CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="status_known"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint("credits_micros >= 0", name="credits_not_negative"),
        Index("ix_refunds_org_env_id", "organization_id", "environment", "id"),
        Index("ix_refunds_payment_id_status", "payment_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    payment_id: Mapped[str] = mapped_column(ForeignKey("payments.id"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    lot_id: Mapped[str | None] = mapped_column(ForeignKey("lots.id"))
    reason: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(10))
    failure_code: Mapped[str | None] = mapped_column(String(60))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    refund_payment_id: Mapped[str | None] = mapped_column(ForeignKey("payments.id"))
    transaction_id: Mapped[int | None] = mapped_column(BigInteger)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


#: The on-account purchases no invoice has billed yet (what the invoice step looks for).
_UNBILLED = text("billing = 'on_account' AND invoice_id IS NULL")


class Purchase(Base):
    """A purchase of credits: ``pending`` until the charge's outcome is recorded, then
    ``succeeded`` (with the lot it granted) or ``failed``. ``idempotency_key`` is the client's key
    (unique per organization and environment) and ``request_hash`` what it was sent with; the
    processor is charged with ``purchase:<id>`` as its key, so re-running a pending purchase never
    charges twice. ``billing`` ``on_account``: no card and no charge (``payment_method_id`` and
    ``payment_id`` stay null), ``succeeded`` when recorded, and billed once by the invoice of its
    month (``invoice_id``, set in the invoice's own transaction)."""

    __tablename__ = "purchases"
    __table_args__ = (
        UniqueConstraint("organization_id", "environment", "idempotency_key"),
        CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="status_known"),
        CheckConstraint("purpose IN ('purchase', 'auto_top_up')", name="purpose_known"),
        CheckConstraint("credits_micros > 0", name="credits_positive"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint("billing IN ('charge', 'on_account')", name="billing_known"),
        Index("ix_purchases_org_env_status", "organization_id", "environment", "status"),
        Index(
            "ix_purchases_unbilled",
            "organization_id",
            "created_at",
            sqlite_where=_UNBILLED,
            postgresql_where=_UNBILLED,
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    purpose: Mapped[str] = mapped_column(String(20))
    package: Mapped[str | None] = mapped_column(String(40))
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    price_micros: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    payment_method_id: Mapped[str | None] = mapped_column(ForeignKey("payment_methods.id"))
    billing: Mapped[str] = mapped_column(String(10), server_default="charge")
    invoice_id: Mapped[str | None] = mapped_column(ForeignKey("invoices.id"))
    status: Mapped[str] = mapped_column(String(10))
    failure_code: Mapped[str | None] = mapped_column(String(60))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    lot_id: Mapped[str | None] = mapped_column(ForeignKey("lots.id"))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    payment_id: Mapped[str | None] = mapped_column(ForeignKey("payments.id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AutoTopUp(Base):
    """An organization's auto top-up: buy ``credits_micros`` (``package`` or a custom amount) when
    available credits fall below ``threshold_micros``, at most ``monthly_limit_minor`` per billing
    period. A decline turns it off and records why (``disabled_reason``)."""

    __tablename__ = "auto_top_ups"
    __table_args__ = (
        UniqueConstraint("organization_id", "environment"),
        Index("ix_auto_top_ups_enabled", "enabled"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    enabled: Mapped[bool] = mapped_column(Boolean)
    threshold_micros: Mapped[int] = mapped_column(BigInteger)
    package: Mapped[str | None] = mapped_column(String(40))
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    monthly_limit_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
