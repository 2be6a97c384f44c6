"""A price cache for one batch of events: AI workloads repeat a few shapes, and pricing each copy again
would redo the same exact arithmetic.

``price`` reads only the version, the operation, the quantities, whether the operation's off-peak
window covers ``occurred_at`` (and that ``occurred_at`` is aware) and whether ``cache_hit`` is set; the
key is exactly those. Only shapes whose quantity values are ``str`` or ``int`` are cached: equal values
of those types always have the same text (``Decimal("1.0") == Decimal("1.00")`` would not), and every
other type is an error or unusual. Errors are never cached: each failing event raises afresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from creditmeter.pricing.domain import Price, RateCardVersion, price

_CACHEABLE = (str, int)


def quantities_key(quantities: Mapping[str, object]) -> tuple[tuple[str, Any], ...] | None:
    """The quantities as a hashable key, or None when they cannot be keyed safely (a value that is
    neither ``str`` nor ``int``, or a key that is not a ``str``). Equal keys mean equal quantity
    texts, in the same order."""
    if type(quantities) is not dict:
        return None
    for name, value in quantities.items():
        if type(value) not in _CACHEABLE or type(name) is not str:
            return None
    return tuple(quantities.items())


class PriceCache:
    """Prices computed once per distinct (version, operation, quantities, off-peak, cache-hit) shape.

    ``cache.price(...)`` returns exactly what :func:`creditmeter.pricing.domain.price` returns for the
    same arguments (the same ``Price`` object for the same shape; prices are immutable)."""

    __slots__ = ("_prices",)

    def __init__(self) -> None:
        self._prices: dict[tuple[Any, ...], Price] = {}

    def price(
        self,
        version: RateCardVersion,
        operation: str,
        quantities: Mapping[str, object],
        occurred_at: datetime,
        cache_hit: bool = False,
    ) -> Price:
        op = version.operations.get(operation) if type(operation) is str else None
        shape = quantities_key(quantities)
        if op is None or shape is None or occurred_at.tzinfo is not UTC:
            return price(version, operation, quantities, occurred_at, cache_hit)
        off_peak = op.off_peak is not None and op.off_peak.applies(occurred_at)
        key = (version, operation, shape, off_peak, bool(cache_hit))
        found = self._prices.get(key)
        if found is None:
            found = self._prices[key] = price(
                version, operation, quantities, occurred_at, cache_hit
            )
        return found

    def __len__(self) -> int:
        return len(self._prices)
