"""Turning the caller's values into exact JSON, and the server's JSON back into exact values.

Credits travel as decimal strings (``"12.5"``, at most six decimal places) and are accepted from the
caller as ``str``, ``int`` or :class:`~decimal.Decimal` only: a ``float`` is refused with a
``TypeError`` because ``0.1`` is not an exact amount. Quantities are measurements, not money: an
``int`` stays a JSON integer, a ``Decimal`` or a ``float`` (e.g. measured seconds, through its
shortest exact repr: ``0.1`` -> ``"0.1"``) becomes a decimal string so no digit is lost, and a
``str`` is sent as given (a decimal such as ``"1.5"``, or a class such as ``"a100"`` for a
dimension priced by class). Responses are parsed with ``parse_float=Decimal``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

#: What a credits argument may be.
Credits = str | int | Decimal
#: What a quantity may be.
Quantity = str | int | float | Decimal

CREDIT_DECIMALS = 6


def new_id() -> str:
    """A fresh random UUID4 string (event ids and idempotency keys)."""
    return str(uuid.uuid4())


def _decimal_from(value: str | Decimal, what: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{what} {value!r} is not a decimal number, e.g. '12.5'") from None
    if not number.is_finite():
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return number


def _plain(number: Decimal) -> str:
    """``Decimal`` as a plain decimal string without exponent or trailing zeros: 1E+3 -> "1000"."""
    if number == 0:
        return "0"
    return format(number.normalize(), "f")


def credits_json(value: object, what: str = "credits") -> str:
    """An exact credits argument as the API's decimal string. Refuses floats and bools."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        kind = type(value).__name__
        hint = (
            f"; {value!r} is not an exact amount, pass Decimal('{value}') or '{value}'"
            if isinstance(value, float)
            else ""
        )
        raise TypeError(f"{what} must be str, int or decimal.Decimal, not {kind}{hint}")
    if isinstance(value, int):
        return str(value)
    number = _decimal_from(value, what)
    exponent = number.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -CREDIT_DECIMALS:
        raise ValueError(
            f"{what} {value!r} has more than {CREDIT_DECIMALS} decimal places; "
            "round it first, e.g. '0.000001'"
        )
    return _plain(number)


def quantity_json(value: object, what: str = "quantity") -> int | str:
    """A quantity as JSON: an int or a str as given, a Decimal or float as an exact decimal string."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise TypeError(
            f"{what} must be int, decimal.Decimal, str or float, not {type(value).__name__}"
        )
    if isinstance(value, int | str):
        return value
    return _plain(_decimal_from(repr(value) if isinstance(value, float) else value, what))


def quantities_json(quantities: Mapping[str, object] | None) -> dict[str, int | str]:
    """Every quantity converted with :func:`quantity_json`; keys must be strings."""
    if quantities is None:
        return {}
    if not isinstance(quantities, Mapping):
        raise TypeError(f"quantities must be a mapping, not {type(quantities).__name__}")
    out: dict[str, int | str] = {}
    for name, value in quantities.items():
        if not isinstance(name, str):
            raise TypeError(f"quantity names must be strings, not {type(name).__name__}")
        out[name] = quantity_json(value, f"quantity {name!r}")
    return out


def timestamp_json(value: datetime | str) -> str:
    """An aware ``datetime`` as RFC 3339 UTC (``...Z``); a string is passed through as given."""
    if isinstance(value, str):
        return value
    if not isinstance(value, datetime):
        raise TypeError(f"occurred_at must be a datetime or str, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("occurred_at must be timezone-aware, e.g. datetime.now(UTC)")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def prepare_event(event: object) -> dict[str, Any]:
    """A copy of a usage event ready to send: an ``id`` (UUID4 if missing), exact quantities and an
    RFC 3339 ``occurred_at``. Other fields pass through untouched for the server to judge, so
    one bad event in a batch is rejected on its own instead of failing the whole batch here."""
    if not isinstance(event, Mapping):
        raise TypeError(f"each usage event must be a mapping (a dict), not {type(event).__name__}")
    prepared: dict[str, Any] = {k: v for k, v in event.items() if v is not None}
    prepared["id"] = str(prepared["id"]) if prepared.get("id") is not None else new_id()
    if "quantities" in prepared:
        prepared["quantities"] = quantities_json(prepared["quantities"])
    if "occurred_at" in prepared:
        prepared["occurred_at"] = timestamp_json(prepared["occurred_at"])
    return prepared


def body_bytes(body: Mapping[str, Any]) -> bytes:
    """The exact bytes sent for a body (compact, built once per logical call, reused by retries)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def compact(**fields: Any) -> dict[str, Any]:
    """A request body without the optional fields the caller left as ``None``."""
    return {k: v for k, v in fields.items() if v is not None}


def to_decimal(value: object, what: str) -> Decimal:
    """An exact ``Decimal`` from a response value (a decimal string, an int or a parsed number)."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"{what} should be a decimal string, got {value!r}")
    return Decimal(value) if isinstance(value, int) else _decimal_from(value, what)


def to_datetime(value: object, what: str) -> datetime:
    """An aware ``datetime`` from an RFC 3339 string (naive values are read as UTC)."""
    if not isinstance(value, str):
        raise ValueError(f"{what} should be an RFC 3339 timestamp, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} should be an RFC 3339 timestamp, got {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
