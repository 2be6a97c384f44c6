"""Pure rules of metering: the shape of a usage event once parsed, the time window it must fall in, and
what makes two submissions of an event "the same"."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from creditmeter.errors import CreditmeterError, InvalidRequest


@dataclass(frozen=True, slots=True)
class EventInput:
    """A usage event as the client sent it (after schema validation)."""

    id: str
    organization: str
    operation: str
    quantities: dict[str, Any]
    project: str | None = None
    member: str | None = None
    occurred_at: datetime | None = None
    cache_hit: bool = False
    hold: str | None = None
    metadata: dict[str, Any] | None = None

    def fingerprint(self) -> str:
        """A digest of everything the client sent: the same id with another fingerprint is a 409."""
        body = {
            "organization": self.organization,
            "operation": self.operation,
            "quantities": {k: str(v) for k, v in self.quantities.items()},
            "project": self.project,
            "member": self.member,
            "occurred_at": self.occurred_at.isoformat() if self.occurred_at else None,
            "cache_hit": self.cache_hit,
            "hold": self.hold,
            "metadata": self.metadata,
        }
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=str)
        return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class EventResult:
    """What happened to one event: applied, duplicate (of an earlier identical one) or rejected."""

    id: str
    status: str
    credits_micros: int | None = None
    breakdown: list[dict[str, Any]] | None = None
    rate_card_version: str | None = None
    error: CreditmeterError | None = None
    organization_id: str | None = None
    balance: dict[str, Any] | None = field(default=None)

    @classmethod
    def rejected(cls, event_id: str, error: CreditmeterError) -> EventResult:
        return cls(event_id, "rejected", error=error)


def check_window(
    occurred_at: datetime, now: datetime, late_window: timedelta, future_skew: timedelta
) -> None:
    """Events must have happened within the late window and not beyond the allowed clock skew."""
    if occurred_at < now - late_window:
        raise InvalidRequest(
            f"occurred_at {occurred_at.isoformat()} is older than the late window of "
            f"{late_window.days} days; events that old can no longer be accepted",
            code="event_too_old",
            errors=[
                {
                    "field": "occurred_at",
                    "message": "older than the late window",
                    "type": "event_too_old",
                }
            ],
        )
    if occurred_at > now + future_skew:
        raise InvalidRequest(
            f"occurred_at {occurred_at.isoformat()} is more than {int(future_skew.total_seconds())}"
            " seconds in the future; check the sender's clock (send UTC with a time zone)",
            code="event_in_future",
            errors=[
                {"field": "occurred_at", "message": "in the future", "type": "event_in_future"}
            ],
        )
