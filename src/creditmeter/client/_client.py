"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from creditmeter.client import _calls as calls
from creditmeter.client._errors import (
    CreditmeterError,
    HoldNotActive,
    connection_failed,
    error_from_response,
)
from creditmeter.client._metered import Meter, lapsed, refusal, release_failed, split_estimate
from creditmeter.client._models import (
    Authorization,
    BatchItem,
    BatchProgress,
    BatchResult,
    Estimate,
    Hold,
    UsageResult,
)
from creditmeter.client._transport import DEFAULT_TIMEOUT, default_headers, settings
from creditmeter.client._values import Credits, Quantity

T = TypeVar("T")


class Client:
    """A creditmeter API client: ``Client("https://credits.example.com", "cm_live_…")``.

    Every call retries connection failures, timeouts, 429 and 5xx up to ``max_retries`` times with
    exponential backoff (``backoff`` seconds, doubled each time, jittered; ``Retry-After``
    honoured), resending the identical body and ``Idempotency-Key``, so no retry charges twice.
    Failures raise the typed errors of :mod:`creditmeter.client` (root
    :class:`CreditmeterError`). Credits come back as :class:`~decimal.Decimal`; credits arguments
    take ``str``, ``int`` or ``Decimal`` (a ``float`` is a ``TypeError``).

    ``transport`` is any :class:`httpx.BaseTransport` (e.g. :class:`httpx.MockTransport` in tests)
    and ``sleep`` the function that waits between attempts. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        http_timeout, self._retry = settings(base_url, timeout, max_retries, backoff)
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url,
            headers=default_headers(api_key),
            timeout=http_timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, call: calls.Call[T]) -> T:
        headers = call.headers()
        retry = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, content=call.body, headers=headers
                )
            except httpx.TransportError as exc:
                delay = self._retry.after_error(exc, retry)
                if delay is None:
                    raise connection_failed(exc, retry + 1) from exc
            else:
                if response.is_success:
                    return call.read(response)
                delay = self._retry.after_response(response, retry)
                if delay is None:
                    raise error_from_response(response)
            self._sleep(delay)
            retry += 1

    def authorize(
        self,
        organization: str,
        operation: str,
        *,
        project: str | None = None,
        quantities: Mapping[str, Quantity] | None = None,
        credits: Credits | None = None,
    ) -> Authorization:
        """Ask the gate whether ``organization`` may run ``operation`` now.

        Give the expected ``quantities`` (priced by the rate card) or ``credits``, or neither. A
        refusal is an answer (``allowed=False`` with its ``reason``), not an exception."""
        return self._send(
            calls.authorize(
                organization, operation, project=project, quantities=quantities, credits=credits
            )
        )

    def estimate(
        self,
        operation: str,
        quantities: Mapping[str, Quantity],
        *,
        occurred_at: datetime | str | None = None,
        cache_hit: bool | None = None,
    ) -> Estimate:
        """Price ``quantities`` of ``operation`` without recording anything."""
        return self._send(
            calls.estimate(operation, quantities, occurred_at=occurred_at, cache_hit=cache_hit)
        )

    def record(
        self,
        organization: str,
        operation: str,
        quantities: Mapping[str, Quantity],
        *,
        event_id: str | None = None,
        project: str | None = None,
        member: str | None = None,
        occurred_at: datetime | str | None = None,
        cache_hit: bool | None = None,
        hold: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> UsageResult:
        """Record one usage event and debit its cost at once.

        ``event_id`` (a UUID4 when omitted) is the event's idempotency key: sending the same
        event again returns the original result with ``status="duplicate"``. ``hold`` names a
        hold this usage settles (see also :meth:`settle`)."""
        event = calls.usage_event(
            organization,
            operation,
            quantities,
            event_id=event_id,
            project=project,
            member=member,
            occurred_at=occurred_at,
            cache_hit=cache_hit,
            hold=hold,
            metadata=metadata,
        )
        return self._send(calls.record(event))

    def record_batch(
        self,
        events: Iterable[Mapping[str, Any]],
        *,
        batch_size: int = calls.DEFAULT_BATCH_SIZE,
    ) -> BatchResult:
        """Record any iterable (a list, a generator) of usage event dicts, ``batch_size`` (at most
        10,000) per request, and return every event's outcome in order.

        The iterable is consumed lazily. Events without an ``id`` get a UUID4 before their batch is
        first sent. Each event stands alone: a rejected one is reported in the result, the others
        apply. If a batch fails outright the error is raised with ``error.batch_progress`` set
        (results so far, and the failed batch's events with their ids, safe to resend)."""
        results: list[BatchItem] = []
        for chunk in calls.batches(events, batch_size):
            try:
                part = self._send(calls.batch(chunk))
            except CreditmeterError as exc:
                exc.batch_progress = BatchProgress(BatchResult(tuple(results)), tuple(chunk))
                raise
            results.extend(part)
        return BatchResult(tuple(results))

    def hold(
        self,
        organization: str,
        operation: str,
        *,
        credits: Credits | None = None,
        quantities: Mapping[str, Quantity] | None = None,
        project: str | None = None,
        ttl_seconds: int = 3600,
        idempotency_key: str | None = None,
    ) -> Hold:
        """Reserve ``credits`` (or the price of ``quantities``) for a long operation.

        Raises :class:`InsufficientCredits` (nothing reserved) when they are not available. The
        hold releases itself after ``ttl_seconds``. One idempotency key (a UUID4 unless given) is
        used for every attempt, so a retry never reserves twice."""
        return self._send(
            calls.hold(
                organization,
                operation,
                project=project,
                quantities=quantities,
                credits=credits,
                ttl_seconds=ttl_seconds,
                idempotency_key=idempotency_key,
            )
        )

    def extend(
        self,
        hold_id: str,
        *,
        credits: Credits | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        """Reserve ``credits`` more on a hold and/or make it expire ``ttl_seconds`` from now.

        Refused like a new hold (:class:`InsufficientCredits`) when the extra credits are not
        available; :class:`HoldNotActive` once it expired or was settled or released."""
        return self._send(
            calls.extend(
                hold_id, credits=credits, ttl_seconds=ttl_seconds, idempotency_key=idempotency_key
            )
        )

    def settle(
        self,
        hold_id: str,
        quantities: Mapping[str, Quantity],
        *,
        event_id: str | None = None,
        member: str | None = None,
        occurred_at: datetime | str | None = None,
        cache_hit: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> UsageResult:
        """Record the actual usage against a hold (its cost may exceed the hold) and release the
        rest. ``event_id`` (a UUID4 when omitted) makes settling again idempotent."""
        return self._send(
            calls.settle(
                hold_id,
                quantities,
                event_id=event_id,
                member=member,
                occurred_at=occurred_at,
                cache_hit=cache_hit,
                metadata=metadata,
            )
        )

    def release(self, hold_id: str) -> None:
        """Release a hold without recording usage: its credits are available again."""
        self._send(calls.release(hold_id))

    @contextmanager
    def metered(
        self,
        organization: str,
        operation: str,
        *,
        project: str | None = None,
        estimate: Mapping[str, Quantity] | Credits | None = None,
        ttl_seconds: int = 3600,
        hold: bool = True,
        measure: str | None = None,
        event_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        member: str | None = None,
    ) -> Iterator[Meter]:
        """Meter a block: hold (or authorize), run it, settle on success, release on error.

        ``estimate`` is a quantities mapping or a credits amount (required with ``hold=True``).
        With ``hold=False`` the gate is asked instead and a refusal raises
        :class:`InsufficientCredits`; the usage is recorded after the block. ``measure`` names a
        quantity (e.g. ``"gpu_seconds"``) that receives the block's wall-clock seconds unless the
        block set it itself. A block that outlives ``ttl_seconds`` loses its hold; its usage is
        then recorded without the hold (never dropped). See :class:`Meter`."""
        meter = Meter(
            organization,
            operation,
            project=project,
            member=member,
            event_id=event_id,
            measure=measure,
            metadata=metadata,
        )
        quantities, credits = split_estimate(estimate)
        if hold:
            meter.hold = self.hold(
                organization,
                operation,
                project=project,
                quantities=quantities,
                credits=credits,
                ttl_seconds=ttl_seconds,
            )
        else:
            meter.authorization = self.authorize(
                organization, operation, project=project, quantities=quantities, credits=credits
            )
            if not meter.authorization.allowed:
                raise refusal(meter.authorization, meter)
        meter._start()
        try:
            yield meter
            meter._stop()
        except BaseException as exc:
            self._release_after(meter, exc)
            raise
        meter.result = self._finish(meter)

    def _finish(self, meter: Meter) -> UsageResult:
        if meter.hold is None:
            return self._send(meter._record_call())
        try:
            return self._send(meter._settle_call(meter.hold))
        except HoldNotActive as exc:
            if not lapsed(exc, meter.hold):
                raise
        return self._send(meter._record_call())

    def _release_after(self, meter: Meter, error: BaseException) -> None:
        if meter.hold is None:
            return
        try:
            self.release(meter.hold.id)
        except CreditmeterError as release_error:
            release_failed(error, meter.hold, release_error)
