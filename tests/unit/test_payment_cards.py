"""Card numbers and expiry dates (pure): the Luhn check, brands, expiry, and messages that never
quote a number; hypothesis for the checksum and for the purchase price of any amount."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditmeter.billing import domain
from creditmeter.billing.payments import cards
from creditmeter.billing.payments.sandbox import TEST_CARDS, TEST_TOKENS

NOW = datetime(2026, 1, 16, tzinfo=UTC)
digits = st.text(alphabet="0123456789", min_size=11, max_size=18)


@pytest.mark.parametrize("number", [*TEST_CARDS, *TEST_TOKENS.values(), "378282246310005"])
def test_every_test_card_passes_the_luhn_check(number: str) -> None:
    assert cards.luhn_valid(number)
    assert cards.normalize_number(number) == number


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4242424242424242", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("3566002020360505", "jcb"),
        ("36227206271667", "diners"),
        ("6200000000000005", "unionpay"),
    ],
)
def test_the_brand_comes_from_the_prefix(number: str, brand: str) -> None:
    assert cards.brand(number) == brand


@settings(deadline=None)
@given(digits)
def test_one_check_digit_completes_any_number_and_changing_any_digit_breaks_it(
    partial: str,
) -> None:
    number = partial + cards.luhn_check_digit(partial)
    assert cards.luhn_valid(number)
    for index in range(len(number)):
        for other in "0123456789":
            if other != number[index]:
                changed = number[:index] + other + number[index + 1 :]
                assert not cards.luhn_valid(changed)


@settings(deadline=None)
@given(digits, st.sampled_from([" ", "-", ""]))
def test_separators_are_ignored_and_the_message_never_quotes_the_number(
    partial: str, sep: str
) -> None:
    number = partial + cards.luhn_check_digit(partial)
    written = sep.join(number[i : i + 4] for i in range(0, len(number), 4))
    assert cards.normalize_number(written) == number
    wrong = number[:-1] + str((int(number[-1]) + 1) % 10)
    with pytest.raises(cards.CardError) as raised:
        cards.normalize_number(wrong)
    assert wrong not in str(raised.value)
    assert wrong[-4:] not in str(raised.value)


def test_a_card_is_good_through_the_end_of_its_expiry_month() -> None:
    assert cards.check_expiry(1, 2026, NOW) == (1, 2026)
    assert cards.check_expiry(1, 26, NOW) == (1, 2026)
    with pytest.raises(cards.CardError, match="expired"):
        cards.check_expiry(12, 2025, NOW)
    with pytest.raises(cards.CardError, match="1 to 12"):
        cards.check_expiry(13, 2030, NOW)
    with pytest.raises(cards.CardError, match="four-digit"):
        cards.check_expiry(1, 2099, NOW)


def test_validation_reports_every_problem_and_repr_hides_the_number() -> None:
    with pytest.raises(cards.InvalidCard) as raised:
        cards.validate("4242424242424241", 0, 2030, "1", NOW)
    assert [p.field for p in raised.value.problems] == ["card.number", "card.exp_month", "card.cvc"]
    card = cards.validate("4242 4242 4242 4242", 12, 2030, "123", NOW)
    assert "4242424242424242" not in repr(card)
    assert "123" not in repr(card).replace("2030", "")
    assert (card.brand, card.last4) == ("visa", "4242")


@settings(deadline=None)
@given(
    st.integers(min_value=1, max_value=10_000).map(lambda n: n * 100_000_000),
    st.integers(min_value=1, max_value=10_000_000),
)
def test_a_purchase_costs_credits_times_price_rounded_once_and_its_cost_basis_is_that_price(
    credits_micros: int, price_micros: int
) -> None:
    amount = domain.purchase_price_minor(credits_micros, price_micros, "USD")
    exact = Fraction(credits_micros, 1_000_000) * Fraction(price_micros, 1_000_000) * 100
    assert abs(amount - exact) <= Fraction(1, 2)
    if amount:
        basis = domain.cost_basis_micros(amount, credits_micros, "USD")
        # the cost basis is the price per credit actually paid: within the rounding of the price
        # (half a minor unit spread over the credits) and of the basis itself (half a millionth)
        spread = Fraction(1_000_000 * 1_000_000, 200 * credits_micros)
        assert abs(basis - price_micros) <= Fraction(1, 2) + spread
