"""credit notes and test clocks

Revision ID: 0006_credit_notes_test_clocks
Revises: 0005_payments
Create Date: 2026-11-25

Credit notes (corrections of a period already invoiced: credits given back, money credited when the
invoice billed it, numbered gaplessly in ``invoice_counters``) and their application to later
invoices; test clocks and the organizations attached to them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditmeter.kit.db import UTCDateTime

revision = "0006_credit_notes_test_clocks"
down_revision = "0005_payments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "test_clocks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("frozen_time", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_test_clocks")),
    )
    op.create_table(
        "test_clock_attachments",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("test_clock_id", sa.String(length=40), nullable=False),
        sa.Column("attached_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_test_clock_attachments_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["test_clock_id"],
            ["test_clocks.id"],
            name=op.f("fk_test_clock_attachments_test_clock_id_test_clocks"),
        ),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_test_clock_attachments")),
    )
    with op.batch_alter_table("test_clock_attachments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_test_clock_attachments_test_clock_id"), ["test_clock_id"], unique=False
        )

    op.create_table(
        "credit_notes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("credits_micros", sa.BigInteger(), nullable=False),
        sa.Column("billed_micros", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "source IN ('usage_reversal', 'ledger_reversal')",
            name=op.f("ck_credit_notes_source_known"),
        ),
        sa.CheckConstraint("amount_minor >= 0", name=op.f("ck_credit_notes_amount_not_negative")),
        sa.CheckConstraint("credits_micros > 0", name=op.f("ck_credit_notes_credits_positive")),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_credit_notes_invoice_id_invoices")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_credit_notes_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_notes")),
        sa.UniqueConstraint("number", name=op.f("uq_credit_notes_number")),
        sa.UniqueConstraint("transaction_id", name=op.f("uq_credit_notes_transaction_id")),
    )
    with op.batch_alter_table("credit_notes", schema=None) as batch_op:
        batch_op.create_index("ix_credit_notes_invoice_id", ["invoice_id"], unique=False)
        batch_op.create_index(
            "ix_credit_notes_organization_id_id", ["organization_id", "id"], unique=False
        )

    op.create_table(
        "credit_note_applications",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("credit_note_id", sa.String(length=40), nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "amount_minor > 0", name=op.f("ck_credit_note_applications_amount_positive")
        ),
        sa.ForeignKeyConstraint(
            ["credit_note_id"],
            ["credit_notes.id"],
            name=op.f("fk_credit_note_applications_credit_note_id_credit_notes"),
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.id"],
            name=op.f("fk_credit_note_applications_invoice_id_invoices"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_note_applications")),
        sa.UniqueConstraint(
            "credit_note_id",
            "invoice_id",
            name=op.f("uq_credit_note_applications_credit_note_id_invoice_id"),
        ),
    )


def downgrade() -> None:
    op.drop_table("credit_note_applications")
    with op.batch_alter_table("credit_notes", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_notes_organization_id_id")
        batch_op.drop_index("ix_credit_notes_invoice_id")

    op.drop_table("credit_notes")
    with op.batch_alter_table("test_clock_attachments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_test_clock_attachments_test_clock_id"))

    op.drop_table("test_clock_attachments")
    op.drop_table("test_clocks")
