"""Many writers, one organization: writes serialize on the organization (a row lock on PostgreSQL, the
single writer on SQLite) so nothing is lost, no lot goes below zero and the journal still proves every
balance."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import func, select

from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.models import Balance, JournalTransaction, Lot
from creditmeter.ledger.models import Posting as PostingRow
from creditmeter.ledger.verify import verify
from tests.conftest import utc

C = 1_000_000
T0 = utc(2026, 3, 1)
THREADS = 8
DEBITS_PER_THREAD = 25
MakeOrg = Callable[..., str]
T = TypeVar("T")


def consumed(db: Database, org: str) -> int:
    with db.read() as s:
        total = s.scalar(
            select(func.coalesce(func.sum(PostingRow.amount_micros), 0)).where(
                PostingRow.organization_id == org, PostingRow.account.like("consumption:%")
            )
        )
    return int(total or 0)


def lots_and_balance(db: Database, org: str) -> tuple[dict[str, int], tuple[int, int, int]]:
    with db.read() as s:
        lots = dict(
            s.execute(select(Lot.id, Lot.remaining_micros).where(Lot.organization_id == org)).all()
        )
        row = s.execute(
            select(Balance.lots_micros, Balance.arrears_micros, Balance.held_micros).where(
                Balance.organization_id == org, Balance.environment == "live"
            )
        ).one()
    return lots, (row[0], row[1], row[2])


def in_parallel(work: Sequence[Callable[[], T]]) -> list[T]:
    """Run each callable in its own thread, released together by a barrier."""
    start = threading.Barrier(len(work))

    def go(fn: Callable[[], T]) -> T:
        start.wait(timeout=30)
        return fn()

    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        return list(pool.map(go, work))


def test_eight_engines_debiting_one_organization_lose_nothing(
    db: Database, make_org: MakeOrg
) -> None:
    """Eight AI Engine workers record usage for the same organization at once: 200 debits of
    2.5 credits (500 credits) on 400 credits spread over four lots. Every debit is recorded, every lot
    ends at zero, and the 100 credits of overshoot are arrears."""
    org = make_org("Busy AI")
    with db.write() as s:
        for amount, source, expires in [
            (50, LotSource.PROMO, None),
            (150, LotSource.PLAN, T0 + timedelta(days=30)),
            (120, LotSource.PURCHASE, None),
            (80, LotSource.ADJUSTMENT, T0 + timedelta(days=10)),
        ]:
            ledger.grant(
                s, org, "live", ledger.GrantRequest(amount * C, source, "seed", T0, expires), T0
            )
    amount = 2_500_000

    def worker(n: int) -> Callable[[], list[ledger.DebitResult]]:
        def run() -> list[ledger.DebitResult]:
            results = []
            for i in range(DEBITS_PER_THREAD):
                with db.write() as s:
                    results.append(
                        ledger.debit(
                            s,
                            org,
                            "live",
                            amount,
                            "inference",
                            f"w{n} #{i}",
                            T0 + timedelta(hours=1),
                        )
                    )
            return results

        return run

    outcomes = in_parallel([worker(n) for n in range(THREADS)])
    results = [r for batch in outcomes for r in batch]

    total = THREADS * DEBITS_PER_THREAD * amount
    assert len({r.transaction_id for r in results}) == THREADS * DEBITS_PER_THREAD
    assert consumed(db, org) == total
    taken = sum(t for r in results for _, t in r.takes)
    overshoot = sum(r.arrears_added_micros for r in results)
    assert taken == 400 * C
    assert overshoot == total - 400 * C
    lots, balance = lots_and_balance(db, org)
    assert all(v == 0 for v in lots.values())
    assert balance == (0, overshoot, 0)
    with db.read() as s:
        assert verify(s) == []
        debits = s.scalar(
            select(func.count()).where(
                JournalTransaction.organization_id == org, JournalTransaction.kind == "debit"
            )
        )
    assert debits == THREADS * DEBITS_PER_THREAD


def test_purchases_arriving_while_engines_debit_pay_the_arrears_exactly_once(
    db: Database, make_org: MakeOrg
) -> None:
    """Four workers debit while four others grant: whatever the interleaving, the organization ends
    with exactly granted minus consumed credits, arrears settled as far as the grants go."""
    org = make_org("Busy AI")
    debit_amount, grant_amount = 3 * C, 7 * C
    rounds = 15

    def debiter(n: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(rounds):
                with db.write() as s:
                    ledger.debit(s, org, "live", debit_amount, "training", f"d{n} #{i}", T0)

        return run

    def granter(n: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(rounds):
                with db.write() as s:
                    ledger.grant(
                        s,
                        org,
                        "live",
                        ledger.GrantRequest(
                            grant_amount, LotSource.PURCHASE, f"g{n} #{i}", T0, None
                        ),
                        T0,
                    )

        return run

    in_parallel([debiter(n) for n in range(4)] + [granter(n) for n in range(4)])

    consumed_total = 4 * rounds * debit_amount
    granted_total = 4 * rounds * grant_amount
    assert consumed(db, org) == consumed_total
    lots, (lots_total, arrears, held) = lots_and_balance(db, org)
    assert len(lots) == 4 * rounds
    assert all(v >= 0 for v in lots.values())
    assert (lots_total - arrears, held) == (granted_total - consumed_total, 0)
    assert arrears == 0  # the last grant or debit always settles what usable lots can pay
    with db.read() as s:
        assert verify(s) == []
        assert ledger.get_balance(s, org, "live", T0).available_micros == (
            granted_total - consumed_total
        )


def test_organizations_do_not_block_each_other(db: Database, make_org: MakeOrg) -> None:
    """Eight organizations, one worker each, all debiting at once: each ends exactly where its own
    debits put it."""
    orgs = [make_org(f"Tenant {n}") for n in range(THREADS)]
    with db.write() as s:
        for org in orgs:
            ledger.grant(
                s, org, "live", ledger.GrantRequest(100 * C, LotSource.PLAN, "seed", T0, None), T0
            )

    def worker(org: str) -> Callable[[], None]:
        def run() -> None:
            for i in range(DEBITS_PER_THREAD):
                with db.write() as s:
                    ledger.debit(s, org, "live", C, "inference", f"#{i}", T0)

        return run

    in_parallel([worker(org) for org in orgs])
    for org in orgs:
        assert consumed(db, org) == DEBITS_PER_THREAD * C
        _, balance = lots_and_balance(db, org)
        assert balance == ((100 - DEBITS_PER_THREAD) * C, 0, 0)
    with db.read() as s:
        assert verify(s) == []
