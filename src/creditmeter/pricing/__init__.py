"""Pricing: versioned, effective-dated rate cards, and the exact price of a usage event.

Design note.

- **The rate card** is the operator's TOML price book (``default_rate_card.toml`` ships here and is
  documented line by line; ``CREDITMETER_RATE_CARD`` names another). It holds ``[[versions]]``, each in
  force from its ``effective_at`` until the next one's: an event is priced by the version in force at its
  ``occurred_at``, and a boundary instant belongs to the newer version. ``ratecard.py`` validates a file
  whole (every problem reported at once, naming file, version and key) and precomputes each version.
- **A price** (``domain.price``, pure, no I/O) is exact. Quantities are decimal strings or integers,
  never floats. Lines are built in a fixed order: base; one line per dimension (quantity x rate);
  instance-class multiplier; off-peak multiplier; cache-hit multiplier (each a signed difference);
  minimum-charge top-up. All of it is exact ``Decimal``; the total is rounded ONCE to integer
  micro-credits with ``ROUNDING`` (half-even), and then split over the lines by largest remainder, so
  the breakdown always sums to the debit exactly.
- **Errors**: bad input is a ``PricingError`` (422) with a stable ``code`` (``unknown_operation``,
  ``unknown_dimension``, ``invalid_quantity``, ``unknown_class``, ``invalid_occurred_at``,
  ``no_rate_card_version``) and field-level ``errors`` that say what to send instead. An invalid rate
  card file is a ``RateCardError`` (configuration, 500).
- **Speed**: ``price`` runs for every usage event. Rates are parsed and scaled to micro-credits, class
  tables built and off-peak hours tabulated at load time; the hot path parses quantities, multiplies and
  adds a handful of Decimals in an exact context (one that raises rather than rounds).
"""

from creditmeter.pricing.domain import (
    ROUNDING,
    BreakdownLine,
    OffPeak,
    OperationRates,
    Price,
    PricingError,
    Rate,
    RateCard,
    RateCardVersion,
    exact_total,
    price,
)
from creditmeter.pricing.ratecard import (
    RATE_CARD_ENV,
    RateCardError,
    clear_rate_card_cache,
    load_rate_card,
    parse_rate_card,
)

__all__ = [
    "RATE_CARD_ENV",
    "ROUNDING",
    "BreakdownLine",
    "OffPeak",
    "OperationRates",
    "Price",
    "PricingError",
    "Rate",
    "RateCard",
    "RateCardError",
    "RateCardVersion",
    "clear_rate_card_cache",
    "exact_total",
    "load_rate_card",
    "parse_rate_card",
    "price",
]
