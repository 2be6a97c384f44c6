"""notifications: balance marks, events, webhooks, alert rules, e-mails

Revision ID: 0013_notifications
Revises: 0012_withheld_allocations
Create Date: 2026-12-04

``balance_marks`` and the band / paused state of each balance (``ledger.marks``: crossings recorded by
the write that crosses), ``project_usage.alert_at_micros`` (budget alerts), and the tables of
``notify``: catalog events, webhook endpoints, deliveries and attempts, alert rules, e-mails and
members' notification preferences. Each balance's paused state starts from its materialized
available credits (lots minus arrears minus held).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditmeter.kit.db import UTCDateTime

revision = "0013_notifications"
down_revision = "0012_withheld_allocations"
branch_labels = None
depends_on = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("balances") as batch:
        batch.add_column(sa.Column("band_low_micros", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("band_high_micros", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("paused_since", UTCDateTime(), nullable=True))
        batch.add_column(
            sa.Column("refresh_on_grant", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute(
        "UPDATE balances SET paused_since = updated_at, band_high_micros = 1 "
        "WHERE lots_micros - arrears_micros - held_micros <= 0"
    )
    op.execute(
        "UPDATE balances SET band_low_micros = 1 "
        "WHERE lots_micros - arrears_micros - held_micros > 0"
    )
    with op.batch_alter_table("project_usage") as batch:
        batch.add_column(
            sa.Column("alert_at_micros", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "balance_marks",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("below_micros", sa.BigInteger(), nullable=False),
        sa.Column("rearm_micros", sa.BigInteger(), nullable=False),
        sa.Column("fired", sa.Boolean(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "rearm_micros >= below_micros", name=op.f("ck_balance_marks_rearm_not_below")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_balance_marks")),
        sa.UniqueConstraint("owner", name=op.f("uq_balance_marks_owner")),
    )
    op.create_index("ix_balance_marks_org_env", "balance_marks", ["organization_id", "environment"])
    op.create_table(
        "notification_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=60), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=True),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("source_key", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_events")),
        sa.UniqueConstraint("source_key", name=op.f("uq_notification_events_source_key")),
    )
    op.create_index(
        "ix_notification_events_org_env_created",
        "notification_events",
        ["organization_id", "environment", "id"],
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=True),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("previous_secret", sa.String(length=100), nullable=True),
        sa.Column("previous_secret_until", UTCDateTime(), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("disabled_reason", sa.String(length=300), nullable=True),
        sa.Column("disabled_at", UTCDateTime(), nullable=True),
        sa.Column("failing_since", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('enabled', 'disabled')", name=op.f("ck_webhook_endpoints_status")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_webhook_endpoints_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(
        "ix_webhook_endpoints_org_env", "webhook_endpoints", ["organization_id", "environment"]
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["notification_events.id"],
            name=op.f("fk_webhook_deliveries_event_id_notification_events"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_webhook_deliveries_dedupe_key")),
    )
    op.create_index("ix_webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "id"])
    op.create_index("ix_webhook_deliveries_event", "webhook_deliveries", ["event_id"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("response_excerpt", sa.String(length=1000), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id", "number"])
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.Column("hysteresis_bp", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=True),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("triggered_at", UTCDateTime(), nullable=True),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.Column("last_value", sa.String(length=60), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("state IN ('ok', 'triggered')", name=op.f("ck_alert_rules_state")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_alert_rules_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_alert_rules_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rules")),
    )
    op.create_index("ix_alert_rules_org_env", "alert_rules", ["organization_id", "environment"])
    op.create_table(
        "emails",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=True),
        sa.Column("environment", sa.String(length=10), nullable=True),
        sa.Column("event_id", sa.String(length=40), nullable=True),
        sa.Column("dedupe_key", sa.String(length=300), nullable=False),
        sa.Column("to_address", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=False),
        sa.Column("html_body", sa.Text(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'sent', 'failed', 'held')", name=op.f("ck_emails_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_emails")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_emails_dedupe_key")),
    )
    op.create_index("ix_emails_org_env", "emails", ["organization_id", "environment", "id"])
    op.create_table(
        "notification_preferences",
        sa.Column("member_id", sa.String(length=40), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=True),
        sa.Column("unsubscribed", sa.Boolean(), nullable=False),
        sa.Column("unsubscribe_token", sa.String(length=64), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_notification_preferences_member_id_members"),
        ),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_notification_preferences")),
        sa.UniqueConstraint(
            "unsubscribe_token", name=op.f("uq_notification_preferences_unsubscribe_token")
        ),
    )


def downgrade() -> None:
    op.drop_table("notification_preferences")
    op.drop_index("ix_emails_org_env", table_name="emails")
    op.drop_table("emails")
    op.drop_index("ix_alert_rules_org_env", table_name="alert_rules")
    op.drop_table("alert_rules")
    op.drop_index("ix_webhook_attempts_delivery", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_event", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_endpoint", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhook_endpoints_org_env", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_notification_events_org_env_created", table_name="notification_events")
    op.drop_table("notification_events")
    op.drop_index("ix_balance_marks_org_env", table_name="balance_marks")
    op.drop_table("balance_marks")
    with op.batch_alter_table("project_usage") as batch:
        batch.drop_column("alert_at_micros")
    with op.batch_alter_table("balances") as batch:
        batch.drop_column("refresh_on_grant")
        batch.drop_column("paused_since")
        batch.drop_column("band_high_micros")
        batch.drop_column("band_low_micros")
