"""lookups whose plans no longer depend on fresh statistics

Revision ID: 0011_plan_proof_lookups
Revises: 0010_invoice_void_reason
Create Date: 2026-12-04

Two plans that went wrong on PostgreSQL when a table's statistics were stale or missing (a new
database, or a server with autovacuum off), each costing more per row as the tables grew:

1. ``ix_usage_events_org_env_occurred`` becomes a partial index ``WHERE occurred_at IS NOT NULL``. It
   holds the same rows (``occurred_at`` is NOT NULL) and every query that reads usage by time still
   uses it (a range on ``occurred_at`` implies the predicate), but the duplicate-id lookup, which names
   no time, can no longer match its ``(organization_id, environment)`` prefix. PostgreSQL picked it for
   that lookup when the statistics said one row per organization (both indexes then cost the same) and
   read an organization's whole history once per id, inside the organization's lock. Only the unique
   ``(organization_id, environment, event_id)`` index can serve the lookup now.
2. The deferred zero-sum trigger's check reads a journal transaction's postings in one statement (sum,
   count and strangers together, instead of three) and looks each posting's lot up by its primary key
   (a correlated ``EXISTS``) instead of joining ``lots``: without statistics PostgreSQL planned that
   join as a hash of the whole ``lots`` table, once per posting checked at commit.

On a large PostgreSQL table step 1 rebuilds the index and blocks writes to ``usage_events`` meanwhile.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_plan_proof_lookups"
down_revision = "0010_invoice_void_reason"
branch_labels = None
depends_on = None

INDEX = "ix_usage_events_org_env_occurred"
COLUMNS = ["organization_id", "environment", "occurred_at"]

PG_CHECK_FUNCTION = """
CREATE OR REPLACE FUNCTION creditmeter_check_journal_transaction() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    txn_id bigint;
    txn_org text;
    txn_env text;
    total numeric;
    n integer;
    strangers integer;
BEGIN
    IF TG_TABLE_NAME = 'postings' THEN
        txn_id := NEW.transaction_id;
    ELSE
        txn_id := NEW.id;
    END IF;
    SELECT organization_id, environment INTO txn_org, txn_env
      FROM journal_transactions WHERE id = txn_id;
    SELECT coalesce(sum(p.amount_micros), 0), count(*),
           count(*) FILTER (
               WHERE p.organization_id <> txn_org OR p.environment <> txn_env
                  OR (p.lot_id IS NOT NULL AND EXISTS (
                          SELECT 1 FROM lots l
                           WHERE l.id = p.lot_id
                             AND (l.organization_id <> txn_org OR l.environment <> txn_env))))
      INTO total, n, strangers
      FROM postings p WHERE p.transaction_id = txn_id;
    IF n = 0 THEN
        RAISE EXCEPTION 'journal transaction % has no postings', txn_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF total <> 0 THEN
        RAISE EXCEPTION 'journal transaction % does not balance: its postings sum to %', txn_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    IF strangers > 0 THEN
        RAISE EXCEPTION 'journal transaction % touches another organization', txn_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;
"""


def upgrade() -> None:
    op.drop_index(INDEX, table_name="usage_events")
    predicate = sa.text("occurred_at IS NOT NULL")
    op.create_index(
        INDEX, "usage_events", COLUMNS, postgresql_where=predicate, sqlite_where=predicate
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_CHECK_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        from importlib import import_module

        initial = import_module("creditmeter.migrations.versions.0001_initial_schema")
        op.execute(initial.PG_CHECK_FUNCTION)
    op.drop_index(INDEX, table_name="usage_events")
    op.create_index(INDEX, "usage_events", COLUMNS)
