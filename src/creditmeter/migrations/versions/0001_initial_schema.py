"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25

The ledger tables, and on PostgreSQL the rules that keep the journal honest below the application:
a deferred constraint trigger that rejects, at commit, any journal transaction whose postings do not sum
to zero or that touches two organizations (or environments), and triggers that make the journal
append-only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditmeter.kit.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


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
    SELECT coalesce(sum(amount_micros), 0), count(*) INTO total, n
      FROM postings WHERE transaction_id = txn_id;
    IF n = 0 THEN
        RAISE EXCEPTION 'journal transaction % has no postings', txn_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF total <> 0 THEN
        RAISE EXCEPTION 'journal transaction % does not balance: its postings sum to %', txn_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT count(*) INTO strangers
      FROM postings p LEFT JOIN lots l ON l.id = p.lot_id
     WHERE p.transaction_id = txn_id
       AND (p.organization_id <> txn_org OR p.environment <> txn_env
            OR (p.lot_id IS NOT NULL
                AND (l.organization_id <> txn_org OR l.environment <> txn_env)));
    IF strangers > 0 THEN
        RAISE EXCEPTION 'journal transaction % touches another organization', txn_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;
"""

PG_APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION creditmeter_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the journal is append-only: % on % is not allowed; post a reversal instead',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'check_violation';
END;
$$;
"""


def _postgresql_rules() -> None:
    op.execute(PG_CHECK_FUNCTION)
    op.execute(PG_APPEND_ONLY_FUNCTION)
    for table in ("postings", "journal_transactions"):
        op.execute(
            f"CREATE CONSTRAINT TRIGGER {table}_balanced AFTER INSERT ON {table} "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
            "EXECUTE FUNCTION creditmeter_check_journal_transaction()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION creditmeter_append_only()"
        )


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("scope", "key", name=op.f("uq_idempotency_keys_scope_key")),
    )
    op.create_table(
        "organizations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint("external_id", name=op.f("uq_organizations_external_id")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=20), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_api_keys_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index("ix_api_keys_organization_id", ["organization_id"], unique=False)

    op.create_table(
        "balances",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("lots_micros", sa.BigInteger(), nullable=False),
        sa.Column("arrears_micros", sa.BigInteger(), nullable=False),
        sa.Column("held_micros", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("arrears_micros >= 0", name=op.f("ck_balances_arrears_not_negative")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_balances_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "environment", name=op.f("pk_balances")),
    )
    op.create_table(
        "journal_transactions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column(
            "reverses_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_journal_transactions_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["journal_transactions.id"],
            name=op.f("fk_journal_transactions_reverses_id_journal_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_transactions")),
        sa.UniqueConstraint("reverses_id", name=op.f("uq_journal_transactions_reverses_id")),
    )
    with op.batch_alter_table("journal_transactions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_journal_org_env_id", ["organization_id", "environment", "id"], unique=False
        )

    op.create_table(
        "lots",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("remaining_micros", sa.BigInteger(), nullable=False),
        sa.Column("effective_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("cost_basis_micros", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("amount_micros > 0", name=op.f("ck_lots_amount_positive")),
        sa.CheckConstraint("remaining_micros >= 0", name=op.f("ck_lots_remaining_not_negative")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_lots_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lots")),
    )
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index("ix_lots_org_env", ["organization_id", "environment"], unique=False)

    op.create_table(
        "members",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_members_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_members")),
        sa.UniqueConstraint(
            "organization_id", "email", name=op.f("uq_members_organization_id_email")
        ),
    )
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_members_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "projects",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_projects_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint(
            "organization_id", "name", name=op.f("uq_projects_organization_id_name")
        ),
    )
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_projects_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "postings",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "transaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("account", sa.String(length=80), nullable=False),
        sa.Column("lot_id", sa.String(length=40), nullable=True),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount_micros <> 0", name=op.f("ck_postings_amount_not_zero")),
        sa.ForeignKeyConstraint(["lot_id"], ["lots.id"], name=op.f("fk_postings_lot_id_lots")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_postings_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["journal_transactions.id"],
            name=op.f("fk_postings_transaction_id_journal_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_postings")),
    )
    with op.batch_alter_table("postings", schema=None) as batch_op:
        batch_op.create_index("ix_postings_lot_id", ["lot_id"], unique=False)
        batch_op.create_index(
            "ix_postings_org_account", ["organization_id", "account"], unique=False
        )
        batch_op.create_index("ix_postings_transaction_id", ["transaction_id"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        _postgresql_rules()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("postings", "journal_transactions"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_balanced ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute("DROP FUNCTION IF EXISTS creditmeter_check_journal_transaction()")
        op.execute("DROP FUNCTION IF EXISTS creditmeter_append_only()")
    with op.batch_alter_table("postings", schema=None) as batch_op:
        batch_op.drop_index("ix_postings_transaction_id")
        batch_op.drop_index("ix_postings_org_account")
        batch_op.drop_index("ix_postings_lot_id")

    op.drop_table("postings")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_projects_organization_id"))

    op.drop_table("projects")
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_members_organization_id"))

    op.drop_table("members")
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.drop_index("ix_lots_org_env")

    op.drop_table("lots")
    with op.batch_alter_table("journal_transactions", schema=None) as batch_op:
        batch_op.drop_index("ix_journal_org_env_id")

    op.drop_table("journal_transactions")
    op.drop_table("balances")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_api_keys_organization_id")

    op.drop_table("api_keys")
    op.drop_table("organizations")
    op.drop_table("idempotency_keys")
