"""billing subscriptions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Subscriptions (one per organization and environment, with a snapshot of the plan terms, the end of
the last period allocated and a pending downgrade or cancellation) and plan allocations (each plan
lot granted with the fee it owes, for the invoice of its period to read later).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditmeter.kit.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("allocated_through", UTCDateTime(), nullable=False),
        sa.Column("pending_action", sa.String(length=10), nullable=True),
        sa.Column("pending_terms", sa.JSON(), nullable=True),
        sa.Column("pending_effective_at", UTCDateTime(), nullable=True),
        sa.Column("canceled_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "pending_action IS NULL OR pending_action IN ('change', 'cancel')",
            name=op.f("ck_subscriptions_pending_action_known"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'canceled')", name=op.f("ck_subscriptions_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_subscriptions_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint(
            "organization_id",
            "environment",
            name=op.f("uq_subscriptions_organization_id_environment"),
        ),
    )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_subscriptions_status_allocated_through",
            ["status", "allocated_through"],
            unique=False,
        )

    op.create_table(
        "plan_allocations",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("period_end", UTCDateTime(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("credits_micros", sa.BigInteger(), nullable=False),
        sa.Column("lot_id", sa.String(length=40), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("fee_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("share_remaining_us", sa.BigInteger(), nullable=False),
        sa.Column("share_total_us", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=True),
        sa.CheckConstraint(
            "kind IN ('initial', 'cycle', 'upgrade')", name=op.f("ck_plan_allocations_kind_known")
        ),
        sa.CheckConstraint(
            "credits_micros >= 0", name=op.f("ck_plan_allocations_credits_not_negative")
        ),
        sa.CheckConstraint("fee_minor >= 0", name=op.f("ck_plan_allocations_fee_not_negative")),
        sa.ForeignKeyConstraint(
            ["lot_id"], ["lots.id"], name=op.f("fk_plan_allocations_lot_id_lots")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_plan_allocations_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_plan_allocations_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_allocations")),
        sa.UniqueConstraint(
            "subscription_id",
            "period_start",
            "sequence",
            name=op.f("uq_plan_allocations_subscription_id_period_start_sequence"),
        ),
    )
    with op.batch_alter_table("plan_allocations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_plan_allocations_org_env_period",
            ["organization_id", "environment", "period_start"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("plan_allocations", schema=None) as batch_op:
        batch_op.drop_index("ix_plan_allocations_org_env_period")

    op.drop_table("plan_allocations")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriptions_status_allocated_through")

    op.drop_table("subscriptions")
