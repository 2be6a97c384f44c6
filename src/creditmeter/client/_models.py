"""What the calls return: small frozen dataclasses with exact ``Decimal`` credits.

Every amount the server sends as a decimal string comes back as a :class:`~decimal.Decimal` (never a
float). Each result keeps the whole JSON object it was read from in ``raw`` (left out of ``repr`` and
equality), so fields the SDK does not model yet are still at hand.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Required, TypedDict

from creditmeter.client._errors import Problem
from creditmeter.client._values import Quantity, to_datetime, to_decimal


class UsageEvent(TypedDict, total=False):
    """One usage event as ``record_batch`` takes it (a plain ``dict`` with these keys works too).

    ``id`` is the idempotency key of the event (unique per organization); the SDK assigns a UUID4
    when it is missing. ``occurred_at`` is an aware ``datetime`` or an RFC 3339 string."""

    id: str
    organization: Required[str]
    operation: Required[str]
    quantities: Required[Mapping[str, Quantity]]
    project: str
    member: str
    occurred_at: datetime | str
    cache_hit: bool
    hold: str
    metadata: Mapping[str, Any]


def _field(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise ValueError(f"the response has no {key!r}")
    return data[key]


def _object(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{what} should be a JSON object, got {type(data).__name__}")
    return data


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


def _optional_decimal(data: Mapping[str, Any], key: str) -> Decimal | None:
    value = data.get(key)
    return None if value is None else to_decimal(value, key)


@dataclass(frozen=True)
class Authorization:
    """The gate's answer. ``reason`` is ``ok``, ``insufficient_credits``,
    ``project_budget_exceeded`` or ``organization_suspended``; ``available`` is the spendable
    balance (lots - arrears - held) and ``estimated_credits`` the priced estimate."""

    allowed: bool
    reason: str
    available: Decimal
    estimated_credits: Decimal
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: object) -> Authorization:
        """Read an ``/v1/authorize`` answer."""
        data = _object(body, "the answer")
        return cls(
            allowed=_field(data, "allowed") is True,
            reason=str(_field(data, "reason")),
            available=to_decimal(_field(data, "available"), "available"),
            estimated_credits=to_decimal(_field(data, "estimated_credits"), "estimated_credits"),
            raw=data,
        )


@dataclass(frozen=True)
class BreakdownLine:
    """One component of a price: a dimension (quantity x rate) or a modifier (e.g. off-peak).
    The ``credits`` of all lines sum exactly to the total."""

    component: str
    credits: Decimal
    quantity: Decimal | None = None
    rate: Decimal | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: object) -> BreakdownLine:
        """Read one breakdown line (``quantity`` and ``rate`` may be absent on modifier lines)."""
        data = _object(body, "a breakdown line")
        return cls(
            component=str(_field(data, "component")),
            credits=to_decimal(_field(data, "credits"), "credits"),
            quantity=_optional_decimal(data, "quantity"),
            rate=_optional_decimal(data, "rate"),
            raw=data,
        )


def _breakdown(data: Mapping[str, Any]) -> tuple[BreakdownLine, ...]:
    lines = data.get("breakdown") or []
    if not isinstance(lines, list):
        raise ValueError("breakdown should be a list")
    return tuple(BreakdownLine.from_json(line) for line in lines)


@dataclass(frozen=True)
class Estimate:
    """What an operation would cost, priced by the rate card version in force."""

    credits: Decimal
    breakdown: tuple[BreakdownLine, ...]
    rate_card_version: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: object) -> Estimate:
        """Read an ``/v1/estimate`` answer."""
        data = _object(body, "the answer")
        return cls(
            credits=to_decimal(_field(data, "credits"), "credits"),
            breakdown=_breakdown(data),
            rate_card_version=str(_field(data, "rate_card_version")),
            raw=data,
        )


@dataclass(frozen=True)
class Balance:
    """The organization's balance right after the usage was debited."""

    available: Decimal
    arrears: Decimal
    paused: bool

    @classmethod
    def from_json(cls, body: object) -> Balance:
        """Read a ``balance`` object."""
        data = _object(body, "balance")
        return cls(
            available=to_decimal(_field(data, "available"), "available"),
            arrears=to_decimal(data.get("arrears", "0"), "arrears"),
            paused=data.get("paused") is True,
        )


@dataclass(frozen=True)
class UsageResult:
    """A recorded usage event: ``status`` is ``applied`` the first time and ``duplicate`` when the
    same event id was already recorded (the original result is returned, nothing charged twice).
    ``balance`` is the organization's balance right after it."""

    id: str
    status: str
    credits: Decimal
    breakdown: tuple[BreakdownLine, ...] = ()
    balance: Balance | None = None
    rate_card_version: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def duplicate(self) -> bool:
        """True when the server had already recorded this event id."""
        return self.status == "duplicate"

    @classmethod
    def from_json(cls, body: object) -> UsageResult:
        """Read a ``/v1/usage`` (or hold settle) answer."""
        data = _object(body, "the answer")
        balance = data.get("balance")
        return cls(
            id=str(_field(data, "id")),
            status=str(_field(data, "status")),
            credits=to_decimal(_field(data, "credits"), "credits"),
            breakdown=_breakdown(data),
            balance=None if balance is None else Balance.from_json(balance),
            rate_card_version=_optional_str(data, "rate_card_version"),
            raw=data,
        )


@dataclass(frozen=True)
class BatchItem:
    """The outcome of one event of a batch: ``applied``, ``duplicate`` or ``rejected`` (then
    ``error`` says why, and the event changed nothing)."""

    id: str
    status: str
    credits: Decimal | None = None
    error: Problem | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: object) -> BatchItem:
        """Read one entry of ``results``."""
        data = _object(body, "a batch result")
        error = data.get("error")
        return cls(
            id=str(_field(data, "id")),
            status=str(_field(data, "status")),
            credits=_optional_decimal(data, "credits"),
            error=None if error is None else Problem.from_json(error),
            raw=data,
        )


@dataclass(frozen=True)
class BatchResult:
    """Every event's outcome, in the order the events were given."""

    results: tuple[BatchItem, ...] = ()

    def __iter__(self) -> Iterator[BatchItem]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> BatchItem:
        return self.results[index]

    @property
    def applied(self) -> tuple[BatchItem, ...]:
        """The events recorded by this call."""
        return tuple(r for r in self.results if r.status == "applied")

    @property
    def duplicates(self) -> tuple[BatchItem, ...]:
        """The events the server had already recorded (not charged again)."""
        return tuple(r for r in self.results if r.status == "duplicate")

    @property
    def rejected(self) -> tuple[BatchItem, ...]:
        """The events refused one by one (each with its ``error``); they changed nothing."""
        return tuple(r for r in self.results if r.status == "rejected")

    @classmethod
    def from_json(cls, body: object) -> BatchResult:
        """Read a ``/v1/usage/batch`` answer."""
        results = _field(_object(body, "the answer"), "results")
        if not isinstance(results, list):
            raise ValueError("results should be a list")
        return cls(tuple(BatchItem.from_json(item) for item in results))


@dataclass(frozen=True)
class BatchProgress:
    """Attached to an error raised by ``record_batch`` (``error.batch_progress``): ``results``
    holds the outcome of the batches sent before the failure, ``failed_events`` the events of the
    batch that failed, with the ids the SDK gave them. Resending ``failed_events`` (and the events
    not yet consumed from the iterable) is safe: an event already recorded comes back
    ``duplicate``."""

    results: BatchResult
    failed_events: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Hold:
    """Credits reserved for a long operation until ``expires_at`` (then released by themselves).
    ``status`` is e.g. ``active``, ``settled``, ``released`` or ``expired``, when the server says."""

    id: str
    credits: Decimal
    expires_at: datetime
    status: str | None = None
    operation: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: object) -> Hold:
        """Read a ``/v1/holds`` answer."""
        data = _object(body, "the answer")
        return cls(
            id=str(_field(data, "id")),
            credits=to_decimal(_field(data, "credits"), "credits"),
            expires_at=to_datetime(_field(data, "expires_at"), "expires_at"),
            status=_optional_str(data, "status"),
            operation=_optional_str(data, "operation"),
            raw=data,
        )
