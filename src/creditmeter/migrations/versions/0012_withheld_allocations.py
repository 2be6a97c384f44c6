"""plan allocations withheld while an organization is suspended

Revision ID: 0012_withheld_allocations
Revises: 0011_plan_proof_lookups
Create Date: 2026-12-04

``withheld_allocations``: the plan allocation of a cycle that began while the organization was
suspended for non-payment (the cycle close grants no lot and bills no fee for it), released for the
rest of that cycle if the suspension ends inside it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditmeter.kit.db import UTCDateTime

revision = "0012_withheld_allocations"
down_revision = "0011_plan_proof_lookups"
branch_labels = None
depends_on = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "withheld_allocations",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("period_end", UTCDateTime(), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("credits_micros", sa.BigInteger(), nullable=False),
        sa.Column("fee_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("withheld_at", UTCDateTime(), nullable=False),
        sa.Column("released_at", UTCDateTime(), nullable=True),
        sa.Column("plan_allocation_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "credits_micros >= 0", name=op.f("ck_withheld_allocations_credits_not_negative")
        ),
        sa.CheckConstraint("fee_minor >= 0", name=op.f("ck_withheld_allocations_fee_not_negative")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_withheld_allocations_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["plan_allocation_id"],
            ["plan_allocations.id"],
            name=op.f("fk_withheld_allocations_plan_allocation_id_plan_allocations"),
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_withheld_allocations_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_withheld_allocations")),
        sa.UniqueConstraint(
            "subscription_id",
            "period_start",
            name=op.f("uq_withheld_allocations_subscription_id_period_start"),
        ),
    )
    op.create_index(
        "ix_withheld_allocations_org_released",
        "withheld_allocations",
        ["organization_id", "released_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_withheld_allocations_org_released", table_name="withheld_allocations")
    op.drop_table("withheld_allocations")
