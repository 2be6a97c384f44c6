"""The credits a refund takes back of a purchase (pure): in proportion to the money, rounded up so
the organization never keeps credits it got money back for, and partial refunds that add up to the
whole purchase take back exactly its credits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from creditmeter.billing.domain import refund_credits_micros, refundable_for_credits

C = 1_000_000


def test_worked_examples() -> None:
    # The standard package: 1,000 credits for USD 60.00.
    assert refund_credits_micros(0, 6000, 6000, 1000 * C) == 1000 * C
    assert refund_credits_micros(0, 1000, 6000, 1000 * C) == 166_666_667  # rounded up
    assert refund_credits_micros(1000, 5000, 6000, 1000 * C) == 833_333_333
    assert refundable_for_credits(0, 716_129_032, 6000, 1000 * C) == 4296
    with pytest.raises(ValueError, match="at most what is left"):
        refund_credits_micros(5000, 1001, 6000, 1000 * C)


@given(
    paid=st.integers(min_value=1, max_value=10**9),
    credits=st.integers(min_value=1, max_value=10**15),
    cuts=st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=6),
)
def test_partial_refunds_never_leave_refunded_credits_and_add_up_to_the_purchase(
    paid: int, credits: int, cuts: list[int]
) -> None:
    refunded = taken = 0
    for cut in cuts:
        amount = min(cut, paid - refunded)
        if amount <= 0:
            break
        taken += refund_credits_micros(refunded, amount, paid, credits)
        refunded += amount
        assert taken * paid >= refunded * credits  # never keeps credits it got money back for
        assert (taken - 1) * paid < refunded * credits  # and never takes a micro-credit more
    if refunded < paid:
        taken += refund_credits_micros(refunded, paid - refunded, paid, credits)
    assert taken == credits


@given(
    paid=st.integers(min_value=1, max_value=10**9),
    credits=st.integers(min_value=1, max_value=10**15),
    data=st.data(),
)
def test_the_most_refundable_is_the_largest_amount_whose_credits_fit(
    paid: int, credits: int, data: st.DataObject
) -> None:
    refunded = data.draw(st.integers(min_value=0, max_value=paid - 1))
    spare = data.draw(st.integers(min_value=0, max_value=credits))
    most = refundable_for_credits(refunded, spare, paid, credits)
    assert 0 <= most <= paid - refunded
    if most:
        assert refund_credits_micros(refunded, most, paid, credits) <= spare
    if most < paid - refunded:
        assert refund_credits_micros(refunded, most + 1, paid, credits) > spare
