"""Exact credit amounts.

Credits are stored as integer micro-credits (1 credit = 1,000,000 micros) and travel on the API as
decimal strings with at most six decimal places. Nothing here ever touches a float.
"""

from __future__ import annotations

import re
from decimal import Decimal

MICROS_PER_CREDIT = 1_000_000
DECIMALS = 6
#: The largest amount any single value may hold: fits a signed 64-bit column with room for sums.
MAX_CREDITS_MICROS = 10**18
#: The most any balance (lots, arrears or held) may hold: far inside a signed 64-bit column.
MAX_BALANCE_MICROS = 9 * 10**18

_CREDITS_RE = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]{1,6})?$")
_TOO_PRECISE_RE = re.compile(r"^-?(0|[1-9][0-9]*)\.[0-9]{7,}$")
#: More whole digits than the largest amount has: refused before ``int()`` sees a huge string.
_MAX_WHOLE_DIGITS = len(str(MAX_CREDITS_MICROS // MICROS_PER_CREDIT))


class CreditsFormatError(ValueError):
    """A credit amount that is not a decimal string with at most six decimal places."""


def parse_credits(text: str) -> int:
    """Parse ``"12.5"`` into micro-credits (12_500_000). Exact; rejects anything ambiguous."""
    if not isinstance(text, str):
        raise CreditsFormatError(
            'credits must be a decimal string such as "12.5", not a JSON number'
        )
    s = text
    if not _CREDITS_RE.fullmatch(s):
        if _TOO_PRECISE_RE.fullmatch(s):
            raise CreditsFormatError(
                f"credits {text!r} has more than {DECIMALS} decimal places; "
                'round it to at most 6, e.g. "0.000001"'
            )
        raise CreditsFormatError(
            f'credits {text!r} is not a decimal number; send a string such as "1000" or "12.5"'
        )
    negative = s.startswith("-")
    if negative:
        s = s[1:]
    whole, _, frac = s.partition(".")
    if len(whole) > _MAX_WHOLE_DIGITS:
        micros = MAX_CREDITS_MICROS + 1
    else:
        micros = int(whole) * MICROS_PER_CREDIT + int(frac.ljust(DECIMALS, "0") or "0")
    if micros > MAX_CREDITS_MICROS:
        raise CreditsFormatError(
            f"credits {text!r} is too large; the largest amount is {format_credits(MAX_CREDITS_MICROS)}"
        )
    return -micros if negative else micros


def format_credits(micros: int) -> str:
    """Render micro-credits as the shortest exact decimal string: 12_500_000 -> ``"12.5"``."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_CREDIT)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")


def credits_to_decimal(micros: int) -> Decimal:
    return Decimal(micros).scaleb(-DECIMALS)
