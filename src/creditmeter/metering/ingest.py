"""Usage ingest in three steps, so that an organization's lock is held only for what needs it.

1. :func:`prepare` (pure, no I/O): check each event's time window, price it and fingerprint it. A batch
   repeats a few shapes, so prices and fingerprints are computed once per distinct shape.
2. :func:`resolve` (reads, no lock): organizations, projects and members named by the events; the
   ``usage_events`` row of every event is built here, all but its journal transaction and allocation.
3. :func:`apply` (under the balances' row locks): duplicate lookup, hold checks, consumption against
   the lots, one journal transaction per organization through ``ledger.service.post_batch``, one
   insert of every event, one balance update per organization.

Each rejected event changes nothing and the others apply; results come back in request order. Nothing
here commits: the caller's unit of work does.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from creditmeter.errors import Conflict, CreditmeterError, InvalidRequest, NotFound
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import bulk_insert
from creditmeter.ledger import domain as ledger_domain
from creditmeter.ledger.consumption import (
    Allocation,
    Charge,
    Consumption,
    plan_consumption,
    release,
)
from creditmeter.ledger.service import (
    LockedBalance,
    TransactionDraft,
    load_lots_of,
    lock_balances,
    lot_states,
)
from creditmeter.ledger.service import post_batch as post_journal
from creditmeter.metering import lookups
from creditmeter.metering.domain import EventInput, EventResult, check_window, fingerprints
from creditmeter.metering.gate import lapsed_hold_micros
from creditmeter.metering.limits import ProjectMonths
from creditmeter.metering.models import Hold, ProjectUsage
from creditmeter.metering.rows import EVENT_COLUMNS, RowBuilder, allocation_json, breakdown
from creditmeter.orgs.models import Member, Project
from creditmeter.pricing.cache import PriceCache
from creditmeter.pricing.domain import Price, RateCard

#: The job a write enqueues when a project's month reaches its next budget-alert line.
PROJECT_USAGE_CHECK = "project_usage_check"


@dataclass(frozen=True)
class IngestContext:
    environment: str
    #: The organization of an organization-scoped key; None for an operator key.
    caller_organization_id: str | None
    now: datetime
    rate_card: RateCard
    late_window: timedelta
    future_skew: timedelta
    currency: str


@dataclass(slots=True)
class _Priced:
    index: int
    event: EventInput
    occurred_at: datetime
    price: Price
    fingerprint: str
    org_id: str = ""
    project_id: str | None = None
    #: The event's ``usage_events`` row without its transaction and allocation (built by resolve).
    row: tuple[Any, ...] | None = None
    #: Why the event cannot apply (an unknown project or member), found before the lock.
    error: CreditmeterError | None = None

    @property
    def credits_micros(self) -> int:
        return self.price.total_micros


@dataclass
class Prepared:
    """A batch after :func:`prepare` (and :func:`resolve`): the events, the results already known
    (rejections) and the priced events by organization."""

    events: Sequence[EventInput]
    results: dict[int, EventResult] = field(default_factory=dict)
    priced: list[_Priced] = field(default_factory=list)
    by_org: dict[str, list[_Priced]] = field(default_factory=dict)


@dataclass
class Applied:
    """What became of every event: ``other`` holds the rejected and duplicate ones, ``accepted`` the
    applied ones; ``snapshots`` the balance of each organization after the batch (``with_balance``)."""

    events: Sequence[EventInput]
    other: dict[int, EventResult]
    accepted: list[_Priced]
    snapshots: dict[str, dict[str, Any]]

    def results(self) -> list[EventResult]:
        """One result per event, in request order."""
        out: list[EventResult | None] = [None] * len(self.events)
        for index, result in self.other.items():
            out[index] = result
        for i in self.accepted:
            out[i.index] = EventResult(
                i.event.id,
                "applied",
                i.price.total_micros,
                breakdown(i.price),
                i.price.version,
                organization_id=i.org_id,
                balance=self.snapshots.get(i.org_id),
            )
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    def summary(self) -> list[tuple[str, str, int | None, CreditmeterError | None]]:
        """``(id, status, credits_micros, error)`` per event, in request order, without building a
        result object for each applied event (the batch answer needs no more)."""
        out: list[Any] = [None] * len(self.events)
        for i in self.accepted:
            out[i.index] = (i.event.id, "applied", i.price.total_micros, None)
        for index, r in self.other.items():
            out[index] = (r.id, r.status, r.credits_micros, r.error)
        return out


def price_event(ctx: IngestContext, event: EventInput) -> tuple[datetime, Price]:
    """Check the time window and price the event with the rate card in force when it happened."""
    return _price_event(ctx, event, PriceCache())


def _price_event(
    ctx: IngestContext, event: EventInput, cache: PriceCache
) -> tuple[datetime, Price]:
    # In UTC from here on: the month it counts for (project budgets) is a UTC calendar month.
    occurred_at = (event.occurred_at or ctx.now).astimezone(UTC)
    check_window(occurred_at, ctx.now, ctx.late_window, ctx.future_skew)
    version = ctx.rate_card.version_at(occurred_at)
    return occurred_at, cache.price(
        version, event.operation, event.quantities, occurred_at, event.cache_hit
    )


def prepare(ctx: IngestContext, events: Sequence[EventInput]) -> Prepared:
    """Window check, price and fingerprint of every event (pure: no database, no lock)."""
    prepared = Prepared(events)
    cache = PriceCache()
    ok: list[tuple[int, datetime, Price]] = []
    for i, event in enumerate(events):
        try:
            occurred_at, p = _price_event(ctx, event, cache)
        except CreditmeterError as exc:
            prepared.results[i] = EventResult.rejected(event.id, exc)
            continue
        ok.append((i, occurred_at, p))
    digests = fingerprints([events[i] for i, _, _ in ok])
    prepared.priced = [
        _Priced(i, events[i], at, p, digest) for (i, at, p), digest in zip(ok, digests, strict=True)
    ]
    return prepared


def resolve(session: Session, ctx: IngestContext, prepared: Prepared) -> None:
    """Find the organizations, projects and members the events name (before any lock) and build
    each event's row. Unknown organizations are rejected here; an unknown project or member is kept
    on the event and reported after the duplicate check, as before."""
    orgs = lookups.organizations(session, {p.event.organization for p in prepared.priced})
    by_org: dict[str, list[_Priced]] = defaultdict(list)
    for item in prepared.priced:
        org = orgs.get(item.event.organization)
        if org is None or (
            ctx.caller_organization_id is not None and org != ctx.caller_organization_id
        ):
            prepared.results[item.index] = EventResult.rejected(
                item.event.id,
                NotFound(
                    f"organization {item.event.organization} not found", code="unknown_organization"
                ),
            )
            continue
        item.org_id = org
        by_org[org].append(item)
    prepared.by_org = dict(by_org)
    items = [i for org in sorted(by_org) for i in by_org[org]]
    org_ids = sorted(by_org)
    project_refs = {i.event.project for i in items if i.event.project}
    # a member is named by id (as sent) or by email (stored lower-case)
    member_refs = {
        r for i in items if i.event.member for r in (i.event.member, i.event.member.lower())
    }
    projects = lookups.named(session, Project, Project.name, org_ids, project_refs)
    members = lookups.named(session, Member, Member.email, org_ids, member_refs)
    rows = RowBuilder(session.get_bind().dialect.name, ctx.environment, ctx.now)
    for item in items:
        ev, org = item.event, item.org_id
        try:
            project_id = _resolve(projects, org, ev.project, "project")
            member = ev.member
            if member is not None and (org, member) not in members:
                member = member.lower()
            member_id = _resolve(members, org, member, "member")
        except CreditmeterError as exc:
            item.error = exc
            continue
        item.project_id = project_id
        item.row = rows.row(
            org, ev, project_id, member_id, item.occurred_at, item.price, item.fingerprint
        )


def ingest(
    session: Session,
    ctx: IngestContext,
    events: Sequence[EventInput],
    *,
    with_balance: bool = False,
) -> list[EventResult]:
    """Apply every event that can be applied; each rejected event changes nothing. Results come back
    in request order. Never commits: the caller's unit of work does."""
    prepared = prepare(ctx, events)
    resolve(session, ctx, prepared)
    return apply(session, ctx, prepared, with_balance=with_balance).results()


@dataclass(slots=True)
class _OrgWork:
    """One organization's applied events, their allocations, the journal transactions to post and
    which of them each event belongs to."""

    balance: LockedBalance
    accepted: list[_Priced]
    allocations: list[Allocation]
    drafts: list[TransactionDraft]
    draft_of: list[int | None]

    @classmethod
    def of(cls, balance: LockedBalance, screened: list[_Priced], planned: Consumption) -> _OrgWork:
        kept = [k for k in range(len(screened)) if k not in planned.refused]
        draft_of = [planned.draft_of[k] for k in kept]
        counts = Counter(d for d in draft_of if d is not None)
        drafts = [
            replace(draft, description=f"usage: {counts[d]} event(s)")
            for d, draft in enumerate(planned.drafts)
        ]
        allocations = [a for k in kept if (a := planned.allocations[k]) is not None]
        assert len(allocations) == len(kept)  # a charge is refused exactly when it has none
        return cls(balance, [screened[k] for k in kept], allocations, drafts, draft_of)


def apply(
    session: Session, ctx: IngestContext, prepared: Prepared, *, with_balance: bool = False
) -> Applied:
    """Apply the resolved events of every organization with one statement per table: lock all the
    balances (in id order), look up duplicates and holds once, plan each organization's consumption
    in memory, then post every journal transaction and insert every event together."""
    env, now, by_org = ctx.environment, ctx.now, prepared.by_org
    other = dict(prepared.results)
    org_ids = sorted(by_org)
    if not org_ids:
        return Applied(prepared.events, other, [], {})
    balances = lock_balances(session, org_ids, env)
    load_lots_of(session, list(balances.values()))
    items = [i for org in org_ids for i in by_org[org]]
    existing = lookups.existing_events(session, env, [(i.org_id, i.event.id) for i in items])
    holds = lookups.holds(session, org_ids, env, {i.event.hold for i in items if i.event.hold})
    months = ProjectMonths(session, env, items)  # one read, only when events name projects
    work: dict[str, _OrgWork] = {}
    for org_id in org_ids:
        balance = balances.get(org_id)
        if balance is None:
            for i in by_org[org_id]:
                other[i.index] = EventResult.rejected(
                    i.event.id,
                    NotFound(f"organization {org_id} not found", code="unknown_organization"),
                )
            continue
        accepted, settling = _screen(org_id, by_org[org_id], existing, holds, other)
        if not accepted:
            continue
        charges = [Charge(i.price.total_micros, i.event.operation) for i in accepted]
        planned = plan_consumption(
            session, balance, charges, "usage", now, admit=months.admit(accepted)
        )
        for k, error in planned.refused.items():  # past a limit: refused alone, nothing written
            event = accepted[k].event
            other[accepted[k].index] = EventResult.rejected(event.id, error)
            if event.hold is not None:
                settling.pop(event.hold, None)
        _settle_holds(session, balance, holds, settling, now)
        work[org_id] = _OrgWork.of(balance, accepted, planned)
    posted = post_journal(session, [(w.balance, w.drafts) for w in work.values()], now)
    rows = []
    alloc_json: dict[Any, str] = {}
    for w, txn_ids in zip(work.values(), posted, strict=True):
        for i, a, d in zip(w.accepted, w.allocations, w.draft_of, strict=True):
            assert i.row is not None
            txn = None if d is None else txn_ids[d]
            rows.append((*i.row, txn, allocation_json(a, alloc_json)))
    bulk_insert(session, "usage_events", EVENT_COLUMNS, rows)
    accepted_all = [i for w in work.values() for i in w.accepted]
    _add_project_usage(session, env, accepted_all)
    snapshots = (
        {org: available_snapshot(session, w.balance, now) for org, w in work.items()}
        if with_balance
        else {}
    )
    return Applied(prepared.events, other, accepted_all, snapshots)


def _screen(
    org_id: str,
    items: list[_Priced],
    existing: dict[tuple[str, str], tuple[Any, ...]],
    holds: dict[str, Hold],
    out: dict[int, EventResult],
) -> tuple[list[_Priced], dict[str, str]]:
    """Sort one organization's events into duplicates and rejections (added to ``out``) and the
    accepted ones, in request order; returns those and the holds they settle."""
    accepted: list[_Priced] = []
    seen: dict[str, _Priced] = {}
    settling: dict[str, str] = {}
    for item in items:
        ev = item.event
        prior = existing.get((org_id, ev.id)) if existing else None
        if prior is not None or ev.id in seen:
            out[item.index] = _duplicate(ev, item, prior, seen.get(ev.id))
            continue
        try:
            if item.error is not None:
                raise item.error
            if ev.hold is not None:
                _check_hold(holds, org_id, ev, settling)
        except CreditmeterError as exc:
            out[item.index] = EventResult.rejected(ev.id, exc)
            continue
        seen[ev.id] = item
        accepted.append(item)
    return accepted, settling


def _duplicate(
    ev: EventInput, item: _Priced, prior: tuple[Any, ...] | None, earlier: _Priced | None
) -> EventResult:
    stored_hash = prior[2] if prior else earlier.fingerprint if earlier else ""
    if stored_hash != item.fingerprint:
        return EventResult.rejected(
            ev.id,
            Conflict(
                f"event id {ev.id!r} was already used for a different event; use a new id for a new "
                "event (a retry must resend the identical body)",
                code="event_id_conflict",
            ),
        )
    if prior is not None:
        return EventResult(ev.id, "duplicate", prior[3], prior[4], prior[5])
    assert earlier is not None
    return EventResult(
        ev.id,
        "duplicate",
        earlier.price.total_micros,
        breakdown(earlier.price),
        earlier.price.version,
    )


def _resolve(
    found: dict[tuple[str, str], str], org_id: str, ref: str | None, what: str
) -> str | None:
    if ref is None:
        return None
    resolved = found.get((org_id, ref))
    if resolved is None:
        raise InvalidRequest(
            f"{what} {ref!r} does not exist in this organization; send the id or the "
            f"{'name' if what == 'project' else 'email'} of an existing {what}",
            code=f"unknown_{what}",
            errors=[{"field": what, "message": f"unknown {what}", "type": f"unknown_{what}"}],
        )
    return resolved


def _check_hold(
    holds: dict[str, Hold], org_id: str, ev: EventInput, settling: dict[str, str]
) -> None:
    assert ev.hold is not None
    hold = holds.get(ev.hold)
    if hold is None or hold.organization_id != org_id:
        raise InvalidRequest(
            f"hold {ev.hold} does not exist in this organization",
            code="unknown_hold",
            errors=[{"field": "hold", "message": "unknown hold", "type": "unknown_hold"}],
        )
    if hold.status == "settled" or ev.hold in settling:
        raise Conflict(
            f"hold {ev.hold} was already settled by another event", code="hold_already_settled"
        )
    if hold.status == "released":
        raise Conflict(
            f"hold {ev.hold} was released; record the usage without it", code="hold_released"
        )
    settling[ev.hold] = ev.id


def _settle_holds(
    session: Session,
    balance: LockedBalance,
    holds: dict[str, Hold],
    settling: dict[str, str],
    now: datetime,
) -> None:
    """Holds named by accepted events give their reservation back; the usage is then debited."""
    reserved = sum(holds[h].credits_micros for h in settling if holds[h].status == "active")
    if reserved:
        release(session, balance, reserved, f"settle {len(settling)} hold(s)", now)
    for hold_id, event_id in settling.items():
        session.execute(
            update(Hold)
            .where(Hold.id == hold_id)
            .values(status="settled", settled_event_id=event_id, updated_at=now)
        )


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


def _add_project_usage(session: Session, env: str, items: list[_Priced]) -> None:
    totals: dict[tuple[str, date], int] = defaultdict(int)
    for i in items:
        if i.project_id and i.price.total_micros:
            totals[(i.project_id, month_of(i.occurred_at))] += i.price.total_micros
    for (project_id, month), micros in totals.items():
        add_project_usage(session, project_id, env, month, micros)


def add_project_usage(
    session: Session, project_id: str, env: str, month: date, micros: int
) -> None:
    """Add to a project's monthly usage (an upsert on both databases). When an addition takes the
    month to its next budget-alert line (``alert_at_micros``, kept by ``notify.alerts``; 0 on a new
    month), a ``project_usage_check`` job is enqueued in the same transaction."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    stmt = upsert(ProjectUsage).values(
        project_id=project_id,
        environment=env,
        month=month,
        credits_micros=micros,
        alert_at_micros=0,
    )
    total, alert_at = session.execute(
        stmt.on_conflict_do_update(
            index_elements=["project_id", "environment", "month"],
            set_={"credits_micros": ProjectUsage.credits_micros + stmt.excluded.credits_micros},
        ).returning(ProjectUsage.credits_micros, ProjectUsage.alert_at_micros)
    ).one()
    if micros > 0 and total >= alert_at:
        now = clock.now()
        key = f"{PROJECT_USAGE_CHECK}:{project_id}:{env}:{month.isoformat()}"
        payload = {"project_id": project_id, "environment": env, "month": month.isoformat()}
        job = outbox.NewJob(PROJECT_USAGE_CHECK, now, None, env, payload, key)
        outbox.enqueue(session, [job], now=now)


def available_snapshot(session: Session, balance: LockedBalance, now: datetime) -> dict[str, Any]:
    """Available, arrears and paused of a locked balance, from the state just written."""
    usable = sum(
        lot.remaining_micros
        for lot in lot_states(session, balance)
        if ledger_domain.is_usable(lot, now)
    )
    held = balance.held_micros
    if held:
        # A hold whose time is up no longer counts, even before the worker releases it (as in
        # the gate's answer and GET balance).
        held -= lapsed_hold_micros(session, balance.organization_id, balance.environment, now)
    available = usable - balance.arrears_micros - held
    return {
        "available_micros": available,
        "arrears_micros": balance.arrears_micros,
        "paused": available <= 0,
    }
