"""On PostgreSQL the journal keeps its rules below the application: a deferred constraint trigger
rejects, at COMMIT, a journal transaction that does not sum to zero or that reaches into another
organization; other triggers make postings and journal transactions append-only.

These tests write raw SQL, as a buggy job or a hand-typed psql session would.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.models import JournalTransaction
from creditmeter.ledger.models import Posting as PostingRow
from creditmeter.ledger.verify import verify
from tests.conftest import utc

C = 1_000_000
T0 = utc(2026, 3, 1)
MakeOrg = Callable[..., str]


# These rules exist only on PostgreSQL (SQLite runs the same checks in the write path and verify).
pytestmark = [pytest.mark.parametrize("db", ["postgresql"], indirect=True), pytest.mark.postgres]


@pytest.fixture
def pg(db: Database) -> Database:
    assert db.dialect == "postgresql"
    return db


def new_transaction(s: Session, org: str, environment: str = "live") -> int:
    txn_id = s.execute(
        text(
            "INSERT INTO journal_transactions (organization_id, environment, kind, description,"
            " created_at) VALUES (:org, :env, 'manual', 'typed by hand', now()) RETURNING id"
        ),
        {"org": org, "env": environment},
    ).scalar_one()
    return int(txn_id)


def add_posting(
    s: Session,
    txn_id: int,
    org: str,
    account: str,
    amount: int,
    lot_id: str | None = None,
    environment: str = "live",
) -> None:
    s.execute(
        text(
            "INSERT INTO postings (transaction_id, organization_id, environment, account, lot_id,"
            " amount_micros) VALUES (:txn, :org, :env, :account, :lot, :amount)"
        ),
        {
            "txn": txn_id,
            "org": org,
            "env": environment,
            "account": account,
            "lot": lot_id,
            "amount": amount,
        },
    )


def grant(db: Database, org: str, amount: int, environment: str = "live") -> str:
    with db.write() as s:
        return ledger.grant(
            s,
            org,
            environment,
            ledger.GrantRequest(amount, LotSource.PURCHASE, "pack", T0, None),
            T0,
        )


def commit(db: Database, book: Callable[[Session], object]) -> None:
    """Run ``book`` in one write transaction and COMMIT it."""
    with db.write() as s:
        book(s)


def journal_size(db: Database) -> tuple[int, int]:
    with db.read() as s:
        return (
            s.scalar(select(func.count()).select_from(JournalTransaction)) or 0,
            s.scalar(select(func.count()).select_from(PostingRow)) or 0,
        )


def test_an_unbalanced_transaction_fails_at_commit(pg: Database, make_org: MakeOrg) -> None:
    """Someone books 5 credits of consumption against 4 credits of breakage by hand. Each INSERT is
    accepted; the COMMIT is not, and nothing is kept."""
    org = make_org("Acme AI")
    before = journal_size(pg)

    def book(s: Session) -> None:
        txn_id = new_transaction(s, org)
        add_posting(s, txn_id, org, "consumption:inference", 5 * C)
        add_posting(s, txn_id, org, "breakage", -4 * C)
        # Still inside the transaction: both postings are there, the check waits for COMMIT.
        count = text("SELECT count(*) FROM postings WHERE transaction_id = :t")
        assert s.scalar(count, {"t": txn_id}) == 2

    with pytest.raises(IntegrityError, match=r"does not balance: its postings sum to 1000000"):
        commit(pg, book)
    assert journal_size(pg) == before


def test_a_transaction_without_postings_fails_at_commit(pg: Database, make_org: MakeOrg) -> None:
    org = make_org("Acme AI")
    with pytest.raises(IntegrityError, match="has no postings"), pg.write() as s:
        new_transaction(s, org)
    assert journal_size(pg) == (0, 0)


def test_a_balanced_transaction_typed_by_hand_is_accepted(pg: Database, make_org: MakeOrg) -> None:
    """The trigger rejects what is wrong, not what is unusual: a balanced transaction between two
    platform accounts commits (and keeps the ledger provable)."""
    org = make_org("Acme AI")
    with pg.write() as s:
        txn_id = new_transaction(s, org)
        add_posting(s, txn_id, org, "consumption:inference", 5 * C)
        add_posting(s, txn_id, org, "breakage", -5 * C)
    assert journal_size(pg) == (1, 2)
    with pg.read() as s:
        assert verify(s) == []


def test_a_transaction_naming_another_organizations_lot_fails_at_commit(
    pg: Database, make_org: MakeOrg
) -> None:
    """Acme's books may not take credits from Globex's lot, even in a balanced transaction."""
    acme, globex = make_org("Acme AI"), make_org("Globex")
    globex_lot = grant(pg, globex, 10 * C)
    before = journal_size(pg)

    def book(s: Session) -> None:
        txn_id = new_transaction(s, acme)
        add_posting(s, txn_id, acme, "lot", -1 * C, lot_id=globex_lot)
        add_posting(s, txn_id, acme, "consumption:inference", 1 * C)

    with pytest.raises(IntegrityError, match="touches another organization"):
        commit(pg, book)
    assert journal_size(pg) == before


def test_a_transaction_posting_for_two_organizations_fails_at_commit(
    pg: Database, make_org: MakeOrg
) -> None:
    acme, globex = make_org("Acme AI"), make_org("Globex")

    def book(s: Session) -> None:
        txn_id = new_transaction(s, acme)
        add_posting(s, txn_id, acme, "consumption:inference", 1 * C)
        add_posting(s, txn_id, globex, "breakage", -1 * C)

    with pytest.raises(IntegrityError, match="touches another organization"):
        commit(pg, book)
    assert journal_size(pg) == (0, 0)


def test_a_transaction_crossing_environments_fails_at_commit(
    pg: Database, make_org: MakeOrg
) -> None:
    """Sandbox credits are not live credits: a live transaction cannot draw on a test lot."""
    acme = make_org("Acme AI")
    sandbox_lot = grant(pg, acme, 10 * C, environment="test")
    before = journal_size(pg)

    def book(s: Session) -> None:
        txn_id = new_transaction(s, acme, "live")
        add_posting(s, txn_id, acme, "lot", -1 * C, lot_id=sandbox_lot)
        add_posting(s, txn_id, acme, "consumption:inference", 1 * C)

    with pytest.raises(IntegrityError, match="touches another organization"):
        commit(pg, book)
    assert journal_size(pg) == before


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE postings SET amount_micros = amount_micros * 2",
        "UPDATE postings SET account = 'breakage' WHERE account LIKE 'issuance:%'",
        "DELETE FROM postings",
    ],
)
def test_postings_cannot_be_updated_or_deleted(
    pg: Database, make_org: MakeOrg, statement: str
) -> None:
    """Corrections are reversing transactions, never UPDATE or DELETE."""
    org = make_org("Acme AI")
    grant(pg, org, 10 * C)
    op = statement.split(maxsplit=1)[0]
    with pytest.raises(IntegrityError, match=f"append-only: {op} on postings"), pg.write() as s:
        s.execute(text(statement))
    assert journal_size(pg) == (1, 2)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE journal_transactions SET description = 'nothing to see here'",
        "DELETE FROM journal_transactions",
    ],
)
def test_journal_transactions_cannot_be_updated_or_deleted(
    pg: Database, make_org: MakeOrg, statement: str
) -> None:
    org = make_org("Acme AI")
    grant(pg, org, 10 * C)
    op = statement.split(maxsplit=1)[0]
    with (
        pytest.raises(IntegrityError, match=f"append-only: {op} on journal_transactions"),
        pg.write() as s,
    ):
        s.execute(text(statement))
    assert journal_size(pg) == (1, 2)


def test_the_service_writes_pass_the_database_rules(pg: Database, make_org: MakeOrg) -> None:
    """Every kind of transaction the service writes commits under the triggers."""
    org = make_org("Acme AI")
    with pg.write() as s:
        ledger.debit(s, org, "live", 2 * C, "inference", "overdraft", T0)
    grant(pg, org, 10 * C)
    with pg.write() as s:
        ledger.grant(
            s,
            org,
            "live",
            ledger.GrantRequest(3 * C, LotSource.PLAN, "plan", T0, utc(2026, 3, 2)),
            T0,
        )
        result = ledger.debit(s, org, "live", 1 * C, "training", "run", T0)
        ledger.expire_due(s, utc(2026, 3, 2))
    with pg.write() as s:
        ledger.reverse(s, org, result.transaction_id, "refund", utc(2026, 3, 3))
    with pg.read() as s:
        kinds = set(s.scalars(select(JournalTransaction.kind)))
        assert verify(s) == []
    assert kinds == {"debit", "grant", "arrears_settlement", "expiry", "reversal"}


def test_the_commit_check_reads_lots_by_key_never_the_whole_table(
    pg: Database, make_org: MakeOrg
) -> None:
    """A database grown without statistics (autovacuum off, or not yet run): 20,000 lots and 200,000
    postings. The check at commit looks each posting's lot up by its key. Joining ``lots`` was planned
    as a hash of the whole table once per posting checked, so the commit of a batch over thousands of
    organizations grew with the number of lots (seeding 1M events over 10,000 organizations slowed
    to a few hundred events/s)."""
    orgs = [make_org(f"org {i}") for i in range(2)]
    with pg.write() as s:
        # History written as a restore would: triggers off for the bulk rows (superuser only).
        s.execute(text("SET LOCAL session_replication_role = replica"))
        s.execute(
            text(
                "INSERT INTO lots (id, organization_id, environment, source, amount_micros, "
                "remaining_micros, effective_at, priority, cost_basis_micros, currency, reason, "
                "created_at) SELECT 'lot_bulk_' || g, :org, 'live', 'promo', 1000000, 1000000, "
                "now(), 100, 0, 'USD', 'bulk', now() FROM generate_series(1, 20000) g"
            ),
            {"org": orgs[1]},
        )
        s.execute(
            text(
                "INSERT INTO journal_transactions (id, organization_id, environment, kind, "
                "description, created_at) SELECT 1000000 + g, :org, 'live', 'grant', 'bulk', now() "
                "FROM generate_series(1, 100000) g"
            ),
            {"org": orgs[1]},
        )
        s.execute(
            text(
                "INSERT INTO postings (transaction_id, organization_id, environment, account, "
                "lot_id, amount_micros) SELECT 1000000 + g, :org, 'live', 'lot', "
                "'lot_bulk_' || (1 + g % 20000), 1000000 FROM generate_series(1, 100000) g "
                "UNION ALL SELECT 1000000 + g, :org, 'live', 'issuance:promo', NULL, -1000000 "
                "FROM generate_series(1, 100000) g"
            ),
            {"org": orgs[1]},
        )
    lot = grant(pg, orgs[0], 10 * C)
    seq_scans = text("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'lots'")
    with pg.write() as s:
        txn_id = new_transaction(s, orgs[0])
        add_posting(s, txn_id, orgs[0], "lot", -2 * C, lot_id=lot)
        add_posting(s, txn_id, orgs[0], "consumption:inference", 2 * C)
        before = s.scalar(seq_scans)
        s.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))  # run the deferred check now
        after = s.scalar(seq_scans)
    assert after == before
