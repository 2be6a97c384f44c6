"""Pure rules of metering: the shape of a usage event once parsed, the time window it must fall in, and
what makes two submissions of an event "the same"."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson

from creditmeter.errors import CreditmeterError, InvalidRequest


class EventInput(NamedTuple):
    """A usage event as the client sent it (after schema validation). Immutable, and a tuple so that
    a batch of 10,000 is cheap to build."""

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


_KEYABLE = (str, type(None))


def _fingerprint_key(event: EventInput) -> tuple[Any, ...] | None:
    """Everything :meth:`EventInput.fingerprint` reads, as a hashable key whose equality implies an
    equal fingerprint; None when the event cannot be keyed safely (metadata, or a value whose equality
    does not imply equal text, such as ``1 == 1.0 == True``)."""
    if event.metadata is not None or type(event.cache_hit) is not bool:
        return None
    refs = (event.organization, event.operation, event.project, event.member, event.hold)
    for ref in refs:
        if type(ref) not in _KEYABLE:
            return None
    quantities = event.quantities
    if type(quantities) is not dict:
        return None
    for name, value in quantities.items():
        if type(name) is not str or (type(value) is not str and type(value) is not int):
            return None
    at = event.occurred_at
    return (*refs, tuple(quantities.items()), at.isoformat() if at else None, event.cache_hit)


def fingerprints(events: Sequence[EventInput]) -> list[str]:
    """``[e.fingerprint() for e in events]``, hashing each distinct body once (a batch repeats a few
    shapes under many ids; the id is not part of the fingerprint)."""
    seen: dict[tuple[Any, ...], str] = {}
    out: list[str] = []
    for event in events:
        key = _fingerprint_key(event)
        if key is None:
            out.append(event.fingerprint())
            continue
        digest = seen.get(key)
        if digest is None:
            digest = seen[key] = event.fingerprint()
        out.append(digest)
    return out


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
