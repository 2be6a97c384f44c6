"""Credits are exact: integer micro-credits inside, decimal strings outside, never a float."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from creditmeter.kit.credits import (
    DECIMALS,
    MAX_CREDITS_MICROS,
    MICROS_PER_CREDIT,
    CreditsFormatError,
    credits_to_decimal,
    format_credits,
    parse_credits,
)

CANONICAL = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]{0,5}[1-9])?$")

amounts = st.integers(min_value=-MAX_CREDITS_MICROS, max_value=MAX_CREDITS_MICROS)


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("0", 0),
        ("1", 1_000_000),
        ("12.5", 12_500_000),
        ("0.000001", 1),
        ("1000", 1_000_000_000),
        ("5000.000000", 5_000_000_000),
        ("-3.25", -3_250_000),
        ("-0", 0),
        ("1000000000000", MAX_CREDITS_MICROS),
    ],
)
def test_parse_examples(text: str, micros: int) -> None:
    assert parse_credits(text) == micros


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0"),
        (1, "0.000001"),
        (12_500_000, "12.5"),
        (1_000_000_000, "1000"),
        (-3_250_000, "-3.25"),
        (1_234_567, "1.234567"),
        (MAX_CREDITS_MICROS, "1000000000000"),
    ],
)
def test_format_examples(micros: int, text: str) -> None:
    assert format_credits(micros) == text


@given(amounts)
def test_format_then_parse_is_the_identity(micros: int) -> None:
    assert parse_credits(format_credits(micros)) == micros


@given(amounts)
def test_format_is_the_shortest_exact_decimal(micros: int) -> None:
    text = format_credits(micros)
    assert CANONICAL.match(text), text
    assert Decimal(text) * MICROS_PER_CREDIT == micros
    assert credits_to_decimal(micros) == Decimal(text)


@given(
    whole=st.integers(min_value=0, max_value=MAX_CREDITS_MICROS // MICROS_PER_CREDIT - 1),
    frac=st.text(alphabet="0123456789", min_size=0, max_size=DECIMALS),
    negative=st.booleans(),
)
def test_any_decimal_with_at_most_six_places_parses_exactly(
    whole: int, frac: str, negative: bool
) -> None:
    text = ("-" if negative else "") + str(whole) + (f".{frac}" if frac else "")
    expected = Decimal(text) * MICROS_PER_CREDIT
    assert parse_credits(text) == int(expected)
    # ... and formatting it back gives the same number, written canonically.
    assert Decimal(format_credits(parse_credits(text))) == Decimal(text)


@given(
    whole=st.integers(min_value=0, max_value=10**6),
    frac=st.text(alphabet="0123456789", min_size=DECIMALS + 1, max_size=30),
    negative=st.booleans(),
)
def test_more_than_six_decimal_places_is_refused_with_that_reason(
    whole: int, frac: str, negative: bool
) -> None:
    text = ("-" if negative else "") + f"{whole}.{frac}"
    with pytest.raises(CreditsFormatError, match="more than 6 decimal places"):
        parse_credits(text)


def test_a_seventh_decimal_place_is_refused_even_when_it_is_zero() -> None:
    """ "1.0000000" is one credit, but accepting it would invite 1.0000001 to be silently rounded."""
    with pytest.raises(CreditsFormatError, match="more than 6 decimal places"):
        parse_credits("1.0000000")


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_are_refused(value: float) -> None:
    with pytest.raises(CreditsFormatError, match="decimal string"):
        parse_credits(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [12, True, None, Decimal("12.5"), b"12.5", ["1"]])
def test_non_strings_are_refused(value: Any) -> None:
    with pytest.raises(CreditsFormatError, match="decimal string"):
        parse_credits(value)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        " ",
        "-",
        ".",
        "1.",
        ".5",
        "+1",
        "1e3",
        "1E-3",
        "0x10",
        "1_000",
        "1,5",
        "1 000",
        " 7.5 ",
        "7.5\n",
        "12.5 credits",
        "NaN",
        "Infinity",
        "--1",
        "1..2",
        "\u0661\u0662",  # Arabic-Indic digits: int() would take them, we do not
        "\uff11\uff12",  # full-width digits
    ],
)
def test_junk_is_refused_as_not_a_number(junk: str) -> None:
    with pytest.raises(CreditsFormatError, match="not a decimal number"):
        parse_credits(junk)


@pytest.mark.parametrize("text", ["01", "00.5", "-007"])
def test_leading_zeros_are_refused_without_blaming_decimal_places(text: str) -> None:
    with pytest.raises(CreditsFormatError, match="not a decimal number"):
        parse_credits(text)


@given(st.text(max_size=40))
def test_arbitrary_text_either_parses_exactly_or_raises_credits_format_error(text: str) -> None:
    try:
        micros = parse_credits(text)
    except CreditsFormatError:
        return
    assert Decimal(text.strip()) * MICROS_PER_CREDIT == micros


def test_the_largest_amount_is_accepted_and_one_micro_more_is_not() -> None:
    assert parse_credits(format_credits(MAX_CREDITS_MICROS)) == MAX_CREDITS_MICROS
    assert parse_credits(format_credits(-MAX_CREDITS_MICROS)) == -MAX_CREDITS_MICROS
    with pytest.raises(CreditsFormatError, match="too large"):
        parse_credits(format_credits(MAX_CREDITS_MICROS + 1))


@pytest.mark.parametrize("digits", [14, 100, 5000])
def test_absurdly_long_numbers_are_too_large_not_a_crash(digits: int) -> None:
    with pytest.raises(CreditsFormatError, match="too large"):
        parse_credits("9" * digits)
    with pytest.raises(CreditsFormatError, match="too large"):
        parse_credits("-" + "9" * digits + ".5")
