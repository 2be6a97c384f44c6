"""the occurred-at index of usage events can no longer serve the duplicate-id lookup

Revision ID: 0011_events_time_index_partial
Revises: 0010_invoice_void_reason
Create Date: 2026-12-04

``ix_usage_events_org_env_occurred`` becomes a partial index ``WHERE occurred_at IS NOT NULL``. It holds
the same rows (``occurred_at`` is NOT NULL), and every query that reads usage by time still uses it (a
range on ``occurred_at`` implies the predicate), but the duplicate-id lookup, which names no time, can
no longer match its ``(organization_id, environment)`` prefix. PostgreSQL picked it for that lookup when
the table's statistics were taken while it was nearly empty (one row per organization: both indexes
then cost the same), and read an organization's whole history once per id, inside the organization's
lock; only the unique ``(organization_id, environment, event_id)`` index can serve the lookup now.

On a large PostgreSQL table this rebuilds the index and blocks writes to ``usage_events`` meanwhile.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_events_time_index_partial"
down_revision = "0010_invoice_void_reason"
branch_labels = None
depends_on = None

INDEX = "ix_usage_events_org_env_occurred"
COLUMNS = ["organization_id", "environment", "occurred_at"]


def upgrade() -> None:
    op.drop_index(INDEX, table_name="usage_events")
    predicate = sa.text("occurred_at IS NOT NULL")
    op.create_index(
        INDEX,
        "usage_events",
        COLUMNS,
        postgresql_where=predicate,
        sqlite_where=predicate,
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="usage_events")
    op.create_index(INDEX, "usage_events", COLUMNS)
