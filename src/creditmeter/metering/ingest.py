"""Usage ingest: validate and price each event on its own, then apply each organization's events in one
locked step (one journal transaction, one insert, one balance update)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, insert, or_, select, update
from sqlalchemy.orm import Session

from creditmeter.errors import Conflict, CreditmeterError, InvalidRequest, NotFound
from creditmeter.ledger import domain as ledger_domain
from creditmeter.ledger.consumption import Allocation, Charge, consume, release
from creditmeter.ledger.service import LockedBalance, lock_balance, lot_states
from creditmeter.metering.domain import EventInput, EventResult, check_window
from creditmeter.metering.models import Hold, ProjectUsage, UsageEvent
from creditmeter.orgs.models import Member, Organization, Project
from creditmeter.pricing.domain import Price, RateCard, price

_CHUNK = 500


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


@dataclass
class _Priced:
    index: int
    event: EventInput
    occurred_at: datetime
    price: Price
    fingerprint: str
    project_id: str | None = None
    member_id: str | None = None


def price_event(ctx: IngestContext, event: EventInput) -> tuple[datetime, Price]:
    """Check the time window and price the event with the rate card in force when it happened."""
    occurred_at = event.occurred_at or ctx.now
    check_window(occurred_at, ctx.now, ctx.late_window, ctx.future_skew)
    version = ctx.rate_card.version_at(occurred_at)
    return occurred_at, price(
        version, event.operation, event.quantities, occurred_at, event.cache_hit
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
    results: list[EventResult | None] = [None] * len(events)
    priced: list[_Priced] = []
    for i, event in enumerate(events):
        try:
            occurred_at, p = price_event(ctx, event)
        except CreditmeterError as exc:
            results[i] = EventResult.rejected(event.id, exc)
            continue
        priced.append(_Priced(i, event, occurred_at, p, event.fingerprint()))
    by_org: dict[str, list[_Priced]] = defaultdict(list)
    orgs = _resolve_organizations(session, {p.event.organization for p in priced})
    for item in priced:
        org = orgs.get(item.event.organization)
        if org is None or (
            ctx.caller_organization_id is not None and org != ctx.caller_organization_id
        ):
            results[item.index] = EventResult.rejected(
                item.event.id,
                NotFound(
                    f"organization {item.event.organization} not found", code="unknown_organization"
                ),
            )
            continue
        by_org[org].append(item)
    for org_id in sorted(by_org):  # one lock order across batches: no deadlocks
        for index, result in _apply_organization(
            session, ctx, org_id, by_org[org_id], with_balance
        ):
            results[index] = result
    return [r for r in results if r is not None]


def _resolve_organizations(session: Session, refs: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    refs_list = sorted(r for r in refs if "\x00" not in r)
    for start in range(0, len(refs_list), _CHUNK):
        chunk = refs_list[start : start + _CHUNK]
        for org_id, external_id in session.execute(
            select(Organization.id, Organization.external_id).where(
                or_(Organization.id.in_(chunk), Organization.external_id.in_(chunk))
            )
        ):
            if external_id in refs:
                found.setdefault(external_id, org_id)
            found[org_id] = org_id
    return found


def _apply_organization(
    session: Session, ctx: IngestContext, org_id: str, items: list[_Priced], with_balance: bool
) -> list[tuple[int, EventResult]]:
    env, now = ctx.environment, ctx.now
    balance = lock_balance(session, org_id, env)
    existing = _existing_events(session, org_id, env, [i.event.id for i in items])
    projects = _lookup(
        session, Project, Project.name, org_id, {i.event.project for i in items if i.event.project}
    )
    members = _lookup(
        session,
        Member,
        Member.email,
        org_id,
        {i.event.member.lower() for i in items if i.event.member},
    )
    holds = _holds(session, org_id, env, {i.event.hold for i in items if i.event.hold})
    out: list[tuple[int, EventResult]] = []
    accepted: list[_Priced] = []
    seen: dict[str, _Priced] = {}
    settling: dict[str, str] = {}
    for item in items:
        ev = item.event
        prior = existing.get(ev.id)
        if prior is not None or ev.id in seen:
            out.append((item.index, _duplicate(ev, item, prior, seen.get(ev.id))))
            continue
        try:
            item.project_id = _resolve(projects, ev.project, "project")
            item.member_id = _resolve(members, ev.member.lower() if ev.member else None, "member")
            if ev.hold is not None:
                _check_hold(holds, ev, settling)
        except CreditmeterError as exc:
            out.append((item.index, EventResult.rejected(ev.id, exc)))
            continue
        seen[ev.id] = item
        accepted.append(item)
    if accepted:
        _settle_holds(session, balance, holds, settling, now)
        charges = [Charge(i.price.total_micros, i.event.operation) for i in accepted]
        txn_id, allocations = consume(
            session, balance, charges, f"usage: {len(accepted)} event(s)", now
        )
        _insert_events(session, ctx, org_id, accepted, txn_id, allocations)
        _add_project_usage(session, env, accepted)
        snapshot = available_snapshot(session, balance, now) if with_balance else None
        for item in accepted:
            out.append(
                (
                    item.index,
                    EventResult(
                        item.event.id,
                        "applied",
                        item.price.total_micros,
                        _breakdown(item.price),
                        item.price.version,
                        organization_id=org_id,
                        balance=snapshot,
                    ),
                )
            )
    return out


def _duplicate(
    ev: EventInput, item: _Priced, prior: dict[str, Any] | None, earlier: _Priced | None
) -> EventResult:
    stored_hash = prior["request_hash"] if prior else earlier.fingerprint if earlier else ""
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
        return EventResult(
            ev.id,
            "duplicate",
            prior["credits_micros"],
            prior["breakdown"],
            prior["rate_card_version"],
        )
    assert earlier is not None
    return EventResult(
        ev.id,
        "duplicate",
        earlier.price.total_micros,
        _breakdown(earlier.price),
        earlier.price.version,
    )


def _breakdown(p: Price) -> list[dict[str, Any]]:
    breakdown: list[dict[str, Any]] = p.to_json()["breakdown"]
    return breakdown


def _existing_events(
    session: Session, org_id: str, env: str, ids: list[str]
) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    unique = sorted(set(ids))
    for start in range(0, len(unique), _CHUNK):
        for row in session.execute(
            select(
                UsageEvent.event_id,
                UsageEvent.request_hash,
                UsageEvent.credits_micros,
                UsageEvent.breakdown,
                UsageEvent.rate_card_version,
            ).where(
                UsageEvent.organization_id == org_id,
                UsageEvent.environment == env,
                UsageEvent.event_id.in_(unique[start : start + _CHUNK]),
            )
        ):
            found[row.event_id] = row._asdict()
    return found


def _lookup(
    session: Session,
    model: type[Project] | type[Member],
    name_column: Any,
    org_id: str,
    refs: set[str],
) -> dict[str, str]:
    if not refs:
        return {}
    refs_list = sorted(r for r in refs if "\x00" not in r)
    found: dict[str, str] = {}
    for row in session.execute(
        select(model.id, name_column).where(
            model.organization_id == org_id,
            or_(model.id.in_(refs_list), name_column.in_(refs_list)),
        )
    ):
        found[row[0]] = row[0]
        found[row[1]] = row[0]
    return found


def _resolve(found: dict[str, str], ref: str | None, what: str) -> str | None:
    if ref is None:
        return None
    resolved = found.get(ref)
    if resolved is None:
        raise InvalidRequest(
            f"{what} {ref!r} does not exist in this organization; send the id or the "
            f"{'name' if what == 'project' else 'email'} of an existing {what}",
            code=f"unknown_{what}",
            errors=[{"field": what, "message": f"unknown {what}", "type": f"unknown_{what}"}],
        )
    return resolved


def _holds(session: Session, org_id: str, env: str, ids: set[str]) -> dict[str, Hold]:
    if not ids:
        return {}
    return {
        h.id: h
        for h in session.scalars(
            select(Hold).where(
                Hold.id.in_(sorted(ids)), Hold.organization_id == org_id, Hold.environment == env
            )
        )
    }


def _check_hold(holds: dict[str, Hold], ev: EventInput, settling: dict[str, str]) -> None:
    assert ev.hold is not None
    hold = holds.get(ev.hold)
    if hold is None:
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


def _insert_events(
    session: Session,
    ctx: IngestContext,
    org_id: str,
    items: list[_Priced],
    txn_id: int | None,
    allocations: list[Allocation],
) -> None:
    table: Table = UsageEvent.__table__  # type: ignore[assignment]
    session.connection().execute(
        insert(table),
        [
            {
                "organization_id": org_id,
                "environment": ctx.environment,
                "event_id": i.event.id,
                "project_id": i.project_id,
                "member_id": i.member_id,
                "operation": i.event.operation,
                "quantities": {k: str(v) for k, v in i.event.quantities.items()},
                "cache_hit": i.event.cache_hit,
                "occurred_at": i.occurred_at,
                "received_at": ctx.now,
                "credits_micros": i.price.total_micros,
                "breakdown": _breakdown(i.price),
                "rate_card_version": i.price.version,
                "request_hash": i.fingerprint,
                "transaction_id": txn_id,
                "allocation": a.to_json(),
                "hold_id": i.event.hold,
                "metadata": i.event.metadata,
            }
            for i, a in zip(items, allocations, strict=True)
        ],
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
    """Add to a project's monthly usage (an upsert on both databases)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    stmt = upsert(ProjectUsage).values(
        project_id=project_id, environment=env, month=month, credits_micros=micros
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["project_id", "environment", "month"],
            set_={"credits_micros": ProjectUsage.credits_micros + stmt.excluded.credits_micros},
        )
    )


def available_snapshot(session: Session, balance: LockedBalance, now: datetime) -> dict[str, Any]:
    """Available, arrears and paused of a locked balance, from the state just written."""
    usable = sum(
        lot.remaining_micros
        for lot in lot_states(session, balance)
        if ledger_domain.is_usable(lot, now)
    )
    available = usable - balance.arrears_micros - balance.held_micros
    return {
        "available_micros": available,
        "arrears_micros": balance.arrears_micros,
        "paused": available <= 0,
    }
