"""refunds

Revision ID: 0007_refunds
Revises: 0006_credit_notes_test_clocks
Create Date: 2026-11-26

Operator refunds of succeeded charges (``refunds``: pending until the processor answers, the credits
a refund of a purchase takes back, the client's Idempotency-Key); what was refunded of each charge
(``payments.refunded_minor``) and the charge a refund row belongs to (``payments.refund_of_id``); the
journal transaction that takes back the credits a credit note refunds as money
(``credit_notes.clawback_transaction_id``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditmeter.kit.db import UTCDateTime

revision = "0007_refunds"
down_revision = "0006_credit_notes_test_clocks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("refunded_minor", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("refund_of_id", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_payments_refund_of_id_payments"), "payments", ["refund_of_id"], ["id"]
        )
    with op.batch_alter_table("credit_notes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("clawback_transaction_id", sa.BigInteger(), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_credit_notes_clawback_transaction_id"), ["clawback_transaction_id"]
        )
    op.create_table(
        "refunds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("payment_id", sa.String(length=40), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("credits_micros", sa.BigInteger(), nullable=False),
        sa.Column("lot_id", sa.String(length=40), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("failure_code", sa.String(length=60), nullable=True),
        sa.Column("failure_message", sa.String(length=500), nullable=True),
        sa.Column("refund_payment_id", sa.String(length=40), nullable=True),
        sa.Column("transaction_id", sa.BigInteger(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_refunds_amount_positive")),
        sa.CheckConstraint("credits_micros >= 0", name=op.f("ck_refunds_credits_not_negative")),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed')", name=op.f("ck_refunds_status_known")
        ),
        sa.ForeignKeyConstraint(["lot_id"], ["lots.id"], name=op.f("fk_refunds_lot_id_lots")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_refunds_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_refunds_payment_id_payments")
        ),
        sa.ForeignKeyConstraint(
            ["refund_payment_id"],
            ["payments.id"],
            name=op.f("fk_refunds_refund_payment_id_payments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint(
            "payment_id", "idempotency_key", name=op.f("uq_refunds_payment_id_idempotency_key")
        ),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index(
            "ix_refunds_org_env_id", ["organization_id", "environment", "id"], unique=False
        )
        batch_op.create_index(
            "ix_refunds_payment_id_status", ["payment_id", "status"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index("ix_refunds_payment_id_status")
        batch_op.drop_index("ix_refunds_org_env_id")
    op.drop_table("refunds")
    with op.batch_alter_table("credit_notes", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("uq_credit_notes_clawback_transaction_id"), type_="unique"
        )
        batch_op.drop_column("clawback_transaction_id")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_payments_refund_of_id_payments"), type_="foreignkey"
        )
        batch_op.drop_column("refund_of_id")
        batch_op.drop_column("refunded_minor")
