"""Pure pricing: a rate-card version, an operation and its quantities in; an exact price out.

No I/O here. Every amount is a ``Decimal`` computed in an exact context (any rounding the arithmetic
would need raises instead), until the one rounding step described in ``price``.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
)
from typing import Any

from creditmeter.errors import InvalidRequest
from creditmeter.kit.credits import MAX_CREDITS_MICROS, MICROS_PER_CREDIT, format_credits

#: The one rounding step: the exact total, in micro-credits, rounded half-to-even to an integer.
ROUNDING = ROUND_HALF_EVEN
#: Quantities carry at most this many decimal places ...
MAX_QUANTITY_DECIMALS = 12
#: ... and are at most this large (10^15 tokens, GPU-seconds or GB is no real event).
MAX_QUANTITY = 10**15
#: The only string-valued keys of ``quantities``: they choose a class rather than measure anything.
ACCELERATOR = "accelerator"
INSTANCE_CLASS = "instance_class"
SELECTORS = (ACCELERATOR, INSTANCE_CLASS)
#: The dimension priced per accelerator class.
GPU_SECONDS = "gpu_seconds"
#: Units of the standard dimensions; dimensions an operator adds are counted in "unit".
UNITS = {
    "gpu_seconds": "second",
    "cpu_seconds": "second",
    "data_gb": "GB",
    "input_tokens": "token",
    "output_tokens": "token",
}
#: The order in which breakdown lines are built (docs/metering.md, "The rate card").
LINE_ORDER = ("base", "dimensions", "instance_class", "off_peak", "cache_hit", "minimum_charge")

#: Exact arithmetic: a result that would need rounding (or overflow) raises instead of rounding.
EXACT = Context(prec=400, traps=[Inexact, Rounded, InvalidOperation, Overflow])
_mul = EXACT.multiply
_add = EXACT.add
_sub = EXACT.subtract
_MICROS = Decimal(MICROS_PER_CREDIT)
_ONE = Decimal(1)
_MAX_QUANTITY = Decimal(MAX_QUANTITY)
_QUANTITY_RE = re.compile(r"(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,12})?")
_NOT_FINITE = 'NaN and Infinity are not quantities; send a finite decimal string such as "0.5"'
_FLOAT_MESSAGE = (
    'send quantities as decimal strings or integers, e.g. "3600" or "0.5", never a float'
)


class PricingError(InvalidRequest):
    """Unpriceable input (422). ``code``: ``unknown_operation``, ``unknown_dimension``,
    ``invalid_quantity``, ``unknown_class``, ``invalid_occurred_at`` or ``no_rate_card_version``."""

    code = "invalid_quantity"


def decimal_text(value: Decimal) -> str:
    """The shortest plain-notation string of an exact decimal: ``Decimal("1.2500")`` -> ``"1.25"``."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class Rate:
    """A price per unit (or a multiplier), kept as given and pre-scaled to micro-credits."""

    value: Decimal
    text: str
    micros: Decimal
    component: str

    @classmethod
    def of(cls, value: Decimal, component: str) -> Rate:
        return cls(value, decimal_text(value), _mul(value, _MICROS), component)


@dataclass(frozen=True, slots=True)
class OffPeak:
    """Hours ``[start, end)`` in ``time_zone`` when ``multiplier`` applies; a window may wrap midnight."""

    time_zone: str
    zone: tzinfo
    windows: tuple[tuple[int, int], ...]
    multiplier: Rate
    hours: tuple[bool, ...] = field(init=False)

    def __post_init__(self) -> None:
        hours = [False] * 24
        for start, end in self.windows:
            hour = start
            while True:
                hours[hour % 24] = True
                hour += 1
                if hour % 24 == end % 24:
                    break
        object.__setattr__(self, "hours", tuple(hours))

    def applies(self, at: datetime) -> bool:
        zone = self.zone
        return self.hours[(at if at.tzinfo is zone else at.astimezone(zone)).hour]

    def to_json(self) -> dict[str, Any]:
        return {
            "time_zone": self.time_zone,
            "windows": [list(w) for w in self.windows],
            "multiplier": self.multiplier.text,
        }


@dataclass(frozen=True, slots=True, eq=False)
class OperationRates:
    """One operation's prices in one version, precomputed for the hot path."""

    name: str
    description: str
    base: Rate
    minimum: Rate
    rates: Mapping[str, Rate]
    gpu_rates: Mapping[str, Rate]
    default_accelerator: str | None
    instance_classes: Mapping[str, Rate]
    default_instance_class: str | None
    off_peak: OffPeak | None
    cache_hit: Rate | None
    dimensions: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        dims = list(self.rates)
        if self.gpu_rates:
            dims.append(GPU_SECONDS)
        object.__setattr__(self, "dimensions", tuple(sorted(dims)))

    def to_json(self) -> dict[str, Any]:
        rates: dict[str, Any] = {name: rate.text for name, rate in self.rates.items()}
        if self.gpu_rates:
            rates[GPU_SECONDS] = {cls: rate.text for cls, rate in self.gpu_rates.items()}
        return {
            "description": self.description,
            "base": self.base.text,
            "minimum": self.minimum.text,
            "rates": rates,
            "units": {dim: UNITS.get(dim, "unit") for dim in self.dimensions},
            "default_accelerator": self.default_accelerator,
            "instance_classes": {c: r.text for c, r in self.instance_classes.items()},
            "default_instance_class": self.default_instance_class,
            "off_peak": self.off_peak is not None,
            "cache_hit_multiplier": self.cache_hit.text if self.cache_hit else None,
        }


@dataclass(frozen=True, slots=True, eq=False)
class RateCardVersion:
    version: str
    effective_at: datetime
    description: str
    operations: Mapping[str, OperationRates]
    off_peak: OffPeak | None
    cache_hit: Rate | None

    def to_json(self) -> dict[str, Any]:
        """The version as ``GET /v1/rate-card`` shows it: every rate an exact decimal string."""
        return {
            "version": self.version,
            "effective_at": self.effective_at.isoformat().replace("+00:00", "Z"),
            "description": self.description,
            "operations": {name: op.to_json() for name, op in sorted(self.operations.items())},
            "modifiers": {
                "off_peak": self.off_peak.to_json() if self.off_peak else None,
                "cache_hit": {"multiplier": self.cache_hit.text} if self.cache_hit else None,
            },
            "rounding": {
                "mode": ROUNDING,
                "unit": format_credits(1),
                "order": list(LINE_ORDER),
            },
        }


@dataclass(frozen=True, slots=True, eq=False)
class RateCard:
    """Versions sorted by ``effective_at``; each is in force from its instant until the next one's."""

    versions: tuple[RateCardVersion, ...]
    source: str
    _starts: tuple[datetime, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(v.effective_at for v in self.versions))

    def version_at(self, at: datetime) -> RateCardVersion:
        """The version in force at ``at``: the boundary instant belongs to the new version."""
        if at.tzinfo is not UTC:
            _check_aware(at)
        starts = self._starts
        index = len(starts) - 1 if at >= starts[-1] else bisect_right(starts, at) - 1
        if index < 0:
            first = self.versions[0].effective_at.isoformat().replace("+00:00", "Z")
            raise PricingError(
                f"no rate card version is in force at {at.isoformat()}; the first starts at {first}",
                code="no_rate_card_version",
                errors=[
                    _err("occurred_at", f"send a time at or after {first}", "no_rate_card_version")
                ],
            )
        return self.versions[index]

    def price(
        self,
        operation: str,
        quantities: Mapping[str, object],
        occurred_at: datetime,
        cache_hit: bool = False,
    ) -> Price:
        """Price with the version in force at ``occurred_at``."""
        return price(self.version_at(occurred_at), operation, quantities, occurred_at, cache_hit)


@dataclass(frozen=True, slots=True)
class BreakdownLine:
    component: str
    quantity: str | None
    rate: str | None
    credits_micros: int

    def to_json(self) -> dict[str, str | None]:
        return {
            "component": self.component,
            "quantity": self.quantity,
            "rate": self.rate,
            "credits": format_credits(self.credits_micros),
        }


@dataclass(frozen=True, slots=True)
class Price:
    """Invariant: ``sum(line.credits_micros for line in lines) == total_micros``."""

    total_micros: int
    lines: tuple[BreakdownLine, ...]
    version: str

    def to_json(self) -> dict[str, Any]:
        return {
            "credits": format_credits(self.total_micros),
            "rate_card_version": self.version,
            "breakdown": [line.to_json() for line in self.lines],
        }


def price(
    version: RateCardVersion,
    operation: str,
    quantities: Mapping[str, object],
    occurred_at: datetime,
    cache_hit: bool = False,
) -> Price:
    """Price one event exactly, with a breakdown whose integer credits sum to the total.

    Lines, in order, each an exact Decimal: the base charge; one line per dimension (quantity x rate);
    the instance-class multiplier, the off-peak multiplier, the cache-hit multiplier (each line is the
    signed difference it makes to the running subtotal); a top-up to the operation's minimum. The exact
    total is then rounded ONCE to integer micro-credits with ``ROUNDING`` (half-even), and that total is
    split over the lines by largest remainder (ties to the earlier line), so the lines sum to it exactly.
    """
    meta, values, subtotal = _exact_lines(version, operation, quantities, occurred_at, cache_hit)
    total_micros = int(subtotal.to_integral_value(rounding=ROUNDING))
    if total_micros > MAX_CREDITS_MICROS:
        raise PricingError(
            f"this event would cost more than {format_credits(MAX_CREDITS_MICROS)} credits; "
            "check the quantities (they are in seconds, GB and tokens)",
            code="invalid_quantity",
            errors=[
                _err("quantities", "the quantities are too large to price", "invalid_quantity")
            ],
        )
    split = largest_remainder(values, total_micros)
    lines = tuple(
        [
            BreakdownLine(component, quantity, rate_text, micros)
            for (component, quantity, rate_text), micros in zip(meta, split, strict=True)
        ]
    )
    return Price(total_micros, lines, version.version)


def exact_total(
    version: RateCardVersion,
    operation: str,
    quantities: Mapping[str, object],
    occurred_at: datetime,
    cache_hit: bool = False,
) -> Decimal:
    """The exact price in credits before the one rounding step (what ``price`` rounds)."""
    _, _, subtotal = _exact_lines(version, operation, quantities, occurred_at, cache_hit)
    return EXACT.scaleb(subtotal, -6)


def _exact_lines(
    version: RateCardVersion,
    operation: str,
    quantities: Mapping[str, object],
    occurred_at: datetime,
    cache_hit: bool,
) -> tuple[list[tuple[str, str | None, str | None]], list[Decimal], Decimal]:
    """The breakdown lines as exact micro-credits, in ``LINE_ORDER``, and their exact sum."""
    op = version.operations.get(operation)
    if op is None:
        raise _unknown_operation(version, operation)
    if occurred_at.tzinfo is not UTC:
        _check_aware(occurred_at)
    given, gpu, multiplier = _read_quantities(op, quantities)
    meta: list[tuple[str, str | None, str | None]] = []
    values: list[Decimal] = []
    subtotal = op.base.micros
    if subtotal:
        meta.append(("base", None, op.base.text))
        values.append(subtotal)
    rates = op.rates
    for name in op.dimensions:
        item = given.get(name)
        if item is None:
            continue
        rate = gpu if name == GPU_SECONDS else rates[name]
        if rate is None:  # pragma: no cover - _read_quantities refuses gpu_seconds without a class
            continue
        value = _mul(item[1], rate.micros)
        meta.append((rate.component, item[0], rate.text))
        values.append(value)
        subtotal = _add(subtotal, value)
    if multiplier is not None:
        subtotal = _apply(multiplier, subtotal, meta, values)
    off_peak = op.off_peak
    if off_peak is not None and off_peak.applies(occurred_at):
        subtotal = _apply(off_peak.multiplier, subtotal, meta, values)
    if cache_hit and op.cache_hit is not None:
        subtotal = _apply(op.cache_hit, subtotal, meta, values)
    minimum = op.minimum
    if subtotal < minimum.micros:
        meta.append(("minimum_charge", None, minimum.text))
        values.append(_sub(minimum.micros, subtotal))
        subtotal = minimum.micros
    return meta, values, subtotal


def largest_remainder(values: list[Decimal], total: int) -> list[int]:
    """Integers, one per exact value, summing to ``total`` (the exact sum, rounded once).

    Each value is floored; the units still missing go one each to the values with the largest
    fractional remainders (the earlier value first on ties). A value that is already whole never moves.
    """
    floors: list[int] = []
    whole = True
    for value in values:
        floor = int(value)  # truncates toward zero ...
        if floor != value:
            whole = False
            if value < 0:  # ... so a negative fraction steps down to its floor
                floor -= 1
        floors.append(floor)
    if whole:
        return floors
    missing = total - sum(floors)
    if missing:
        order = sorted(range(len(values)), key=lambda i: (_sub(floors[i], values[i]), i))
        for i in order[:missing]:
            floors[i] += 1
    return floors


def _apply(
    rate: Rate,
    subtotal: Decimal,
    meta: list[tuple[str, str | None, str | None]],
    values: list[Decimal],
) -> Decimal:
    if rate.value == _ONE:
        return subtotal
    scaled = _mul(subtotal, rate.value)
    meta.append((rate.component, None, rate.text))
    values.append(_sub(scaled, subtotal))
    return scaled


def _read_quantities(
    op: OperationRates, quantities: Mapping[str, object]
) -> tuple[dict[str, tuple[str, Decimal]], Rate | None, Rate | None]:
    """Validated quantities by dimension, the GPU rate chosen and the instance-class multiplier.

    Raises one ``PricingError`` listing every problem found, each with its field.
    """
    if type(quantities) is not dict and not isinstance(quantities, Mapping):
        raise PricingError(
            "quantities must be an object of dimension -> decimal string",
            errors=[_err("quantities", 'send an object such as {"input_tokens": "1200"}')],
        )
    errors: list[dict[str, str]] = []
    given: dict[str, tuple[str, Decimal]] = {}
    accelerator: object = None
    instance_class: object = None
    rates = op.rates
    for key, value in quantities.items():
        if key in rates or (key == GPU_SECONDS and op.gpu_rates):
            parsed = parse_quantity(value)
            if type(parsed) is tuple:
                given[key] = parsed
            else:
                errors.append(_err(f"quantities.{key}", str(parsed)))
        elif key == ACCELERATOR:
            accelerator = value
        elif key == INSTANCE_CLASS:
            instance_class = value
        else:
            errors.append(_unknown_dimension(op, key))
    gpu = None
    if accelerator is not None:
        gpu = _select(op, ACCELERATOR, op.gpu_rates, accelerator, errors)
    elif GPU_SECONDS in given:
        if op.default_accelerator is not None:
            gpu = op.gpu_rates[op.default_accelerator]
        else:
            accepted = ", ".join(sorted(op.gpu_rates))
            message = f'gpu_seconds needs an accelerator: add "accelerator": one of {accepted}'
            errors.append(_err(f"quantities.{ACCELERATOR}", message, "unknown_class"))
    if instance_class is None:
        multiplier = op.instance_classes.get(op.default_instance_class or "")
    else:
        multiplier = _select(op, INSTANCE_CLASS, op.instance_classes, instance_class, errors)
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise PricingError(detail, code=errors[0]["type"], errors=errors)
    return given, gpu, multiplier


def _select(
    op: OperationRates,
    selector: str,
    table: Mapping[str, Rate],
    value: object,
    errors: list[dict[str, str]],
) -> Rate | None:
    rate = table.get(value) if isinstance(value, str) else None
    if rate is not None:
        return rate
    if not table:
        errors.append(_unknown_dimension(op, selector))
        return None
    shown = repr(value) if isinstance(value, str) else f"a {type(value).__name__}"
    noun = selector.replace("_", " ")
    errors.append(
        _err(
            f"quantities.{selector}",
            f"unknown {noun} {shown} for operation {op.name!r}; "
            f"send one of: {', '.join(sorted(table))}",
            "unknown_class",
        )
    )
    return None


def parse_quantity(value: object) -> tuple[str, Decimal] | str:
    """``(text, Decimal)`` for a valid quantity, else the message saying what to send instead."""
    if type(value) is str:
        if value.isdigit() and value.isascii() and len(value) < 16 and value[0] != "0":
            return value, Decimal(value)  # a whole number below MAX_QUANTITY: the common case
        if _QUANTITY_RE.fullmatch(value):
            number = Decimal(value)
            if number <= _MAX_QUANTITY:
                return value, number
    elif type(value) is int and 0 <= value <= MAX_QUANTITY:
        return str(value), Decimal(value)
    return _diagnose(value)


def _diagnose(value: object) -> tuple[str, Decimal] | str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            return _NOT_FINITE
        return _check_decimal(value, format(value, "f"))
    if isinstance(value, bool):
        return "send a number as a decimal string, not true/false"
    if isinstance(value, float):
        return _FLOAT_MESSAGE
    if isinstance(value, int):
        return _check_decimal(Decimal(value), str(value))
    if not isinstance(value, str):
        return f"{_FLOAT_MESSAGE}; got {type(value).__name__}"
    if len(value) > 64:
        return 'too long to be a quantity; send a decimal string such as "3600"'
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        return f'{value!r} is not a number; send a decimal string such as "3600" or "0.5"'
    if not number.is_finite():
        return _NOT_FINITE
    checked = _check_decimal(number, value)
    if isinstance(checked, str) or _QUANTITY_RE.fullmatch(value):
        return checked
    return f'write {value!r} in plain decimal notation, e.g. "3600" or "0.5"'


def _check_decimal(number: Decimal, text: str) -> tuple[str, Decimal] | str:
    if number.is_zero():
        return "0", Decimal(0)
    if number < 0:
        return f"{text!r} is negative; quantities are 0 or more (reverse an event to correct it)"
    if number > MAX_QUANTITY:
        return f"{text!r} is too large; a quantity is at most {MAX_QUANTITY}"
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_QUANTITY_DECIMALS:
        return (
            f"{text!r} has more than {MAX_QUANTITY_DECIMALS} decimal places; "
            f"round it to at most {MAX_QUANTITY_DECIMALS}"
        )
    return text, number


def _check_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise PricingError(
            "occurred_at must carry a time zone",
            code="invalid_occurred_at",
            errors=[
                _err(
                    "occurred_at",
                    "send an RFC 3339 timestamp with a time zone, e.g. 2026-01-31T12:00:00Z",
                    "invalid_occurred_at",
                )
            ],
        )


def _err(field_name: str, message: str, kind: str = "invalid_quantity") -> dict[str, str]:
    return {"field": field_name, "message": message, "type": kind}


def _unknown_dimension(op: OperationRates, key: str) -> dict[str, str]:
    selectors = [
        s for s, t in ((ACCELERATOR, op.gpu_rates), (INSTANCE_CLASS, op.instance_classes)) if t
    ]
    accepted = ", ".join(op.dimensions) or "none"
    extra = f" (and the selectors {', '.join(selectors)})" if selectors else ""
    return _err(
        f"quantities.{key}",
        f"operation {op.name!r} has no dimension {key!r}; send only: {accepted}{extra}",
        "unknown_dimension",
    )


def _unknown_operation(version: RateCardVersion, operation: object) -> PricingError:
    accepted = ", ".join(sorted(version.operations))
    message = (
        f"unknown operation {operation!r}; rate card version {version.version!r} prices: {accepted}"
    )
    return PricingError(
        message,
        code="unknown_operation",
        errors=[_err("operation", f"send one of: {accepted}", "unknown_operation")],
    )
