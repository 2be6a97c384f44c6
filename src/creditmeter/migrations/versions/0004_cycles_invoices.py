"""cycle closes and invoices

Revision ID: 0004_cycles_invoices
Revises: 0003
Create Date: 2026-11-25

Cycle closes (one per organization, environment and closed period, with the last step reached, so a
rerun resumes where a crash stopped), the closed month's usage statement (by operation and by
project), the invoice number counters (one row per series: numbers are allocated in the invoice's own
transaction, so they are gapless), invoices and their lines.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditmeter.kit.db import UTCDateTime

revision = "0004_cycles_invoices"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "invoice_counters",
        sa.Column("series", sa.String(length=20), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("series", name=op.f("pk_invoice_counters")),
    )
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=True),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("period_end", UTCDateTime(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("subtotal_minor", sa.BigInteger(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("customer", sa.JSON(), nullable=False),
        sa.Column("seller", sa.JSON(), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("paid_at", UTCDateTime(), nullable=True),
        sa.Column("voided_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('open', 'paid', 'past_due', 'void')",
            name=op.f("ck_invoices_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_invoices_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_invoices_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("number", name=op.f("uq_invoices_number")),
        sa.UniqueConstraint(
            "organization_id",
            "environment",
            "period_start",
            name=op.f("uq_invoices_organization_id_environment_period_start"),
        ),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index("ix_invoices_organization_id_id", ["organization_id", "id"])
        batch_op.create_index("ix_invoices_status_due_at", ["status", "due_at"])

    op.create_table(
        "invoice_lines",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("description", sa.String(length=300), nullable=False),
        sa.Column("quantity", sa.String(length=40), nullable=False),
        sa.Column("unit_price", sa.String(length=40), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("credits_micros", sa.BigInteger(), nullable=True),
        sa.Column("service_start", UTCDateTime(), nullable=True),
        sa.Column("service_end", UTCDateTime(), nullable=True),
        sa.Column("plan_allocation_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('plan_fee', 'proration', 'package', 'overage', 'credit_note', 'adjustment')",
            name=op.f("ck_invoice_lines_kind_known"),
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_invoice_lines_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_lines")),
        sa.UniqueConstraint(
            "invoice_id", "position", name=op.f("uq_invoice_lines_invoice_id_position")
        ),
    )
    op.create_table(
        "cycle_closes",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("period_end", UTCDateTime(), nullable=False),
        sa.Column("step", sa.String(length=12), nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=True),
        sa.Column("expired_micros", sa.BigInteger(), nullable=False),
        sa.Column("allocated_micros", sa.BigInteger(), nullable=False),
        sa.Column("overage_micros", sa.BigInteger(), nullable=False),
        sa.Column("overage_price_micros", sa.BigInteger(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "step IN ('started', 'statement', 'expiry', 'allocation', 'invoice', 'charge')",
            name=op.f("ck_cycle_closes_step_known"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_cycle_closes_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_cycle_closes_subscription_id_subscriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_cycle_closes_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cycle_closes")),
        sa.UniqueConstraint(
            "organization_id",
            "environment",
            "period_start",
            name=op.f("uq_cycle_closes_organization_id_environment_period_start"),
        ),
    )
    with op.batch_alter_table("cycle_closes", schema=None) as batch_op:
        batch_op.create_index("ix_cycle_closes_completed_at", ["completed_at"])

    op.create_table(
        "usage_statement_lines",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("dimension", sa.String(length=10), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("credits_micros", sa.BigInteger(), nullable=False),
        sa.Column("quantities", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "dimension IN ('operation', 'project')",
            name=op.f("ck_usage_statement_lines_dimension_known"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_usage_statement_lines_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_statement_lines")),
        sa.UniqueConstraint(
            "organization_id",
            "environment",
            "period_start",
            "dimension",
            "key",
            name=op.f("uq_usage_statement_lines_period_key"),
        ),
    )


def downgrade() -> None:
    op.drop_table("usage_statement_lines")
    with op.batch_alter_table("cycle_closes", schema=None) as batch_op:
        batch_op.drop_index("ix_cycle_closes_completed_at")
    op.drop_table("cycle_closes")
    op.drop_table("invoice_lines")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoices_status_due_at")
        batch_op.drop_index("ix_invoices_organization_id_id")
    op.drop_table("invoices")
    op.drop_table("invoice_counters")
