"""Card numbers and expiry dates: pure checks, no I/O.

A card number is only ever held in memory on its way to a provider's tokenizer; nothing here logs it,
and no message built here quotes it (a message names at most the last four digits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_SEPARATORS = re.compile(r"[ -]")
_DIGITS = re.compile(r"[0-9]{12,19}")
_CVC = re.compile(r"[0-9]{3,4}")
#: How far ahead an expiry date may lie.
MAX_YEARS_AHEAD = 50


class CardError(ValueError):
    """A card detail that cannot be right; ``field`` names it (``number``, ``exp_month``, ...)."""

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Card:
    """A validated card, as handed to a tokenizer. ``repr`` never shows the number or the CVC."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str | None = None

    def __repr__(self) -> str:
        return f"Card(brand={brand(self.number)!r}, last4={self.last4!r}, exp={self.exp_month:02d}/{self.exp_year})"

    __str__ = __repr__

    @property
    def last4(self) -> str:
        return self.number[-4:]

    @property
    def brand(self) -> str:
        return brand(self.number)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum of a string of digits holds."""
    if not digits.isdigit() or not digits.isascii():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that completes ``partial`` into a Luhn-valid number."""
    for digit in "0123456789":
        if luhn_valid(partial + digit):
            return digit
    raise AssertionError("unreachable: one digit always completes a Luhn sum")


def normalize_number(raw: str) -> str:
    """The digits of a card number written with optional spaces or dashes; a ``CardError`` when it
    is not 12-19 digits or fails the Luhn check."""
    digits = _SEPARATORS.sub("", raw)
    if not _DIGITS.fullmatch(digits):
        raise CardError(
            "card.number",
            "invalid_card_number",
            "a card number is 12 to 19 digits (spaces and dashes allowed)",
        )
    if not luhn_valid(digits):
        raise CardError(
            "card.number",
            "invalid_card_number",
            "this card number is not valid (its check digit is wrong); check it for typos",
        )
    return digits


def brand(number: str) -> str:
    """The card network by its number's prefix (``unknown`` when none matches)."""
    two, four, six = int(number[:2]), int(number[:4]), int(number[:6])
    if number.startswith("4"):
        return "visa"
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return "mastercard"
    if two in {34, 37}:
        return "amex"
    if (
        number.startswith(("6011", "65"))
        or 644 <= int(number[:3]) <= 649
        or 622126 <= six <= 622925
    ):
        return "discover"
    if 3528 <= four <= 3589:
        return "jcb"
    if two in {36, 38, 39} or 300 <= int(number[:3]) <= 305:
        return "diners"
    if two == 62:
        return "unionpay"
    return "unknown"


def check_expiry(exp_month: int, exp_year: int, now: datetime) -> tuple[int, int]:
    """A card is good through the last day of its expiry month. Two-digit years mean 20YY. Returns
    (month, four-digit year), or raises a ``CardError``."""
    if not 1 <= exp_month <= 12:
        raise CardError("card.exp_month", "invalid_expiry_month", "exp_month is 1 to 12")
    if 0 <= exp_year < 100:
        exp_year += 2000
    if not now.year <= exp_year <= now.year + MAX_YEARS_AHEAD:
        if exp_year < now.year:
            raise CardError("card.exp_year", "card_expired", "this card has expired")
        raise CardError(
            "card.exp_year",
            "invalid_expiry_year",
            f"exp_year is a four-digit year from {now.year} to {now.year + MAX_YEARS_AHEAD}",
        )
    if (exp_year, exp_month) < (now.year, now.month):
        raise CardError("card.exp_month", "card_expired", "this card has expired")
    return exp_month, exp_year


def check_cvc(cvc: str | None) -> str | None:
    if cvc is None:
        return None
    if not _CVC.fullmatch(cvc):
        raise CardError("card.cvc", "invalid_cvc", "the CVC is 3 or 4 digits")
    return cvc


class InvalidCard(ValueError):
    """Every problem found in one card (number, expiry, CVC), each a ``CardError``."""

    def __init__(self, problems: list[CardError]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


def validate(number: str, exp_month: int, exp_year: int, cvc: str | None, now: datetime) -> Card:
    """The card, checked whole: raises ``InvalidCard`` listing every problem (never the number)."""
    problems: list[CardError] = []
    digits = month = year = None
    try:
        digits = normalize_number(number)
    except CardError as exc:
        problems.append(exc)
    try:
        month, year = check_expiry(exp_month, exp_year, now)
    except CardError as exc:
        problems.append(exc)
    try:
        checked_cvc = check_cvc(cvc)
    except CardError as exc:
        problems.append(exc)
    if problems or digits is None or month is None or year is None:
        raise InvalidCard(problems)
    return Card(digits, month, year, checked_cvc)
