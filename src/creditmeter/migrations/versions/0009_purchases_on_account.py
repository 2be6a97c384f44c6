"""purchases billed on account

Revision ID: 0009_purchases_on_account
Revises: 0008_outbox_jobs
Create Date: 2026-11-26

How a purchase is paid (``purchases.billing``: ``charge``, the card at once, what every existing
purchase was; or ``on_account``, billed on the invoice of its month), the invoice that billed an
on-account purchase (``purchases.invoice_id``), a payment method only for a charged purchase
(``payment_method_id`` nullable), and a partial index of the on-account purchases not billed yet.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_purchases_on_account"
down_revision = "0008_outbox_jobs"
branch_labels = None
depends_on = None

_UNBILLED = sa.text("billing = 'on_account' AND invoice_id IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("billing", sa.String(length=10), server_default="charge", nullable=False)
        )
        batch_op.add_column(sa.Column("invoice_id", sa.String(length=40), nullable=True))
        batch_op.alter_column(
            "payment_method_id", existing_type=sa.String(length=40), nullable=True
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_purchases_invoice_id_invoices"), "invoices", ["invoice_id"], ["id"]
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_purchases_billing_known"), "billing IN ('charge', 'on_account')"
        )
    op.create_index(
        "ix_purchases_unbilled",
        "purchases",
        ["organization_id", "created_at"],
        unique=False,
        sqlite_where=_UNBILLED,
        postgresql_where=_UNBILLED,
    )


def downgrade() -> None:
    on_account = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM purchases WHERE billing = 'on_account'")
    )
    if on_account:
        raise RuntimeError(
            f"{on_account} purchases were bought on account; revision 0008 has no way to record "
            "them: keep 0009 (or delete them by hand, knowing their credits were granted)"
        )
    op.drop_index("ix_purchases_unbilled", table_name="purchases")
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_purchases_billing_known"), type_="check")
        batch_op.drop_constraint(batch_op.f("fk_purchases_invoice_id_invoices"), type_="foreignkey")
        batch_op.alter_column(
            "payment_method_id", existing_type=sa.String(length=40), nullable=False
        )
        batch_op.drop_column("invoice_id")
        batch_op.drop_column("billing")
