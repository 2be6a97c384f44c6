"""The ledger service on SQLite and PostgreSQL, told as accounting stories.

Every test ends by proving the whole ledger with ``verify()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from creditmeter.errors import Conflict, InvalidRequest, NotFound
from creditmeter.kit.credits import parse_credits
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import Account, LotSource, Posting
from creditmeter.ledger.models import Balance, JournalTransaction, Lot
from creditmeter.ledger.models import Posting as PostingRow
from creditmeter.ledger.verify import verify
from tests.conftest import utc

T0 = utc(2026, 3, 1)
END_OF_MARCH = utc(2026, 4, 1)
END_OF_JUNE = utc(2026, 7, 1)


def credits(text: str | int) -> int:
    return parse_credits(str(text))


MakeOrg = Callable[..., str]


@pytest.fixture
def org(make_org: MakeOrg) -> str:
    return make_org("Acme AI")


@pytest.fixture(autouse=True)
def _ledger_stays_provable(db: Database) -> Iterator[None]:
    """Whatever a story did, the journal still proves every balance."""
    yield
    with db.read() as s:
        assert [m.describe() for m in verify(s)] == []


# --- helpers -------------------------------------------------------------------------------------


def grant(
    db: Database,
    org: str,
    amount: int,
    *,
    source: LotSource = LotSource.PURCHASE,
    at: datetime = T0,
    effective_at: datetime | None = None,
    expires_at: datetime | None = None,
    priority: int = 100,
    environment: str = "live",
    reason: str = "story",
) -> str:
    with db.write() as s:
        return ledger.grant(
            s,
            org,
            environment,
            ledger.GrantRequest(
                amount, source, reason, effective_at or at, expires_at, priority=priority
            ),
            at,
        )


def debit(
    db: Database,
    org: str,
    amount: int,
    *,
    at: datetime = T0,
    operation: str = "inference",
    environment: str = "live",
) -> ledger.DebitResult:
    with db.write() as s:
        return ledger.debit(s, org, environment, amount, operation, "usage", at)


def reverse(db: Database, org: str, txn_id: int, *, at: datetime = T0) -> int:
    with db.write() as s:
        return ledger.reverse(s, org, txn_id, "customer support correction", at)


def balance(
    db: Database, org: str, *, at: datetime = T0, environment: str = "live"
) -> ledger.BalanceView:
    with db.read() as s:
        return ledger.get_balance(s, org, environment, at)


def remaining(db: Database, *lot_ids: str) -> list[int]:
    with db.read() as s:
        rows = dict(
            s.execute(select(Lot.id, Lot.remaining_micros).where(Lot.id.in_(lot_ids))).all()
        )
    return [rows[i] for i in lot_ids]


def materialized(db: Database, org: str, environment: str = "live") -> tuple[int, int, int]:
    with db.read() as s:
        row = s.execute(
            select(Balance.lots_micros, Balance.arrears_micros, Balance.held_micros).where(
                Balance.organization_id == org, Balance.environment == environment
            )
        ).one()
    return row[0], row[1], row[2]


def journal_size(db: Database) -> tuple[int, int, int]:
    """(journal transactions, postings, lots) across the whole database."""
    with db.read() as s:
        return (
            s.scalar(select(func.count()).select_from(JournalTransaction)) or 0,
            s.scalar(select(func.count()).select_from(PostingRow)) or 0,
            s.scalar(select(func.count()).select_from(Lot)) or 0,
        )


def transactions(db: Database, org: str) -> list[tuple[int, str, int | None]]:
    with db.read() as s:
        rows = s.execute(
            select(JournalTransaction.id, JournalTransaction.kind, JournalTransaction.reverses_id)
            .where(JournalTransaction.organization_id == org)
            .order_by(JournalTransaction.id)
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def postings_of(db: Database, txn_id: int) -> list[Posting]:
    with db.read() as s:
        return ledger.transaction_postings(s, txn_id)


def grant_txn(db: Database, lot_id: str) -> int:
    with db.read() as s:
        txn_id = s.scalar(
            select(JournalTransaction.id)
            .join(PostingRow, PostingRow.transaction_id == JournalTransaction.id)
            .where(PostingRow.lot_id == lot_id, JournalTransaction.kind == "grant")
        )
    assert txn_id is not None
    return txn_id


# --- granting ------------------------------------------------------------------------------------


def test_a_purchase_creates_a_lot_and_issues_its_credits(db: Database, org: str) -> None:
    """Acme buys the Standard package: one lot of 1,000 credits, issued from issuance:purchase."""
    lot_id = grant(db, org, credits(1000), source=LotSource.PURCHASE)
    with db.read() as s:
        lot = s.get(Lot, lot_id)
        assert lot is not None
        assert (lot.organization_id, lot.environment, lot.source) == (org, "live", "purchase")
        assert lot.amount_micros == lot.remaining_micros == credits(1000)
        assert lot.expires_at is None
    [(txn_id, kind, reverses)] = transactions(db, org)
    assert (kind, reverses) == ("grant", None)
    assert postings_of(db, txn_id) == [
        Posting(Account.LOT, credits(1000), lot_id),
        Posting("issuance:purchase", -credits(1000)),
    ]
    view = balance(db, org)
    assert (view.available_micros, view.arrears_micros, view.paused) == (credits(1000), 0, False)
    assert materialized(db, org) == (credits(1000), 0, 0)


def test_a_new_organization_starts_paused_with_nothing(db: Database, org: str) -> None:
    view = balance(db, org)
    assert (view.available_micros, view.arrears_micros, view.held_micros) == (0, 0, 0)
    assert view.paused
    assert view.lots == []


@pytest.mark.parametrize(
    ("request_kwargs", "code"),
    [
        ({"amount_micros": 0}, "invalid_credits"),
        ({"amount_micros": -5}, "invalid_credits"),
        ({"source": LotSource.PROMO, "cost_basis_micros": 10_000}, "invalid_cost_basis"),
        ({"expires_at": T0}, "invalid_expiry"),
        ({"expires_at": T0 - timedelta(days=1)}, "invalid_expiry"),
    ],
)
def test_a_bad_grant_is_refused_and_writes_nothing(
    db: Database, org: str, request_kwargs: dict[str, object], code: str
) -> None:
    fields: dict[str, object] = {
        "amount_micros": credits(10),
        "source": LotSource.PURCHASE,
        "reason": "bad",
        "effective_at": T0,
        "expires_at": None,
    } | request_kwargs
    before = journal_size(db)
    with pytest.raises(InvalidRequest) as caught, db.write() as s:
        ledger.grant(s, org, "live", ledger.GrantRequest(**fields), T0)  # type: ignore[arg-type]
    assert caught.value.code == code
    assert journal_size(db) == before


def test_granting_to_an_unknown_organization_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound):
        grant(db, "org_DOESNOTEXIST", credits(1))
    assert journal_size(db) == (0, 0, 0)


def test_a_debit_must_be_positive(db: Database, org: str) -> None:
    grant(db, org, credits(5))
    for amount in (0, -1):
        with pytest.raises(InvalidRequest) as caught:
            debit(db, org, amount)
        assert caught.value.code == "invalid_credits"
    assert balance(db, org).available_micros == credits(5)


# --- burn order ----------------------------------------------------------------------------------


def test_promo_credits_pay_before_purchased_credits(db: Database, org: str) -> None:
    """A Professional organization's promo credits pay before its purchased credits."""
    purchased = grant(db, org, credits(5000), source=LotSource.PURCHASE, expires_at=END_OF_JUNE)
    promo = grant(
        db,
        org,
        credits(100),
        source=LotSource.PROMO,
        expires_at=END_OF_JUNE,
        at=T0 + timedelta(hours=1),
    )
    result = debit(db, org, credits(150), at=T0 + timedelta(hours=2))
    assert result.takes == ((promo, credits(100)), (purchased, credits(50)))
    assert result.arrears_added_micros == 0
    assert remaining(db, promo, purchased) == [0, credits(4950)]


def test_never_expiring_promo_credits_pay_before_never_expiring_purchases(
    db: Database, org: str
) -> None:
    """Neither lot expires, so the promo lot pays first although the purchase became effective
    earlier."""
    purchased = grant(db, org, credits(10), source=LotSource.PURCHASE)
    promo = grant(
        db, org, credits(10), source=LotSource.PROMO, at=T0, effective_at=T0 + timedelta(hours=1)
    )
    result = debit(db, org, credits(4), at=T0 + timedelta(hours=2))
    assert result.takes == ((promo, credits(4)),)
    assert remaining(db, purchased, promo) == [credits(10), credits(6)]


def test_a_debit_is_paid_in_burn_order(db: Database, org: str) -> None:
    """Professional rollover: January's allocation (expiring soonest) pays first, then February's;
    the never-expiring purchase is untouched; an operator's priority-10 adjustment pays before all."""
    purchase = grant(db, org, credits(1000), source=LotSource.PURCHASE)
    february = grant(db, org, credits(5000), source=LotSource.PLAN, expires_at=utc(2026, 6, 1))
    january = grant(db, org, credits(5000), source=LotSource.PLAN, expires_at=utc(2026, 5, 1))
    goodwill = grant(db, org, credits(20), source=LotSource.ADJUSTMENT, priority=10)

    result = debit(db, org, credits(6000), at=T0 + timedelta(days=1), operation="training")

    assert result.takes == (
        (goodwill, credits(20)),
        (january, credits(5000)),
        (february, credits(980)),
    )
    assert remaining(db, goodwill, january, february, purchase) == [
        0,
        0,
        credits(4020),
        credits(1000),
    ]
    assert postings_of(db, result.transaction_id) == [
        Posting(Account.LOT, -credits(20), goodwill),
        Posting(Account.LOT, -credits(5000), january),
        Posting(Account.LOT, -credits(980), february),
        Posting("consumption:training", credits(6000)),
    ]
    view = balance(db, org, at=T0 + timedelta(days=1))
    assert view.available_micros == credits(5020)
    assert [lot.id for lot in view.lots] == [february, purchase]


def test_the_balance_lists_usable_lots_in_burn_order_then_future_ones(
    db: Database, org: str
) -> None:
    later = grant(db, org, credits(5), effective_at=T0 + timedelta(days=10))
    never = grant(db, org, credits(5))
    soon = grant(db, org, credits(5), expires_at=T0 + timedelta(days=3))
    expired = grant(db, org, credits(5), expires_at=T0 + timedelta(hours=1))
    view = balance(db, org, at=T0 + timedelta(days=1))
    assert [lot.id for lot in view.lots] == [soon, never, later]
    assert expired not in [lot.id for lot in view.lots]
    assert view.available_micros == credits(10)


# --- overdraft and arrears -----------------------------------------------------------------------


def test_usage_beyond_the_balance_empties_every_lot_and_the_rest_goes_to_arrears(
    db: Database, org: str
) -> None:
    """A training run consumed 1,250 credits on a 1,000-credit balance: the work happened, so it is
    recorded in full; every lot is emptied, 250 credits are arrears and the organization is paused."""
    plan = grant(db, org, credits(600), source=LotSource.PLAN, expires_at=END_OF_MARCH)
    promo = grant(db, org, credits(400), source=LotSource.PROMO)
    result = debit(db, org, credits(1250), operation="training")
    assert result.takes == ((plan, credits(600)), (promo, credits(400)))
    assert result.arrears_added_micros == credits(250)
    assert remaining(db, plan, promo) == [0, 0]
    assert postings_of(db, result.transaction_id)[-2:] == [
        Posting(Account.ARREARS, -credits(250)),
        Posting("consumption:training", credits(1250)),
    ]
    view = balance(db, org)
    assert (view.available_micros, view.arrears_micros, view.paused) == (
        -credits(250),
        credits(250),
        True,
    )
    assert materialized(db, org) == (0, credits(250), 0)


def test_a_debit_with_no_credits_at_all_goes_entirely_to_arrears(db: Database, org: str) -> None:
    result = debit(db, org, credits("0.000001"))
    assert result.takes == ()
    assert result.arrears_added_micros == 1
    assert balance(db, org).arrears_micros == 1


def test_the_next_purchase_pays_the_arrears_first(db: Database, org: str) -> None:
    """Acme ran 250 credits past zero; its next 1,000-credit purchase pays those first and it
    resumes with 750."""
    debit(db, org, credits(250))
    lot_id = grant(db, org, credits(1000), at=T0 + timedelta(hours=1))
    assert remaining(db, lot_id) == [credits(750)]
    view = balance(db, org, at=T0 + timedelta(hours=1))
    assert (view.available_micros, view.arrears_micros, view.paused) == (credits(750), 0, False)
    kinds = [kind for _, kind, _ in transactions(db, org)]
    assert kinds == ["debit", "grant", "arrears_settlement"]
    settlement = transactions(db, org)[-1][0]
    assert postings_of(db, settlement) == [
        Posting(Account.LOT, -credits(250), lot_id),
        Posting(Account.ARREARS, credits(250)),
    ]


def test_a_grant_smaller_than_the_arrears_is_swallowed_and_the_organization_stays_paused(
    db: Database, org: str
) -> None:
    debit(db, org, credits(300))
    lot_id = grant(db, org, credits(100))
    assert remaining(db, lot_id) == [0]
    view = balance(db, org)
    assert (view.available_micros, view.arrears_micros, view.paused) == (
        -credits(200),
        credits(200),
        True,
    )


def test_a_lot_that_is_not_yet_effective_never_pays(db: Database, org: str) -> None:
    """April's allocation is granted in advance. Usage in March cannot draw on it, and it does not
    pay March's arrears until April arrives; then the first operation in April settles them."""
    april = grant(db, org, credits(1000), source=LotSource.PLAN, effective_at=END_OF_MARCH)
    march_usage = debit(db, org, credits(40), at=T0 + timedelta(days=5))
    assert march_usage.takes == ()
    assert march_usage.arrears_added_micros == credits(40)
    assert remaining(db, april) == [credits(1000)]
    assert balance(db, org, at=T0 + timedelta(days=5)).available_micros == -credits(40)
    # Another grant in March does not unlock April's lot either.
    grant(db, org, credits(10), at=T0 + timedelta(days=6))
    assert remaining(db, april) == [credits(1000)]
    assert balance(db, org, at=T0 + timedelta(days=6)).arrears_micros == credits(30)

    april_usage = debit(db, org, credits(5), at=END_OF_MARCH)
    assert april_usage.takes == ((april, credits(5)),)
    assert remaining(db, april) == [credits(1000 - 30 - 5)]
    view = balance(db, org, at=END_OF_MARCH)
    assert (view.available_micros, view.arrears_micros) == (credits(965), 0)


def test_an_expired_lot_never_pays_even_before_expiry_is_posted(db: Database, org: str) -> None:
    """Standard plan credits expire at the end of the cycle. Usage on April 1st cannot draw on
    March's remainder, although the expiry job has not run yet."""
    march = grant(db, org, credits(1000), source=LotSource.PLAN, expires_at=END_OF_MARCH)
    result = debit(db, org, credits(10), at=END_OF_MARCH)
    assert result.takes == ()
    assert result.arrears_added_micros == credits(10)
    assert remaining(db, march) == [credits(1000)]
    assert balance(db, org, at=END_OF_MARCH).available_micros == -credits(10)
    # Nor does a grant made after expiry use the expired lot to settle the arrears.
    fresh = grant(db, org, credits(3), at=END_OF_MARCH + timedelta(minutes=1))
    assert remaining(db, march, fresh) == [credits(1000), 0]


# --- expiry --------------------------------------------------------------------------------------


def test_expiry_posts_the_unused_remainder_to_breakage(db: Database, org: str) -> None:
    """Acme used 400 of March's 1,000 Standard credits; at the end of March 600 expire to
    breakage. Its never-expiring purchase is not touched."""
    march = grant(db, org, credits(1000), source=LotSource.PLAN, expires_at=END_OF_MARCH)
    purchase = grant(db, org, credits(50))
    debit(db, org, credits(400), at=T0 + timedelta(days=10))

    with db.write() as s:
        expired = ledger.expire_due(s, END_OF_MARCH)
    assert expired == [(org, "live", credits(600))]
    assert remaining(db, march, purchase) == [0, credits(50)]
    txn_id, kind, _ = transactions(db, org)[-1]
    assert kind == "expiry"
    assert postings_of(db, txn_id) == [
        Posting(Account.LOT, -credits(600), march),
        Posting(Account.BREAKAGE, credits(600)),
    ]
    assert balance(db, org, at=END_OF_MARCH).available_micros == credits(50)


def test_expiring_twice_is_the_same_as_expiring_once(db: Database, org: str) -> None:
    grant(db, org, credits(1000), source=LotSource.PLAN, expires_at=END_OF_MARCH)
    with db.write() as s:
        first = ledger.expire_due(s, END_OF_MARCH + timedelta(hours=1))
    after_once = (journal_size(db), materialized(db, org))
    with db.write() as s:
        second = ledger.expire_due(s, END_OF_MARCH + timedelta(hours=2))
    assert first == [(org, "live", credits(1000))]
    assert second == []
    assert (journal_size(db), materialized(db, org)) == after_once


def test_expiry_waits_for_the_expiry_time(db: Database, org: str) -> None:
    lot_id = grant(db, org, credits(10), expires_at=END_OF_MARCH)
    with db.write() as s:
        assert ledger.expire_due(s, END_OF_MARCH - timedelta(microseconds=1)) == []
    assert remaining(db, lot_id) == [credits(10)]


def test_expiry_makes_one_transaction_per_organization_and_environment(
    db: Database, make_org: MakeOrg
) -> None:
    acme, globex = make_org("Acme AI"), make_org("Globex")
    a1 = grant(db, acme, credits(1), expires_at=END_OF_MARCH)
    a2 = grant(db, acme, credits(2), expires_at=END_OF_MARCH - timedelta(days=1))
    a_test = grant(db, acme, credits(4), expires_at=END_OF_MARCH, environment="test")
    g1 = grant(db, globex, credits(8), expires_at=END_OF_MARCH)
    with db.write() as s:
        done = ledger.expire_due(s, END_OF_MARCH)
    assert sorted(done) == sorted(
        [(acme, "live", credits(3)), (acme, "test", credits(4)), (globex, "live", credits(8))]
    )
    assert remaining(db, a1, a2, a_test, g1) == [0, 0, 0, 0]
    assert [k for _, k, _ in transactions(db, acme)].count("expiry") == 2


def test_expiry_can_be_limited_to_one_organization(db: Database, make_org: MakeOrg) -> None:
    acme, globex = make_org("Acme AI"), make_org("Globex")
    a = grant(db, acme, credits(1), expires_at=END_OF_MARCH)
    g = grant(db, globex, credits(1), expires_at=END_OF_MARCH)
    with db.write() as s:
        assert ledger.expire_due(s, END_OF_MARCH, organization_id=acme) == [
            (acme, "live", credits(1))
        ]
    assert remaining(db, a, g) == [0, credits(1)]


# --- reversals -----------------------------------------------------------------------------------


def test_reversing_a_debit_restores_the_exact_balance(db: Database, org: str) -> None:
    """Support refunds a failed inference run: every lot gets back exactly what it gave."""
    promo = grant(db, org, credits(10), source=LotSource.PROMO)
    plan = grant(db, org, credits(100), source=LotSource.PLAN, expires_at=END_OF_MARCH)
    before = (remaining(db, promo, plan), materialized(db, org))
    result = debit(db, org, credits("57.123456"), at=T0 + timedelta(days=1))
    rev = reverse(db, org, result.transaction_id, at=T0 + timedelta(days=2))
    assert (remaining(db, promo, plan), materialized(db, org)) == before
    assert transactions(db, org)[-1] == (rev, "reversal", result.transaction_id)
    assert postings_of(db, rev) == [
        Posting(p.account, -p.amount_micros, p.lot_id)
        for p in postings_of(db, result.transaction_id)
    ]


def test_reversing_a_debit_that_ran_into_arrears_clears_them(db: Database, org: str) -> None:
    lot_id = grant(db, org, credits(10))
    result = debit(db, org, credits(25))
    reverse(db, org, result.transaction_id)
    assert remaining(db, lot_id) == [credits(10)]
    view = balance(db, org)
    assert (view.available_micros, view.arrears_micros, view.paused) == (credits(10), 0, False)


def test_reversing_a_debit_whose_arrears_were_since_paid_returns_them_as_a_new_lot(
    db: Database, org: str
) -> None:
    """A 25-credit run went 15 into arrears; a 100-credit purchase then paid them. Reversing the run
    puts 10 credits back into the first lot and the 15 the purchase paid into a new adjustment lot."""
    first = grant(db, org, credits(10))
    result = debit(db, org, credits(25))
    purchase = grant(db, org, credits(100), at=T0 + timedelta(hours=1))
    assert remaining(db, purchase) == [credits(85)]
    reverse(db, org, result.transaction_id, at=T0 + timedelta(hours=2))
    with db.read() as s:
        [adjustment] = s.scalars(
            select(Lot).where(Lot.organization_id == org, Lot.id.not_in([first, purchase]))
        ).all()
    assert adjustment.source == "adjustment"
    assert adjustment.amount_micros == adjustment.remaining_micros == credits(15)
    assert remaining(db, first, purchase) == [credits(10), credits(85)]
    assert balance(db, org, at=T0 + timedelta(hours=2)).available_micros == credits(110)


def test_reversing_an_unspent_grant_takes_the_lot_back(db: Database, org: str) -> None:
    """An operator granted 500 credits to the wrong organization and takes them back at once."""
    lot_id = grant(db, org, credits(500), source=LotSource.ADJUSTMENT)
    rev = reverse(db, org, grant_txn(db, lot_id))
    assert remaining(db, lot_id) == [0]
    assert postings_of(db, rev) == [
        Posting(Account.LOT, -credits(500), lot_id),
        Posting("issuance:adjustment", credits(500)),
    ]
    assert balance(db, org).available_micros == 0


def test_a_grant_that_was_partly_spent_cannot_be_reversed_and_nothing_is_written(
    db: Database, org: str
) -> None:
    lot_id = grant(db, org, credits(500))
    debit(db, org, credits(1))
    before = (journal_size(db), materialized(db, org), remaining(db, lot_id))
    with pytest.raises(Conflict, match="below zero") as caught:
        reverse(db, org, grant_txn(db, lot_id))
    assert caught.value.code == "ledger_invariant"
    assert (journal_size(db), materialized(db, org), remaining(db, lot_id)) == before


def test_a_grant_that_paid_arrears_cannot_be_reversed(db: Database, org: str) -> None:
    debit(db, org, credits(5))
    lot_id = grant(db, org, credits(500))
    before = journal_size(db)
    with pytest.raises(Conflict):
        reverse(db, org, grant_txn(db, lot_id))
    assert journal_size(db) == before


def test_a_transaction_is_reversed_at_most_once(db: Database, org: str) -> None:
    grant(db, org, credits(10))
    result = debit(db, org, credits(3))
    reverse(db, org, result.transaction_id)
    before = (journal_size(db), materialized(db, org))
    with pytest.raises(Conflict) as caught:
        reverse(db, org, result.transaction_id)
    assert caught.value.code == "already_reversed"
    assert (journal_size(db), materialized(db, org)) == before


def test_a_reversal_cannot_itself_be_reversed(db: Database, org: str) -> None:
    grant(db, org, credits(10))
    result = debit(db, org, credits(3))
    rev = reverse(db, org, result.transaction_id)
    before = journal_size(db)
    with pytest.raises(Conflict) as caught:
        reverse(db, org, rev)
    assert caught.value.code == "not_reversible"
    assert journal_size(db) == before


def test_reversing_an_unknown_or_foreign_transaction_is_not_found(
    db: Database, make_org: MakeOrg
) -> None:
    acme, globex = make_org("Acme AI"), make_org("Globex")
    grant(db, globex, credits(10))
    globex_debit = debit(db, globex, credits(1))
    with pytest.raises(NotFound):
        reverse(db, acme, 987_654)
    with pytest.raises(NotFound):
        reverse(db, acme, globex_debit.transaction_id)
    assert balance(db, globex).available_micros == credits(9)


def test_reversal_credits_for_an_expired_lot_go_to_a_new_adjustment_lot(
    db: Database, org: str
) -> None:
    """March credits paid for a run that is refunded in April. March's lot has expired, so the
    refund cannot go back into it: it becomes a new never-expiring adjustment lot."""
    march = grant(db, org, credits(100), source=LotSource.PLAN, expires_at=END_OF_MARCH)
    result = debit(db, org, credits(30), at=T0 + timedelta(days=3))
    with db.write() as s:
        ledger.expire_due(s, END_OF_MARCH)
    assert remaining(db, march) == [0]

    april = END_OF_MARCH + timedelta(days=2)
    rev = reverse(db, org, result.transaction_id, at=april)

    with db.read() as s:
        [adjustment] = s.scalars(
            select(Lot).where(Lot.organization_id == org, Lot.id != march)
        ).all()
    assert (adjustment.source, adjustment.expires_at) == ("adjustment", None)
    assert adjustment.amount_micros == adjustment.remaining_micros == credits(30)
    assert adjustment.effective_at == april
    assert remaining(db, march) == [0]
    assert postings_of(db, rev) == [
        Posting("consumption:inference", -credits(30)),
        Posting(Account.LOT, credits(30), adjustment.id),
    ]
    assert balance(db, org, at=april).available_micros == credits(30)


def test_a_refund_for_a_lot_past_its_expiry_not_yet_posted_also_goes_to_a_new_lot(
    db: Database, org: str
) -> None:
    march = grant(db, org, credits(100), source=LotSource.PLAN, expires_at=END_OF_MARCH)
    result = debit(db, org, credits(30), at=T0)
    reverse(db, org, result.transaction_id, at=END_OF_MARCH)
    # The expired lot keeps its unexpired remainder for the expiry job to post to breakage.
    assert remaining(db, march) == [credits(70)]
    assert balance(db, org, at=END_OF_MARCH).available_micros == credits(30)
    with db.write() as s:
        assert ledger.expire_due(s, END_OF_MARCH) == [(org, "live", credits(70))]


def test_reversing_an_expiry_gives_the_credits_back_as_a_new_lot(db: Database, org: str) -> None:
    """An operator extends a customer's expired credits by reversing the expiry."""
    march = grant(db, org, credits(100), source=LotSource.PLAN, expires_at=END_OF_MARCH)
    with db.write() as s:
        ledger.expire_due(s, END_OF_MARCH)
    expiry_txn = transactions(db, org)[-1][0]
    reverse(db, org, expiry_txn, at=END_OF_MARCH + timedelta(hours=1))
    assert remaining(db, march) == [0]
    assert balance(db, org, at=END_OF_MARCH + timedelta(hours=1)).available_micros == credits(100)


# --- environments --------------------------------------------------------------------------------


def test_test_usage_draws_from_the_sandbox_balance_never_from_live_credits(
    db: Database, org: str
) -> None:
    live = grant(db, org, credits(1000), environment="live")
    sandbox = grant(db, org, credits(10), environment="test", source=LotSource.PROMO)
    result = debit(db, org, credits(25), environment="test")
    assert result.takes == ((sandbox, credits(10)),)
    assert result.arrears_added_micros == credits(15)
    assert remaining(db, live, sandbox) == [credits(1000), 0]
    assert balance(db, org, environment="live").available_micros == credits(1000)
    assert balance(db, org, environment="test").available_micros == -credits(15)
    assert materialized(db, org, "live") == (credits(1000), 0, 0)
    assert materialized(db, org, "test") == (0, credits(15), 0)
    # A live purchase does not pay the sandbox's arrears.
    grant(db, org, credits(5), environment="live")
    assert balance(db, org, environment="test").arrears_micros == credits(15)


def test_reversing_a_test_debit_touches_only_the_test_balance(db: Database, org: str) -> None:
    grant(db, org, credits(100), environment="live")
    grant(db, org, credits(100), environment="test")
    result = debit(db, org, credits(40), environment="test")
    reverse(db, org, result.transaction_id)
    assert materialized(db, org, "test") == (credits(100), 0, 0)
    assert materialized(db, org, "live") == (credits(100), 0, 0)


# --- the one write path refuses to break invariants ---------------------------------------------


def _post_drafts(db: Database, org: str, drafts: list[ledger.TransactionDraft]) -> list[int]:
    with db.write() as s:
        return ledger.post(s, ledger.lock_balance(s, org, "live"), drafts, T0)


def _post(db: Database, org: str, postings: list[Posting]) -> None:
    _post_drafts(db, org, [ledger.TransactionDraft("manual", "test", postings)])


@pytest.mark.parametrize(
    ("postings", "message"),
    [
        ([Posting("breakage", 5), Posting("issuance:promo", -4)], "sum to 1"),
        ([], "needs postings"),
        ([Posting("breakage", 0), Posting("issuance:promo", 0)], "zero"),
        ([Posting(Account.LOT, 5), Posting("issuance:promo", -5)], "must name its lot"),
        ([Posting("breakage", 5, "lot_x"), Posting("issuance:promo", -5)], "cannot name a lot"),
        ([Posting(Account.ARREARS, 5), Posting("issuance:promo", -5)], "arrears"),
        ([Posting(Account.HELD, -5), Posting("issuance:promo", 5)], "held"),
    ],
)
def test_post_refuses_a_draft_that_breaks_an_invariant(
    db: Database, org: str, postings: list[Posting], message: str
) -> None:
    before = journal_size(db)
    with pytest.raises(ledger.InvariantViolation, match=message):
        _post(db, org, postings)
    assert journal_size(db) == before


def test_post_refuses_to_take_a_lot_below_zero(db: Database, org: str) -> None:
    lot_id = grant(db, org, credits(5))
    with pytest.raises(ledger.InvariantViolation, match="below zero"):
        _post(db, org, [Posting(Account.LOT, -credits(6), lot_id), Posting("breakage", credits(6))])
    assert remaining(db, lot_id) == [credits(5)]


def test_credits_never_move_between_organizations(db: Database, make_org: MakeOrg) -> None:
    """No code path may post to another organization's lot, nor across environments."""
    acme, globex = make_org("Acme AI"), make_org("Globex")
    globex_lot = grant(db, globex, credits(50))
    acme_test_lot = grant(db, acme, credits(50), environment="test")
    before = journal_size(db)
    for lot_id in (globex_lot, acme_test_lot, "lot_DOESNOTEXIST"):
        with pytest.raises(ledger.InvariantViolation, match="own organization"):
            _post(
                db,
                acme,
                [Posting(Account.LOT, -credits(1), lot_id), Posting("breakage", credits(1))],
            )
    assert journal_size(db) == before
    assert remaining(db, globex_lot, acme_test_lot) == [credits(50), credits(50)]


def test_one_post_call_writes_several_drafts_atomically(db: Database, org: str) -> None:
    lot_id = grant(db, org, credits(10))
    drafts = [
        ledger.TransactionDraft(
            "debit",
            "a",
            [Posting(Account.LOT, -credits(4), lot_id), Posting("consumption:x", credits(4))],
        ),
        ledger.TransactionDraft(
            "debit",
            "b",
            [Posting(Account.LOT, -credits(6), lot_id), Posting("consumption:x", credits(6))],
        ),
    ]
    with db.write() as s:
        locked = ledger.lock_balance(s, org, "live")
        ids = ledger.post(s, locked, drafts, T0)
        assert locked.lots_micros == 0
    assert len(ids) == 2
    assert ids[0] < ids[1]
    assert remaining(db, lot_id) == [0]
    # One more credit than the lot holds, split across two drafts, is refused as a whole.
    grant(db, org, credits(1))
    before = journal_size(db)
    with pytest.raises(ledger.InvariantViolation, match="below zero"):
        _post_drafts(db, org, drafts)
    assert journal_size(db) == before
    with db.write() as s:
        assert ledger.post(s, ledger.lock_balance(s, org, "live"), [], T0) == []


# --- everything at once --------------------------------------------------------------------------


def test_a_quarter_in_the_life_of_a_professional_organization(
    db: Database, make_org: MakeOrg
) -> None:
    """Three monthly allocations rolling over, a promo, purchases, overdraft, expiry and refunds —
    and at the end the journal still proves every balance."""
    org = make_org("Initech")
    neighbour = make_org("Globex")
    grant(db, neighbour, credits(5000), source=LotSource.PLAN, expires_at=END_OF_JUNE)
    debit(db, neighbour, credits(17))

    months = [utc(2026, 1, 1), utc(2026, 2, 1), utc(2026, 3, 1), utc(2026, 4, 1)]
    refunds = []
    for n, start in enumerate(months[:3]):
        grant(
            db,
            org,
            credits(5000),
            source=LotSource.PLAN,
            at=start,
            expires_at=utc(2026, 4 + n, 1),
        )
        if n == 1:
            grant(db, org, credits(250), source=LotSource.PROMO, at=start)
        for day in (3, 10, 17, 24):
            at = start.replace(day=day)
            refunds.append(debit(db, org, credits("1234.5"), at=at, operation="training"))
        with db.write() as s:
            ledger.expire_due(s, months[n + 1])
    overdraft = debit(db, org, credits(20_000), at=utc(2026, 3, 30))
    assert overdraft.arrears_added_micros > 0
    grant(db, org, credits(1000), at=utc(2026, 3, 31))
    reverse(db, org, refunds[0].transaction_id, at=utc(2026, 3, 31))
    reverse(db, org, overdraft.transaction_id, at=utc(2026, 3, 31))

    with db.read() as s:
        assert verify(s) == []
        view = ledger.get_balance(s, org, "live", utc(2026, 3, 31))
    lots, arrears, held = materialized(db, org)
    assert view.arrears_micros == arrears
    assert held == 0
    assert view.available_micros == lots - arrears
