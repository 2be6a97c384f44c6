"""``verify()`` re-proves the ledger from the journal and names every mismatch.

The tampering here goes around the service with raw SQL, as a bad migration or a hand-edited row would.
On PostgreSQL the journal is append-only by trigger, so the tampering transaction first sets
``session_replication_role = replica`` (for that transaction only), which disables the triggers for the
superuser the tests connect as.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import TextClause, bindparam, select, text

from creditmeter.kit.db import Database, UTCDateTime
from creditmeter.ledger import service as ledger
from creditmeter.ledger import verify as verify_module
from creditmeter.ledger.domain import Account, LotSource
from creditmeter.ledger.models import Posting as PostingRow
from creditmeter.ledger.verify import Mismatch, verify
from tests.conftest import utc

C = 1_000_000
T0 = utc(2026, 3, 1)
MakeOrg = Callable[..., str]


@dataclass(frozen=True)
class Story:
    """Acme holds one 10-credit lot and has spent 3 of it."""

    org: str
    lot_id: str
    debit_txn: int
    lot_posting_id: int


@pytest.fixture
def acme(db: Database, make_org: MakeOrg) -> Story:
    org = make_org("Acme AI")
    with db.write() as s:
        lot_id = ledger.grant(
            s, org, "live", ledger.GrantRequest(10 * C, LotSource.PURCHASE, "pack", T0, None), T0
        )
        result = ledger.debit(s, org, "live", 3 * C, "inference", "usage", T0)
        posting_id = s.scalar(
            select(PostingRow.id).where(
                PostingRow.transaction_id == result.transaction_id,
                PostingRow.account == Account.LOT,
            )
        )
    assert posting_id is not None
    return Story(org, lot_id, result.transaction_id, posting_id)


def tamper(db: Database, sql: str | TextClause, **params: object) -> None:
    """Change rows behind the ledger's back, in one committed transaction."""
    with db.write() as s:
        if db.dialect == "postgresql":
            s.execute(text("SET LOCAL session_replication_role = replica"))
        s.execute(text(sql) if isinstance(sql, str) else sql, params)


def mismatches(db: Database) -> list[Mismatch]:
    with db.read() as s:
        return verify(s)


def test_a_ledger_kept_by_the_service_is_clean(
    db: Database, make_org: MakeOrg, acme: Story
) -> None:
    other = make_org("Globex")
    with db.write() as s:
        ledger.grant(
            s,
            other,
            "test",
            ledger.GrantRequest(5 * C, LotSource.PROMO, "sandbox", T0, utc(2026, 3, 2)),
            T0,
        )
        ledger.debit(s, other, "live", 2 * C, "training", "overdraft", T0)
        ledger.expire_due(s, utc(2026, 3, 2))
        ledger.reverse(s, acme.org, acme.debit_txn, "refund", T0)
    assert mismatches(db) == []


def test_a_tampered_posting_amount_is_caught_three_ways(db: Database, acme: Story) -> None:
    """Someone edits the debit's lot posting from -3 to -2 credits: the transaction no longer sums to
    zero, the lot's remainder no longer matches its postings, nor does the balance."""
    tamper(
        db,
        "UPDATE postings SET amount_micros = :a WHERE id = :id",
        a=-2 * C,
        id=acme.lot_posting_id,
    )
    assert sorted(mismatches(db), key=lambda m: m.check) == [
        Mismatch("balance", acme.org, "live lots", "8", "7"),
        Mismatch("lot-remaining", acme.org, f"lot {acme.lot_id}", "8", "7"),
        Mismatch(
            "zero-sum",
            acme.org,
            f"journal transaction txn_{acme.debit_txn}",
            "postings summing to 0",
            "2 postings summing to 1",
        ),
    ]


def test_a_tampered_lot_remainder_is_caught(db: Database, acme: Story) -> None:
    tamper(
        db, "UPDATE lots SET remaining_micros = remaining_micros + 1 WHERE id = :id", id=acme.lot_id
    )
    assert mismatches(db) == [
        Mismatch("lot-remaining", acme.org, f"lot {acme.lot_id}", "7", "7.000001")
    ]


def test_a_lot_holding_more_than_was_granted_is_caught(db: Database, acme: Story) -> None:
    tamper(db, "UPDATE lots SET amount_micros = :a WHERE id = :id", a=5 * C, id=acme.lot_id)
    assert mismatches(db) == [
        Mismatch("lot-bounds", acme.org, f"lot {acme.lot_id}", "between 0 and 5", "7")
    ]


@pytest.mark.parametrize(
    ("column", "name", "expected", "actual"),
    [
        ("lots_micros", "lots", "7", "7.5"),
        ("arrears_micros", "arrears", "0", "0.5"),
        ("held_micros", "held", "0", "0.5"),
    ],
)
def test_a_tampered_balance_row_is_caught(
    db: Database, acme: Story, column: str, name: str, expected: str, actual: str
) -> None:
    tamper(
        db,
        f"UPDATE balances SET {column} = {column} + 500000 "
        "WHERE organization_id = :org AND environment = 'live'",
        org=acme.org,
    )
    [mismatch] = mismatches(db)
    assert mismatch == Mismatch("balance", acme.org, f"live {name}", expected, actual)
    assert mismatch.describe() == (
        f"balance: live {name} of {acme.org}: expected {expected}, found {actual}"
    )


def test_a_deleted_posting_is_caught(db: Database, acme: Story) -> None:
    tamper(db, "DELETE FROM postings WHERE id = :id", id=acme.lot_posting_id)
    checks = {m.check for m in mismatches(db)}
    assert checks == {"zero-sum", "lot-remaining", "balance"}


def test_a_journal_transaction_without_postings_is_caught(db: Database, acme: Story) -> None:
    insert_empty = text(
        "INSERT INTO journal_transactions (organization_id, environment, kind, description, created_at)"
        " VALUES (:org, 'live', 'debit', 'empty', :at)"
    ).bindparams(bindparam("at", type_=UTCDateTime()))
    tamper(db, insert_empty, org=acme.org, at=T0)
    [mismatch] = mismatches(db)
    assert (mismatch.check, mismatch.actual) == ("zero-sum", "0 postings summing to 0")


def test_a_posting_moved_to_another_organizations_lot_is_caught(
    db: Database, make_org: MakeOrg, acme: Story
) -> None:
    """Credits never move between organizations: a posting of Acme's debit that names Globex's lot
    is reported against the transaction."""
    globex = make_org("Globex")
    with db.write() as s:
        globex_lot = ledger.grant(
            s, globex, "live", ledger.GrantRequest(10 * C, LotSource.PURCHASE, "pack", T0, None), T0
        )
    tamper(
        db,
        "UPDATE postings SET lot_id = :lot WHERE id = :id",
        lot=globex_lot,
        id=acme.lot_posting_id,
    )
    found = mismatches(db)
    assert (
        Mismatch(
            "single-organization",
            acme.org,
            f"journal transaction txn_{acme.debit_txn}",
            f"postings of {acme.org} only",
            f"a posting for {globex}",
        )
        in found
    )
    assert {(m.check, m.subject) for m in found} >= {
        ("lot-remaining", f"lot {acme.lot_id}"),
        ("lot-remaining", f"lot {globex_lot}"),
    }


def test_a_posting_in_the_wrong_environment_is_caught(db: Database, acme: Story) -> None:
    tamper(db, "UPDATE postings SET environment = 'test' WHERE id = :id", id=acme.lot_posting_id)
    checks = {m.check for m in mismatches(db)}
    assert "single-organization" in checks


def test_only_the_tampered_organization_is_reported(
    db: Database, make_org: MakeOrg, acme: Story
) -> None:
    globex = make_org("Globex")
    with db.write() as s:
        ledger.grant(
            s, globex, "live", ledger.GrantRequest(10 * C, LotSource.PLAN, "plan", T0, None), T0
        )
        ledger.debit(s, globex, "live", 12 * C, "training", "overdraft", T0)
    tamper(db, "UPDATE balances SET arrears_micros = 0 WHERE organization_id = :org", org=globex)
    assert mismatches(db) == [Mismatch("balance", globex, "live arrears", "2", "0")]


def test_verify_walks_organizations_in_chunks_and_reports_progress(
    db: Database, make_org: MakeOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_module, "CHUNK", 2)
    orgs = [make_org(f"Tenant {n}") for n in range(5)]
    last = max(orgs)  # organizations are verified in id order: the last one is in the last chunk
    tamper(
        db,
        "UPDATE balances SET held_micros = 1 WHERE organization_id = :org AND environment = 'test'",
        org=last,
    )
    seen: list[tuple[int, int]] = []
    with db.read() as s:
        found = verify(s, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert found == [Mismatch("balance", last, "test held", "0", "0.000001")]
