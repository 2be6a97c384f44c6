"""``usage_events`` rows as the driver takes them, built with as little work per event as possible: a
batch repeats a few shapes, so each distinct quantities object, price, timestamp and allocation is
encoded once per batch and the text shared by every event that has it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from creditmeter.kit.db import driver_timestamp
from creditmeter.ledger.consumption import Allocation
from creditmeter.metering.domain import EventInput
from creditmeter.pricing.cache import quantities_key
from creditmeter.pricing.domain import Price

#: The columns of a row, in order: what :meth:`RowBuilder.row` builds before the lock, then the
#: journal transaction and the allocation, known only once the lots have been consumed.
EVENT_COLUMNS = (
    "organization_id",
    "environment",
    "event_id",
    "project_id",
    "member_id",
    "operation",
    "quantities",
    "cache_hit",
    "occurred_at",
    "received_at",
    "credits_micros",
    "breakdown",
    "rate_card_version",
    "request_hash",
    "hold_id",
    "metadata",
    "transaction_id",
    "allocation",
)


def json_text(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def breakdown(p: Price) -> list[dict[str, Any]]:
    """The breakdown lines of a price as the API shows them (a new list on every call)."""
    return [line.to_json() for line in p.lines]


def allocation_json(allocation: Allocation, cache: dict[Any, str]) -> str:
    """The allocation's JSON text, encoded once per distinct allocation in ``cache``."""
    text = cache.get(allocation)
    if text is None:
        text = cache[allocation] = orjson.dumps(allocation.to_json()).decode()
    return text


class RowBuilder:
    """Builds the rows of one batch (one dialect, environment and receipt time)."""

    __slots__ = ("_breakdowns", "_dialect", "_env", "_quantities", "_received", "_times")

    def __init__(self, dialect: str, env: str, received_at: datetime) -> None:
        self._dialect = dialect
        self._env = env
        self._received = driver_timestamp(dialect, received_at)
        self._quantities: dict[Any, str] = {}
        self._breakdowns: dict[int, tuple[Price, str]] = {}
        self._times: dict[datetime, object] = {}

    def row(
        self,
        org_id: str,
        ev: EventInput,
        project_id: str | None,
        member_id: str | None,
        occurred_at: datetime,
        price: Price,
        fingerprint: str,
    ) -> tuple[Any, ...]:
        """The row of one event, without its transaction and allocation (see ``EVENT_COLUMNS``)."""
        return (
            org_id,
            self._env,
            ev.id,
            project_id,
            member_id,
            ev.operation,
            self._quantities_json(ev.quantities),
            ev.cache_hit,
            self._time(occurred_at),
            self._received,
            price.total_micros,
            self._breakdown_json(price),
            price.version,
            fingerprint,
            ev.hold,
            json_text(ev.metadata),
        )

    def _quantities_json(self, quantities: dict[str, Any]) -> str | None:
        key = quantities_key(quantities)
        if key is None:
            return json_text({k: str(v) for k, v in quantities.items()})
        text = self._quantities.get(key)
        if text is None:
            text = self._quantities[key] = orjson.dumps(
                {k: str(v) for k, v in quantities.items()}
            ).decode()
        return text

    def _breakdown_json(self, price: Price) -> str:
        # Keyed by identity (prices come from one PriceCache); the price is kept so its id stays its.
        found = self._breakdowns.get(id(price))
        if found is None:
            found = self._breakdowns[id(price)] = (
                price,
                orjson.dumps([line.to_json() for line in price.lines]).decode(),
            )
        return found[1]

    def _time(self, at: datetime) -> object:
        # Equal instants with another offset give the same UTC text, so keying by value is exact.
        value = self._times.get(at)
        if value is None:
            value = self._times[at] = driver_timestamp(self._dialect, at)
        return value
