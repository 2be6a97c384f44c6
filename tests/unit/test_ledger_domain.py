"""The pure ledger rules: which lots pay, in which order, and how a debit splits over them.

The burn order is checked against :func:`reference_burn_order`, a deliberately plain re-statement of
DESIGN.md §2 "Grant" written without looking at :func:`creditmeter.ledger.domain.burn_key`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import cmp_to_key

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from creditmeter.ledger import domain
from creditmeter.ledger.domain import (
    Account,
    DebitPlan,
    LotSource,
    LotState,
    Posting,
    UnbalancedTransaction,
)
from tests.conftest import utc

C = 1_000_000  # micro-credits per credit
T0 = utc(2026, 3, 1)


# --- the reference model -------------------------------------------------------------------------


def reference_is_usable(lot: LotState, at: datetime) -> bool:
    if lot.remaining_micros <= 0:
        return False
    if at < lot.effective_at:  # not yet effective
        return False
    return not (lot.expires_at is not None and at >= lot.expires_at)  # expired


def _compare(a: LotState, b: LotState) -> int:
    def cmp(x: object, y: object) -> int:
        return -1 if x < y else (1 if x > y else 0)  # type: ignore[operator]

    if a.priority != b.priority:
        return cmp(a.priority, b.priority)  # lower number first
    if a.expires_at != b.expires_at:  # soonest expiry first, never-expiring last
        if a.expires_at is None:
            return 1
        if b.expires_at is None:
            return -1
        return cmp(a.expires_at, b.expires_at)
    a_promo, b_promo = a.source == "promo", b.source == "promo"
    if a_promo != b_promo:  # promotional before anything else
        return -1 if a_promo else 1
    if a.created_at != b.created_at:  # oldest first
        return cmp(a.created_at, b.created_at)
    return cmp(a.id, b.id)


def reference_burn_order(lots: Iterable[LotState], at: datetime) -> list[LotState]:
    """Usable lots sorted by priority, expiry (never last), promo first, oldest, id."""
    return sorted((lot for lot in lots if reference_is_usable(lot, at)), key=cmp_to_key(_compare))


def reference_split(
    lots: Iterable[LotState], amount: int, at: datetime
) -> tuple[list[tuple[str, int]], int]:
    """Walk the lots in reference order taking what each has; the rest is arrears."""
    takes = []
    left = amount
    for lot in reference_burn_order(lots, at):
        if left == 0:
            break
        take = min(left, lot.remaining_micros)
        takes.append((lot.id, take))
        left -= take
    return takes, left


# --- strategies ----------------------------------------------------------------------------------

# A coarse grid of instants so that ties on expiry, creation and effective time are common.
instants = st.integers(min_value=0, max_value=8).map(lambda h: T0 + timedelta(hours=h))
sources = st.sampled_from(list(LotSource))
priorities = st.sampled_from([0, 50, 100, 100, 100, 200])


@st.composite
def lot_states(draw: st.DrawFn, lot_id: str) -> LotState:
    effective_at = draw(instants)
    expires_at = draw(
        st.one_of(
            st.none(),
            st.integers(min_value=1, max_value=8).map(lambda h: effective_at + timedelta(hours=h)),
        )
    )
    return LotState(
        id=lot_id,
        source=draw(sources).value,
        remaining_micros=draw(st.one_of(st.just(0), st.integers(min_value=1, max_value=50 * C))),
        effective_at=effective_at,
        expires_at=expires_at,
        priority=draw(priorities),
        created_at=draw(instants),
    )


@st.composite
def lot_sets(draw: st.DrawFn, max_size: int = 8) -> list[LotState]:
    ids = draw(
        st.lists(
            st.text(alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=1, max_size=4),
            unique=True,
            max_size=max_size,
        )
    )
    return [draw(lot_states(f"lot_{i}")) for i in ids]


debit_amounts = st.integers(min_value=0, max_value=300 * C)


def lot(
    lot_id: str,
    remaining: int,
    *,
    source: LotSource = LotSource.PURCHASE,
    effective_at: datetime = T0,
    expires_at: datetime | None = None,
    priority: int = 100,
    created_at: datetime = T0,
) -> LotState:
    return LotState(lot_id, source.value, remaining, effective_at, expires_at, priority, created_at)


def ids(lots: Iterable[LotState]) -> list[str]:
    return [x.id for x in lots]


# --- burn order: properties ----------------------------------------------------------------------


@settings(max_examples=500)
@given(lot_sets(), instants)
def test_burn_order_matches_the_reference_model(lots: list[LotState], at: datetime) -> None:
    assert ids(domain.burn_order(lots, at)) == ids(reference_burn_order(lots, at))


@given(lot_sets(), instants)
def test_burn_order_does_not_depend_on_the_order_lots_are_loaded(
    lots: list[LotState], at: datetime
) -> None:
    assert ids(domain.burn_order(lots, at)) == ids(domain.burn_order(reversed(lots), at))


@given(lot_sets(), instants)
def test_expired_and_not_yet_effective_lots_never_appear_in_the_burn_order(
    lots: list[LotState], at: datetime
) -> None:
    for x in domain.burn_order(lots, at):
        assert x.effective_at <= at
        assert x.expires_at is None or x.expires_at > at
        assert x.remaining_micros > 0


# --- burn order: stories -------------------------------------------------------------------------


def test_promo_credits_pay_before_purchased_credits_expiring_at_the_same_time() -> None:
    """A Professional organization's promo credits pay before its purchased credits."""
    end = utc(2026, 6, 1)
    purchased = lot("purchased", 5000 * C, source=LotSource.PURCHASE, expires_at=end)
    promo = lot(
        "promo", 100 * C, source=LotSource.PROMO, expires_at=end, created_at=T0 + timedelta(days=1)
    )
    assert ids(domain.burn_order([purchased, promo], T0 + timedelta(days=2))) == [
        "promo",
        "purchased",
    ]


def test_never_expiring_promo_credits_pay_before_never_expiring_purchased_credits() -> None:
    """Two lots that never expire tie on expiry, so the promo lot pays first — even if the purchased
    lot became effective earlier (the tie is not broken by effective time)."""
    purchased = lot("purchased", 10 * C, source=LotSource.PURCHASE, effective_at=T0)
    promo = lot("promo", 10 * C, source=LotSource.PROMO, effective_at=T0 + timedelta(hours=1))
    assert ids(domain.burn_order([purchased, promo], T0 + timedelta(days=1))) == [
        "promo",
        "purchased",
    ]


def test_the_soonest_expiring_lot_pays_first_and_never_expiring_lots_pay_last() -> None:
    """A Professional organization with three months of rolled-over plan credits spends the oldest
    cycle's allocation (expiring soonest) first; a never-expiring purchase waits until the end."""
    purchase = lot(
        "purchase", 1000 * C, source=LotSource.PURCHASE, created_at=T0 - timedelta(days=90)
    )
    march = lot("march", 5000 * C, source=LotSource.PLAN, expires_at=utc(2026, 7, 1))
    january = lot("january", 5000 * C, source=LotSource.PLAN, expires_at=utc(2026, 5, 1))
    february = lot("february", 5000 * C, source=LotSource.PLAN, expires_at=utc(2026, 6, 1))
    order = domain.burn_order([purchase, march, january, february], T0)
    assert ids(order) == ["january", "february", "march", "purchase"]


def test_priority_overrides_expiry_and_source() -> None:
    """The operator gave a goodwill adjustment priority 10: it pays before a promo lot expiring
    tomorrow."""
    promo = lot("promo", 10 * C, source=LotSource.PROMO, expires_at=T0 + timedelta(days=1))
    goodwill = lot("goodwill", 10 * C, source=LotSource.ADJUSTMENT, priority=10)
    assert ids(domain.burn_order([promo, goodwill], T0)) == ["goodwill", "promo"]


def test_among_equal_lots_the_oldest_pays_first_and_the_id_breaks_the_last_tie() -> None:
    older = lot("lot_B", 1 * C, created_at=T0)
    newer = lot("lot_A", 1 * C, created_at=T0 + timedelta(seconds=1))
    twin = lot("lot_0", 1 * C, created_at=T0)
    assert ids(domain.burn_order([newer, older, twin], T0 + timedelta(hours=1))) == [
        "lot_0",
        "lot_B",
        "lot_A",
    ]


def test_an_expired_lot_never_pays_and_expiry_is_exclusive() -> None:
    """A lot expiring at midnight no longer pays at midnight."""
    midnight = utc(2026, 4, 1)
    standard = lot("standard", 1000 * C, source=LotSource.PLAN, expires_at=midnight)
    assert domain.is_usable(standard, midnight - timedelta(microseconds=1))
    assert not domain.is_usable(standard, midnight)
    assert domain.is_due_to_expire(standard, midnight)
    assert not domain.is_due_to_expire(standard, midnight - timedelta(microseconds=1))
    assert domain.burn_order([standard], midnight) == []


def test_a_lot_pays_from_the_moment_it_becomes_effective() -> None:
    april = utc(2026, 4, 1)
    allocation = lot("april", 1000 * C, source=LotSource.PLAN, effective_at=april)
    assert not domain.is_usable(allocation, april - timedelta(microseconds=1))
    assert domain.is_usable(allocation, april)


def test_an_empty_lot_does_not_pay_and_is_not_due_to_expire() -> None:
    spent = lot("spent", 0, expires_at=T0)
    assert not domain.is_usable(spent, T0 - timedelta(days=1))
    assert not domain.is_due_to_expire(spent, T0 + timedelta(days=1))


# --- splitting a debit ---------------------------------------------------------------------------


@given(lot_sets(), debit_amounts, instants)
def test_a_debit_split_over_lots_preserves_the_total(
    lots: list[LotState], amount: int, at: datetime
) -> None:
    plan = domain.plan_debit(lots, amount, at)
    assert plan.total_micros == amount
    assert sum(take for _, take in plan.takes) + plan.arrears_micros == amount
    assert plan.arrears_micros >= 0


@given(lot_sets(), debit_amounts, instants)
def test_a_debit_split_matches_the_reference_model(
    lots: list[LotState], amount: int, at: datetime
) -> None:
    plan = domain.plan_debit(lots, amount, at)
    takes, arrears = reference_split(lots, amount, at)
    assert list(plan.takes) == takes
    assert plan.arrears_micros == arrears


@given(lot_sets(), debit_amounts, instants)
def test_no_lot_gives_more_than_it_has_and_arrears_only_once_every_lot_is_empty(
    lots: list[LotState], amount: int, at: datetime
) -> None:
    plan = domain.plan_debit(lots, amount, at)
    by_id = {x.id: x for x in lots}
    usable = domain.burn_order(lots, at)
    for lot_id, take in plan.takes:
        assert 0 < take <= by_id[lot_id].remaining_micros
        assert domain.is_usable(by_id[lot_id], at)
    # Every lot but the last one taken is emptied.
    for lot_id, take in plan.takes[:-1]:
        assert take == by_id[lot_id].remaining_micros
    if plan.arrears_micros:
        assert len(plan.takes) == len(usable)
        assert sum(t for _, t in plan.takes) == sum(x.remaining_micros for x in usable)


def test_a_debit_larger_than_the_balance_empties_every_lot_and_the_rest_is_arrears() -> None:
    lots = [lot("a", 3 * C), lot("b", 2 * C, expires_at=T0 + timedelta(days=1))]
    plan = domain.plan_debit(lots, 8 * C, T0)
    assert plan == DebitPlan(takes=(("b", 2 * C), ("a", 3 * C)), arrears_micros=3 * C)


def test_a_negative_debit_is_refused() -> None:
    with pytest.raises(ValueError, match="never negative"):
        domain.plan_debit([], -1, T0)


def test_a_zero_debit_takes_nothing() -> None:
    assert domain.plan_debit([lot("a", C)], 0, T0) == DebitPlan((), 0)


@given(lot_sets(), st.integers(min_value=1, max_value=300 * C), instants)
def test_arrears_are_settled_as_far_as_usable_lots_go_and_never_beyond(
    lots: list[LotState], arrears: int, at: datetime
) -> None:
    plan = domain.plan_arrears_settlement(lots, arrears, at)
    usable_total = sum(x.remaining_micros for x in reference_burn_order(lots, at))
    assert plan.arrears_micros == 0
    assert sum(t for _, t in plan.takes) == min(arrears, usable_total)
    assert list(plan.takes) == reference_split(lots, arrears, at)[0]


def test_a_new_lot_pays_outstanding_arrears_first() -> None:
    """An organization ran 30 credits past zero; its next 100-credit purchase first pays those 30."""
    purchase = lot("purchase", 100 * C)
    plan = domain.plan_arrears_settlement([purchase], 30 * C, T0)
    assert plan.takes == (("purchase", 30 * C),)
    postings = domain.settlement_postings(plan)
    assert postings == [
        Posting(Account.LOT, -30 * C, "purchase"),
        Posting(Account.ARREARS, 30 * C),
    ]
    domain.check_balanced(postings)


def test_settling_nothing_posts_nothing() -> None:
    assert domain.settlement_postings(DebitPlan((), 0)) == []


# --- postings ------------------------------------------------------------------------------------


@given(lot_sets(), st.integers(min_value=1, max_value=300 * C), instants)
def test_debit_postings_always_sum_to_zero(lots: list[LotState], amount: int, at: datetime) -> None:
    plan = domain.plan_debit(lots, amount, at)
    postings = domain.debit_postings(plan, Account.consumption("inference"))
    domain.check_balanced(postings)
    assert sum(p.amount_micros for p in postings) == 0
    assert postings[-1] == Posting("consumption:inference", amount)
    arrears = [p for p in postings if p.account == Account.ARREARS]
    assert [p.amount_micros for p in arrears] == (
        [-plan.arrears_micros] if plan.arrears_micros else []
    )
    for p in postings:
        assert (p.lot_id is not None) == (p.account == Account.LOT)


@given(lot_sets(), st.integers(min_value=1, max_value=300 * C), instants)
def test_settlement_postings_always_sum_to_zero(
    lots: list[LotState], arrears: int, at: datetime
) -> None:
    postings = domain.settlement_postings(domain.plan_arrears_settlement(lots, arrears, at))
    assume(postings)
    domain.check_balanced(postings)


@given(lot_sets(), st.integers(min_value=1, max_value=300 * C), instants)
def test_a_reversal_negates_every_posting_and_still_sums_to_zero(
    lots: list[LotState], amount: int, at: datetime
) -> None:
    original = domain.debit_postings(domain.plan_debit(lots, amount, at), "consumption:training")
    reversal = domain.reversal_postings(original)
    domain.check_balanced(reversal)
    assert [(p.account, p.lot_id, -p.amount_micros) for p in reversal] == [
        (p.account, p.lot_id, p.amount_micros) for p in original
    ]
    assert domain.reversal_postings(reversal) == original


def test_check_balanced_refuses_an_unbalanced_transaction() -> None:
    with pytest.raises(UnbalancedTransaction, match="sum to 1"):
        domain.check_balanced([Posting(Account.LOT, 5, "lot_a"), Posting("breakage", -4)])


def test_check_balanced_refuses_an_empty_transaction() -> None:
    with pytest.raises(UnbalancedTransaction, match="needs postings"):
        domain.check_balanced([])


def test_check_balanced_refuses_a_zero_posting() -> None:
    with pytest.raises(UnbalancedTransaction, match="zero carries no information"):
        domain.check_balanced([Posting(Account.LOT, 0, "lot_a"), Posting("breakage", 0)])


def test_account_names() -> None:
    assert Account.issuance("promo") == "issuance:promo"
    assert Account.consumption("data_processing") == "consumption:data_processing"
    assert {Account.LOT, Account.ARREARS, Account.HELD} == domain.ORGANIZATION_ACCOUNTS
