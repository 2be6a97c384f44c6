"""why an invoice was voided

Revision ID: 0010_invoice_void_reason
Revises: 0009_purchases_on_account
Create Date: 2026-11-26

``invoices.void_reason``: what the operator said when voiding the invoice (``POST
/v1/invoices/{id}/void``); ``voided_at`` already records when.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_invoice_void_reason"
down_revision = "0009_purchases_on_account"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("void_reason", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_column("void_reason")
