"""outbox jobs and the low-balance watch

Revision ID: 0008_outbox_jobs
Revises: 0007_refunds
Create Date: 2026-11-26

The outbox (``jobs``: background work written in the same transaction as its cause, claimed with a
lease; at most one pending job per dedupe key) and the low-balance mark of each balance
(``balances.watch_below_micros``), filled from the auto top-ups enabled today.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditmeter.kit.db import UTCDateTime

revision = "0008_outbox_jobs"
down_revision = "0007_refunds"
branch_labels = None
depends_on = None

_PENDING_ONLY = sa.text("state = 'pending'")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=60), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=True),
        sa.Column("environment", sa.String(length=10), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("run_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("done_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=2000), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'done', 'dead')", name=op.f("ck_jobs_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_state_run_at", "jobs", ["state", "run_at"], unique=False)
    op.create_index(
        "uq_jobs_pending_dedupe_key",
        "jobs",
        ["dedupe_key"],
        unique=True,
        sqlite_where=_PENDING_ONLY,
        postgresql_where=_PENDING_ONLY,
    )
    op.add_column("balances", sa.Column("watch_below_micros", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE balances SET watch_below_micros = ("
        "SELECT a.threshold_micros FROM auto_top_ups a "
        "WHERE a.organization_id = balances.organization_id "
        "AND a.environment = balances.environment AND a.enabled)"
    )


def downgrade() -> None:
    with op.batch_alter_table("balances", schema=None) as batch_op:
        batch_op.drop_column("watch_below_micros")
    op.drop_index("uq_jobs_pending_dedupe_key", table_name="jobs")
    op.drop_index("ix_jobs_state_run_at", table_name="jobs")
    op.drop_table("jobs")
