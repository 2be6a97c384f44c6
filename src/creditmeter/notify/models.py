"""Tables of notifications: the events of the catalog, webhook endpoints with their deliveries and
attempts, alert rules, e-mails and members' notification preferences."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from creditmeter.kit.db import Base, BigIntPK, UTCDateTime


class NotificationEvent(Base):
    """One event of the catalog (``notify.catalog``), as sent to webhooks: immutable once written."""

    __tablename__ = "notification_events"
    __table_args__ = (
        Index("ix_notification_events_org_env_created", "organization_id", "environment", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # evt_<ulid>: sortable
    type: Mapped[str] = mapped_column(String(60))
    version: Mapped[int] = mapped_column(Integer)
    organization_id: Mapped[str | None] = mapped_column(String(40))
    environment: Mapped[str] = mapped_column(String(10))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: What caused the event, unique: the same cause publishes it once (a job run twice).
    source_key: Mapped[str | None] = mapped_column(String(200), unique=True)


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        CheckConstraint("status IN ('enabled', 'disabled')", name="status"),
        Index("ix_webhook_endpoints_org_env", "organization_id", "environment"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # we_<ulid>
    #: None: an operator's endpoint, sent the events of every organization.
    organization_id: Mapped[str | None] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(500), default="")
    #: Event types sent (exact names, or ``prefix.*``); empty: every type.
    event_types: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))
    #: The secret before the last rotation, still signed with until ``previous_secret_until``.
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(10))
    disabled_reason: Mapped[str | None] = mapped_column(String(300))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Since when every attempt failed (None after a success): past 5 days it is disabled.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One event to send to one endpoint (automatic, a redelivery or a test), tried until it
    succeeds or its schedule runs out."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'succeeded', 'failed', 'cancelled')", name="status"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_event", "event_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # wd_<ulid>
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"))
    event_id: Mapped[str] = mapped_column(ForeignKey("notification_events.id"))
    #: ``auto:<endpoint>:<event>`` for the automatic delivery (one per endpoint and event); a
    #: redelivery or a test has its own.
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # automatic | redelivery | test
    status: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "number"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"))
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    succeeded: Mapped[bool] = mapped_column(Boolean)
    response_excerpt: Mapped[str] = mapped_column(String(1000), default="")
    error: Mapped[str | None] = mapped_column(String(500))


class AlertRule(Base):
    """One alert level: a type, a threshold and its recipients (several levels of one type are
    several rules). ``state`` is ``ok`` or ``triggered``; balance types keep theirs in a mark of
    ``ledger.marks`` (owner ``alert:<id>``) and mirror it here."""

    __tablename__ = "alert_rules"
    __table_args__ = (
        CheckConstraint("state IN ('ok', 'triggered')", name="state"),
        Index("ix_alert_rules_org_env", "organization_id", "environment"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # alr_<ulid>
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    environment: Mapped[str] = mapped_column(String(10))
    type: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(200), default="")
    #: Credits types: micro-credits; percent types: hundredths of a percent; day types: days.
    threshold: Mapped[int] = mapped_column(BigInteger)
    #: The recovery margin, in hundredths of a percent of the threshold (1000 = 10 %).
    hysteresis_bp: Mapped[int] = mapped_column(Integer)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"))
    #: E-mail addresses told; empty: the organization's owners and admins.
    recipients: Mapped[list[str]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str] = mapped_column(String(10))
    triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The value seen at the last change of state, as shown (e.g. ``"120.5"``).
    last_value: Mapped[str | None] = mapped_column(String(60))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Email(Base):
    """A message to one recipient: sent over SMTP by the worker, or kept here (``held``) when no
    SMTP server is configured."""

    __tablename__ = "emails"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'sent', 'failed', 'held')", name="status"),
        Index("ix_emails_org_env", "organization_id", "environment", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # em_<ulid>
    organization_id: Mapped[str | None] = mapped_column(String(40))
    environment: Mapped[str | None] = mapped_column(String(10))
    event_id: Mapped[str | None] = mapped_column(String(40))
    #: One message per cause and recipient.
    dedupe_key: Mapped[str] = mapped_column(String(300), unique=True)
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    text_body: Mapped[str] = mapped_column(Text)
    html_body: Mapped[str] = mapped_column(Text)
    #: Files to attach, by reference: ``[{"kind": "invoice_pdf", "id": "inv_…"}]``.
    attachments: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class NotificationPreference(Base):
    """A member's choice of e-mails: which event types (None: the defaults), or none at all."""

    __tablename__ = "notification_preferences"

    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"), primary_key=True)
    event_types: Mapped[list[str] | None] = mapped_column(JSON)
    unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The secret of the unsubscribe link in every e-mail (no sign-in needed to unsubscribe).
    unsubscribe_token: Mapped[str] = mapped_column(String(64), unique=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


__all__ = [
    "AlertRule",
    "Email",
    "NotificationEvent",
    "NotificationPreference",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
