"""Each SDK method as a :class:`Call`: the request to send and how to read its answer.

Both clients run the same calls, so the request bodies and idempotency keys are built here once.
A call's body bytes and ``Idempotency-Key`` are fixed when it is built, before the first attempt:
every retry resends exactly the same request, and the server answers a repeat with the first result.
The key of a usage event (``record``, ``settle``) is its event id; other writes get a UUID4.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import islice
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from creditmeter.client._errors import UnexpectedResponse
from creditmeter.client._models import Authorization, BatchResult, Estimate, Hold, UsageResult
from creditmeter.client._values import (
    body_bytes,
    compact,
    credits_json,
    new_id,
    prepare_event,
    quantities_json,
    timestamp_json,
)

T = TypeVar("T")

#: The most events the server takes in one ``/v1/usage/batch`` request.
MAX_BATCH_SIZE = 10_000
#: How many events ``record_batch`` sends per request unless told otherwise.
DEFAULT_BATCH_SIZE = 5_000


@dataclass(frozen=True)
class Call(Generic[T]):
    """One logical request: fixed method, path, body bytes and idempotency key, plus its reader."""

    method: str
    path: str
    body: bytes | None
    idempotency_key: str | None
    reader: Callable[[object], T]

    def headers(self) -> dict[str, str]:
        """The per-call headers (the client adds authentication)."""
        headers = {}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        return headers

    def read(self, response: httpx.Response) -> T:
        """The typed result of a 2xx answer, or :class:`UnexpectedResponse`."""
        try:
            body = json.loads(response.content, parse_float=Decimal) if response.content else None
            return self.reader(body)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise UnexpectedResponse(
                f"could not read the answer to {self.method} {self.path}: {exc}",
                status=response.status_code,
                response=response,
            ) from exc


def _post(
    path: str, body: Mapping[str, Any], key: str | None, reader: Callable[[object], T]
) -> Call[T]:
    return Call("POST", path, body_bytes(body), key, reader)


def _hold_path(hold_id: str, action: str = "") -> str:
    if not isinstance(hold_id, str) or not hold_id:
        raise ValueError("hold_id must be a non-empty string (the id returned by hold())")
    return f"/v1/holds/{quote(hold_id, safe='')}{action}"


def _ttl(ttl_seconds: int | None) -> int | None:
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be a positive int, not {ttl_seconds!r}")
    return ttl_seconds


def _estimate_fields(
    quantities: Mapping[str, object] | None, credits: object, *, required: bool
) -> dict[str, Any]:
    if quantities is not None and credits is not None:
        raise ValueError("give quantities or credits, not both")
    if required and quantities is None and credits is None:
        raise ValueError("give quantities (priced by the rate card) or credits to hold")
    if credits is not None:
        return {"credits": credits_json(credits)}
    if quantities is not None:
        return {"quantities": quantities_json(quantities)}
    return {}


def _event_id(event_id: str | None) -> str:
    return new_id() if event_id is None else str(event_id)


def authorize(
    organization: str,
    operation: str,
    *,
    project: str | None,
    quantities: Mapping[str, object] | None,
    credits: object,
) -> Call[Authorization]:
    """``POST /v1/authorize``: a read, retried without an idempotency key."""
    body = compact(organization=organization, operation=operation, project=project)
    body |= _estimate_fields(quantities, credits, required=False)
    return _post("/v1/authorize", body, None, Authorization.from_json)


def estimate(
    operation: str,
    quantities: Mapping[str, object],
    *,
    occurred_at: datetime | str | None,
    cache_hit: bool | None,
) -> Call[Estimate]:
    """``POST /v1/estimate``: a read."""
    body = compact(
        operation=operation,
        quantities=quantities_json(quantities),
        occurred_at=None if occurred_at is None else timestamp_json(occurred_at),
        cache_hit=cache_hit,
    )
    return _post("/v1/estimate", body, None, Estimate.from_json)


def record(event: Mapping[str, Any]) -> Call[UsageResult]:
    """``POST /v1/usage`` for one event; its id (assigned if missing) is the idempotency key."""
    prepared = prepare_event(event)
    return _post("/v1/usage", prepared, prepared["id"], UsageResult.from_json)


def batch(prepared: list[dict[str, Any]]) -> Call[BatchResult]:
    """``POST /v1/usage/batch`` for events already given ids; the answer must match them 1:1."""
    ids = [event["id"] for event in prepared]

    def reader(body: object) -> BatchResult:
        result = BatchResult.from_json(body)
        if [item.id for item in result] != ids:
            raise ValueError(
                f"expected {len(ids)} results in the order of the events sent, got {len(result)}"
            )
        return result

    return _post("/v1/usage/batch", {"events": prepared}, new_id(), reader)


def check_batch(events: object, batch_size: int) -> None:
    """Refuse a batch size out of 1..10,000, and a single event passed where many are expected."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, not {type(batch_size).__name__}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, not {batch_size}")
    if isinstance(events, Mapping | str | bytes):
        raise TypeError("record_batch takes an iterable of event dicts; use record() for one event")


def batches(events: Iterable[object], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Consume any iterable lazily, ``batch_size`` prepared events (ids assigned) at a time."""
    check_batch(events, batch_size)
    iterator = iter(events)
    while chunk := [prepare_event(e) for e in islice(iterator, batch_size)]:
        yield chunk


def hold(
    organization: str,
    operation: str,
    *,
    project: str | None,
    quantities: Mapping[str, object] | None,
    credits: object,
    ttl_seconds: int,
    idempotency_key: str | None,
) -> Call[Hold]:
    """``POST /v1/holds``: one UUID4 idempotency key per call unless the caller gives one."""
    body = compact(organization=organization, project=project, operation=operation)
    body |= _estimate_fields(quantities, credits, required=True)
    body["ttl_seconds"] = _ttl(ttl_seconds)
    return _post("/v1/holds", body, idempotency_key or new_id(), Hold.from_json)


def extend(
    hold_id: str, *, credits: object, ttl_seconds: int | None, idempotency_key: str | None
) -> Call[Hold]:
    """``POST /v1/holds/{id}/extend``: ``credits`` are added, so its key matters on a retry."""
    if credits is None and ttl_seconds is None:
        raise ValueError("give credits, ttl_seconds or both to extend a hold")
    body = compact(
        credits=None if credits is None else credits_json(credits), ttl_seconds=_ttl(ttl_seconds)
    )
    path = _hold_path(hold_id, "/extend")
    return _post(path, body, idempotency_key or new_id(), Hold.from_json)


def settle(
    hold_id: str,
    quantities: Mapping[str, object],
    *,
    event_id: str | None,
    member: str | None,
    occurred_at: datetime | str | None,
    cache_hit: bool | None,
    metadata: Mapping[str, Any] | None,
) -> Call[UsageResult]:
    """``POST /v1/holds/{id}/settle``: records the usage event ``event_id`` (its idempotency key)."""
    path = _hold_path(hold_id, "/settle")
    event_id = _event_id(event_id)
    body = compact(
        id=event_id,
        quantities=quantities_json(quantities),
        member=member,
        occurred_at=None if occurred_at is None else timestamp_json(occurred_at),
        cache_hit=cache_hit,
        metadata=None if metadata is None else dict(metadata),
    )
    return _post(path, body, event_id, UsageResult.from_json)


def release(hold_id: str) -> Call[None]:
    """``DELETE /v1/holds/{id}``: the answer's body, if any, is ignored."""
    return Call("DELETE", _hold_path(hold_id), None, new_id(), lambda _: None)


def usage_event(
    organization: str,
    operation: str,
    quantities: Mapping[str, object],
    *,
    event_id: str | None,
    project: str | None,
    member: str | None,
    occurred_at: datetime | str | None,
    cache_hit: bool | None,
    hold: str | None,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The event dict for ``record``'s keyword arguments."""
    return compact(
        id=_event_id(event_id),
        organization=organization,
        project=project,
        member=member,
        operation=operation,
        quantities=quantities,
        occurred_at=occurred_at,
        cache_hit=cache_hit,
        hold=hold,
        metadata=None if metadata is None else dict(metadata),
    )
