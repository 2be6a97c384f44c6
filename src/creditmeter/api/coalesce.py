"""Group commit for single-event ingest (``POST /v1/usage``).

Every event is debited in a write transaction, and SQLite (and one busy organization on PostgreSQL)
runs those one at a time. Sent one per request, each event would pay a whole transaction — begin,
balance lock, lookups, journal, insert, commit — alone. Instead, single events that arrive while a
transaction is being written wait for it to finish and then go together in the next one, through the
same batched ingest as ``POST /v1/usage/batch``: an event that arrives when nothing is being written
goes at once (no timer, no added latency), and under load a transaction carries as many events as
arrived during the previous one (at most ``MAX_EVENTS``).

Each event keeps its own answer: batched ingest treats every event on its own (a rejected event changes
nothing; the same id twice is one event and a duplicate), and each caller gets its event's result and
its organization's balance as committed. Events are grouped only with events of the same environment
and the same caller scope, so a batch is exactly what one caller could have sent.

Each event also keeps its own fate. Everything that can be checked alone is checked before an event
joins a group (the body's schema, time range and text) or rejects only that event inside it (window,
price, organization, project, member, duplicate, limits). Should a grouped transaction still fail — a
bug, a constraint the database enforces — it was rolled back whole, and its events are written again in
halves, each half in a transaction of its own, down to single events: only the event that fails alone
gets the failure, and a group with one such event costs about ``2 * log2(size)`` extra transactions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fastapi.concurrency import run_in_threadpool

from creditmeter.billing import test_clocks
from creditmeter.kit.db import Database
from creditmeter.metering import gate, usage
from creditmeter.metering.domain import EventInput, EventResult
from creditmeter.metering.ingest import IngestContext, ingest

#: The most events one grouped transaction carries.
MAX_EVENTS = 1_000

#: (environment, organization of an org-scoped key or None for an operator key).
Scope = tuple[str, str | None]


@dataclass
class _Lane:
    """Events of one scope waiting for the next transaction, and whether one is being written."""

    waiting: list[tuple[EventInput, asyncio.Future[EventResult]]] = field(default_factory=list)
    writing: bool = False
    task: asyncio.Task[None] | None = None  # the writer (a reference keeps it alive)


class Coalescer:
    """Groups concurrent single events of one scope into one write transaction at a time."""

    def __init__(self, db: Database, context: Callable[[Scope], IngestContext]) -> None:
        self._db = db
        self._context = context
        # Keyed by event loop too: futures belong to the loop that awaits them.
        self._lanes: dict[tuple[asyncio.AbstractEventLoop, Scope], _Lane] = {}

    async def submit(self, scope: Scope, event: EventInput) -> EventResult:
        """Ingest one event (in the next transaction of its scope) and return its result, with the
        balance of its organization after that transaction."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.setdefault((loop, scope), _Lane())
        future: asyncio.Future[EventResult] = loop.create_future()
        lane.waiting.append((event, future))
        if not lane.writing:
            lane.writing = True
            lane.task = loop.create_task(self._drain(loop, scope, lane))
        return await future

    async def _drain(self, loop: asyncio.AbstractEventLoop, scope: Scope, lane: _Lane) -> None:
        try:
            while lane.waiting:
                batch, lane.waiting = lane.waiting[:MAX_EVENTS], lane.waiting[MAX_EVENTS:]
                try:
                    results = await run_in_threadpool(
                        write_events, self._db, self._context(scope), [e for e, _ in batch]
                    )
                except Exception as exc:  # nothing was written (no context, no clock lookup)
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            lane.writing = False
            if not lane.waiting:
                self._lanes.pop((loop, scope), None)


def by_clock(
    db: Database, ctx: IngestContext, events: list[EventInput]
) -> list[tuple[IngestContext, list[int]]]:
    """The events of an operator key split by "now": each organization on a test clock (named by
    its id) apart, with its clock's time, and the rest with ``ctx`` (real time). An organization's
    key already has its own now, and with no organization on a clock (the usual case) this is one
    look at a cached set: ``[(ctx, every index)]``."""
    everything = [(ctx, list(range(len(events))))]
    if ctx.caller_organization_id is not None:
        return everything
    clocked = test_clocks.clocked_ids(db)
    if not clocked or not any(e.organization in clocked for e in events):
        return everything
    groups: dict[str | None, list[int]] = {}
    for i, e in enumerate(events):
        groups.setdefault(e.organization if e.organization in clocked else None, []).append(i)
    return [
        (ctx if org is None else replace(ctx, now=test_clocks.hot_now_for(db, org)), indexes)
        for org, indexes in groups.items()
    ]


def write_events(
    db: Database, ctx: IngestContext, events: list[EventInput]
) -> list[EventResult | Exception]:
    """Ingest events in one write transaction (one per test clock's organization among an operator
    key's events, see ``by_clock``); every result carries its organization's balance as committed
    (a duplicate's: the balance now). An event whose write fails even alone gets its exception in
    place of a result; the others are written without it (see :func:`_isolated`)."""
    groups = by_clock(db, ctx, events)
    if len(groups) == 1:
        return _isolated(db, groups[0][0], events)
    results: list[EventResult | Exception | None] = [None] * len(events)
    for group_ctx, indexes in groups:
        written = _isolated(db, group_ctx, [events[i] for i in indexes])
        for i, result in zip(indexes, written, strict=True):
            results[i] = result
    return [r for r in results if r is not None]


def _isolated(
    db: Database, ctx: IngestContext, events: list[EventInput]
) -> list[EventResult | Exception]:
    """``_write`` of the events, in one transaction when it succeeds. When it fails (rolled back,
    nothing written), each half is written again on its own, recursively, so one failing event
    fails alone and every other event is applied in some transaction."""
    try:
        return list(_write(db, ctx, events))
    except Exception as exc:  # any failure of the group: find the event(s) it belongs to
        if len(events) == 1:
            return [exc]
    middle = len(events) // 2
    return _isolated(db, ctx, events[:middle]) + _isolated(db, ctx, events[middle:])


def _write(db: Database, ctx: IngestContext, events: list[EventInput]) -> list[EventResult]:
    with db.write() as session:
        results = ingest(session, ctx, events, with_balance=True)
        for i, result in enumerate(results):
            if result.status == "duplicate":
                org_id, _ = gate.resolve_organization(
                    session, events[i].organization, ctx.caller_organization_id
                )
                results[i] = usage.with_balance(session, result, org_id, ctx.environment, ctx.now)
    return results
