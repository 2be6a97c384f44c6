"""The asynchronous client: the same calls as :class:`Client`, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
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
from creditmeter.client._values import Credits, Quantity, prepare_event

T = TypeVar("T")


async def _sleep(seconds: float) -> None:
    """Wait in whatever event loop runs us: anyio (installed with httpx) serves asyncio and trio."""
    try:
        import anyio
    except ImportError:  # pragma: no cover - anyio is a dependency of httpx
        await asyncio.sleep(seconds)
    else:
        await anyio.sleep(seconds)


async def _batches(
    events: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]], batch_size: int
) -> AsyncIterator[list[dict[str, Any]]]:
    """Like ``calls.batches``, for a plain or an async iterable."""
    if not isinstance(events, AsyncIterable):
        for prepared in calls.batches(events, batch_size):
            yield prepared
        return
    calls.check_batch(events, batch_size)
    chunk: list[dict[str, Any]] = []
    async for event in events:
        chunk.append(prepare_event(event))
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class AsyncClient:
    """The asynchronous twin of :class:`Client`, with the same methods, arguments, retries and
    errors: ``async with AsyncClient(url, key) as client: await client.record(...)``.

    ``transport`` is any :class:`httpx.AsyncBaseTransport` and ``sleep`` the coroutine function
    that waits between attempts. Close it with ``async with`` or :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = _sleep,
    ) -> None:
        http_timeout, self._retry = settings(base_url, timeout, max_retries, backoff)
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=default_headers(api_key),
            timeout=http_timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def close(self) -> None:
        """Close the connection pool (the same as :meth:`aclose`)."""
        await self.aclose()

    async def _send(self, call: calls.Call[T]) -> T:
        headers = call.headers()
        retry = 0
        while True:
            try:
                response = await self._http.request(
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
            await self._sleep(delay)
            retry += 1

    async def authorize(
        self,
        organization: str,
        operation: str,
        *,
        project: str | None = None,
        quantities: Mapping[str, Quantity] | None = None,
        credits: Credits | None = None,
    ) -> Authorization:
        """See :meth:`Client.authorize`."""
        return await self._send(
            calls.authorize(
                organization, operation, project=project, quantities=quantities, credits=credits
            )
        )

    async def estimate(
        self,
        operation: str,
        quantities: Mapping[str, Quantity],
        *,
        occurred_at: datetime | str | None = None,
        cache_hit: bool | None = None,
    ) -> Estimate:
        """See :meth:`Client.estimate`."""
        return await self._send(
            calls.estimate(operation, quantities, occurred_at=occurred_at, cache_hit=cache_hit)
        )

    async def record(
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
        """See :meth:`Client.record`."""
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
        return await self._send(calls.record(event))

    async def record_batch(
        self,
        events: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]],
        *,
        batch_size: int = calls.DEFAULT_BATCH_SIZE,
    ) -> BatchResult:
        """See :meth:`Client.record_batch`; ``events`` may also be an async iterable (e.g. an
        async generator), consumed one batch at a time."""
        results: list[BatchItem] = []
        async for chunk in _batches(events, batch_size):
            try:
                part = await self._send(calls.batch(chunk))
            except CreditmeterError as exc:
                exc.batch_progress = BatchProgress(BatchResult(tuple(results)), tuple(chunk))
                raise
            results.extend(part)
        return BatchResult(tuple(results))

    async def hold(
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
        """See :meth:`Client.hold`."""
        return await self._send(
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

    async def extend(
        self,
        hold_id: str,
        *,
        credits: Credits | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        """See :meth:`Client.extend`."""
        return await self._send(
            calls.extend(
                hold_id, credits=credits, ttl_seconds=ttl_seconds, idempotency_key=idempotency_key
            )
        )

    async def settle(
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
        """See :meth:`Client.settle`."""
        return await self._send(
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

    async def release(self, hold_id: str) -> None:
        """See :meth:`Client.release`."""
        await self._send(calls.release(hold_id))

    @asynccontextmanager
    async def metered(
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
    ) -> AsyncIterator[Meter]:
        """See :meth:`Client.metered`; use it as ``async with client.metered(...) as m:``.

        If the task is cancelled inside the block the release is attempted; should the event loop
        cancel that too, the hold still expires by itself after ``ttl_seconds``."""
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
            meter.hold = await self.hold(
                organization,
                operation,
                project=project,
                quantities=quantities,
                credits=credits,
                ttl_seconds=ttl_seconds,
            )
        else:
            meter.authorization = await self.authorize(
                organization, operation, project=project, quantities=quantities, credits=credits
            )
            if not meter.authorization.allowed:
                raise refusal(meter.authorization, meter)
        meter._start()
        try:
            yield meter
            meter._stop()
        except BaseException as exc:
            await self._release_after(meter, exc)
            raise
        meter.result = await self._finish(meter)

    async def _finish(self, meter: Meter) -> UsageResult:
        if meter.hold is None:
            return await self._send(meter._record_call())
        try:
            return await self._send(meter._settle_call(meter.hold))
        except HoldNotActive as exc:
            if not lapsed(exc, meter.hold):
                raise
        return await self._send(meter._record_call())

    async def _release_after(self, meter: Meter, error: BaseException) -> None:
        if meter.hold is None:
            return
        try:
            await self.release(meter.hold.id)
        except CreditmeterError as release_error:
            release_failed(error, meter.hold, release_error)
