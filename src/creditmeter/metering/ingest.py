"""Usage ingest: validate and price each event on its own, then apply each organization's events in one
locked step (one journal transaction, one insert, one balance update)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session

from creditmeter.errors import Conflict, CreditmeterError, InvalidRequest, NotFound
from creditmeter.kit.db import bulk_insert, driver_timestamp
from creditmeter.ledger import domain as ledger_domain
from creditmeter.ledger.consumption import Allocation, Charge, plan_consumption, release
from creditmeter.ledger.service import (
    LockedBalance,
    TransactionDraft,
    load_lots_of,
    lock_balances,
    lot_states,
    post_batch,
)
from creditmeter.metering.domain import EventInput, EventResult, check_window
from creditmeter.metering.gate import lapsed_hold_micros
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
    _breakdown: list[dict[str, Any]] | None = None

    @property
    def breakdown(self) -> list[dict[str, Any]]:
        if self._breakdown is None:
            self._breakdown = _breakdown(self.price)
        return self._breakdown


def price_event(ctx: IngestContext, event: EventInput) -> tuple[datetime, Price]:
    """Check the time window and price the event with the rate card in force when it happened."""
    # In UTC from here on: the month it counts for (project budgets) is a UTC calendar month.
    occurred_at = (event.occurred_at or ctx.now).astimezone(UTC)
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
    for index, result in _apply(session, ctx, by_org, with_balance):
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


@dataclass
class _OrgWork:
    balance: LockedBalance
    accepted: list[_Priced]
    draft: TransactionDraft | None = None
    allocations: list[Allocation] | None = None


def _apply(
    session: Session, ctx: IngestContext, by_org: dict[str, list[_Priced]], with_balance: bool
) -> list[tuple[int, EventResult]]:
    """Apply the priced events of every organization with one statement per table: lock all the
    balances (in id order), look up duplicates, projects, members and holds once, plan each
    organization's consumption in memory, then post every journal transaction and insert every
    event together."""
    env, now = ctx.environment, ctx.now
    org_ids = sorted(by_org)
    if not org_ids:
        return []
    balances = lock_balances(session, org_ids, env)
    load_lots_of(session, list(balances.values()))
    items = [item for org in org_ids for item in by_org[org]]
    existing = _existing_events(
        session, env, [(org, i.event.id) for org in org_ids for i in by_org[org]]
    )
    projects = _lookup(
        session, Project, Project.name, org_ids, {i.event.project for i in items if i.event.project}
    )
    members = _lookup(
        session,
        Member,
        Member.email,
        org_ids,
        # a member is named by id (as sent) or by email (stored lower-case)
        {ref for i in items if i.event.member for ref in (i.event.member, i.event.member.lower())},
    )
    holds = _holds(session, org_ids, env, {i.event.hold for i in items if i.event.hold})
    out: list[tuple[int, EventResult]] = []
    work: dict[str, _OrgWork] = {}
    for org_id in org_ids:
        balance = balances.get(org_id)
        if balance is None:
            out += [
                (
                    i.index,
                    EventResult.rejected(
                        i.event.id,
                        NotFound(f"organization {org_id} not found", code="unknown_organization"),
                    ),
                )
                for i in by_org[org_id]
            ]
            continue
        accepted, settling = _screen(
            org_id, by_org[org_id], existing, projects, members, holds, out
        )
        if not accepted:
            continue
        _settle_holds(session, balance, holds, settling, now)
        charges = [Charge(i.price.total_micros, i.event.operation) for i in accepted]
        draft, allocations = plan_consumption(
            session, balance, charges, f"usage: {len(accepted)} event(s)", now
        )
        work[org_id] = _OrgWork(balance, accepted, draft, allocations)
    posted = post_batch(
        session, [(w.balance, [w.draft] if w.draft else []) for w in work.values()], now
    )
    rows = []
    for (org_id, w), txn_ids in zip(work.items(), posted, strict=True):
        assert w.allocations is not None
        rows += _event_rows(
            session, ctx, org_id, w.accepted, txn_ids[0] if txn_ids else None, w.allocations
        )
    bulk_insert(session, "usage_events", _EVENT_COLUMNS, rows)
    _add_project_usage(session, env, [i for w in work.values() for i in w.accepted])
    for org_id, w in work.items():
        snapshot = available_snapshot(session, w.balance, now) if with_balance else None
        out += [
            (
                i.index,
                EventResult(
                    i.event.id,
                    "applied",
                    i.price.total_micros,
                    i.breakdown,
                    i.price.version,
                    organization_id=org_id,
                    balance=snapshot,
                ),
            )
            for i in w.accepted
        ]
    return out


def _screen(
    org_id: str,
    items: list[_Priced],
    existing: dict[tuple[str, str], dict[str, Any]],
    projects: dict[tuple[str, str], str],
    members: dict[tuple[str, str], str],
    holds: dict[str, Hold],
    out: list[tuple[int, EventResult]],
) -> tuple[list[_Priced], dict[str, str]]:
    """Sort one organization's events into duplicates and rejections (added to ``out``) and the
    accepted ones, in request order; returns those and the holds they settle."""
    accepted: list[_Priced] = []
    seen: dict[str, _Priced] = {}
    settling: dict[str, str] = {}
    for item in items:
        ev = item.event
        prior = existing.get((org_id, ev.id))
        if prior is not None or ev.id in seen:
            out.append((item.index, _duplicate(ev, item, prior, seen.get(ev.id))))
            continue
        try:
            item.project_id = _resolve(projects, org_id, ev.project, "project")
            member = ev.member
            if member is not None and (org_id, member) not in members:
                member = member.lower()
            item.member_id = _resolve(members, org_id, member, "member")
            if ev.hold is not None:
                _check_hold(holds, org_id, ev, settling)
        except CreditmeterError as exc:
            out.append((item.index, EventResult.rejected(ev.id, exc)))
            continue
        seen[ev.id] = item
        accepted.append(item)
    return accepted, settling


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
        ev.id, "duplicate", earlier.price.total_micros, earlier.breakdown, earlier.price.version
    )


def _breakdown(p: Price) -> list[dict[str, Any]]:
    breakdown: list[dict[str, Any]] = p.to_json()["breakdown"]
    return breakdown


_EXISTING_COLUMNS = (
    "organization_id, event_id, request_hash, credits_micros, breakdown, rate_card_version"
)
_EXISTING_PG = text(
    f"SELECT e.{_EXISTING_COLUMNS.replace(', ', ', e.')} FROM usage_events e "  # noqa: S608
    "JOIN unnest(CAST(:orgs AS text[]), CAST(:ids AS text[])) AS k(org, id) "
    "ON e.organization_id = k.org AND e.environment = :env AND e.event_id = k.id"
)


def _existing_events(
    session: Session, env: str, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Events already recorded under these (organization, event id) pairs. Every key is one probe of
    the unique (organization, environment, event id) index, so the cost follows the batch, never the
    size of the table: a join with ``unnest`` on PostgreSQL, one ``event_id IN`` per organization on
    SQLite (both plan an index search; a row-value IN over several organizations would scan)."""
    unique = sorted(set(keys))
    rows: list[Any] = []
    if session.get_bind().dialect.name == "postgresql":
        for start in range(0, len(unique), 5_000):
            chunk = unique[start : start + 5_000]
            rows += session.execute(
                _EXISTING_PG,
                {"orgs": [k[0] for k in chunk], "ids": [k[1] for k in chunk], "env": env},
            ).all()
    else:
        by_org: dict[str, list[str]] = defaultdict(list)
        for org, event_id in unique:
            by_org[org].append(event_id)
        for org, ids in by_org.items():
            for start in range(0, len(ids), _CHUNK):
                rows += session.execute(
                    select(
                        UsageEvent.organization_id,
                        UsageEvent.event_id,
                        UsageEvent.request_hash,
                        UsageEvent.credits_micros,
                        UsageEvent.breakdown,
                        UsageEvent.rate_card_version,
                    ).where(
                        UsageEvent.organization_id == org,
                        UsageEvent.environment == env,
                        UsageEvent.event_id.in_(ids[start : start + _CHUNK]),
                    )
                ).all()
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        data = dict(row._mapping)
        if isinstance(data["breakdown"], str):  # raw SQL returns the JSON text on some drivers
            data["breakdown"] = orjson.loads(data["breakdown"])
        found[(data["organization_id"], data["event_id"])] = data
    return found


def _lookup(
    session: Session,
    model: type[Project] | type[Member],
    name_column: Any,
    org_ids: list[str],
    refs: set[str],
) -> dict[tuple[str, str], str]:
    """Projects (by id or name) or members (by id or email) of these organizations, keyed by
    (organization, reference)."""
    refs_list = sorted(r for r in refs if "\x00" not in r)
    found: dict[tuple[str, str], str] = {}
    for start in range(0, len(refs_list), _CHUNK):
        chunk = refs_list[start : start + _CHUNK]
        for row_id, name, org in session.execute(
            select(model.id, name_column, model.organization_id).where(
                model.organization_id.in_(org_ids),
                or_(model.id.in_(chunk), name_column.in_(chunk)),
            )
        ):
            found[(org, row_id)] = row_id
            found[(org, name)] = row_id
    return found


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


def _holds(session: Session, org_ids: list[str], env: str, ids: set[str]) -> dict[str, Hold]:
    """The holds these events settle, read under the organizations' locks. ``populate_existing``:
    a hold this session loaded before taking the lock (the settle route does) may have been
    released or settled since; its state as of now is what counts, or it would be released twice."""
    if not ids:
        return {}
    return {
        h.id: h
        for h in session.scalars(
            select(Hold)
            .where(
                Hold.id.in_(sorted(ids)),
                Hold.organization_id.in_(org_ids),
                Hold.environment == env,
            )
            .execution_options(populate_existing=True)
        )
    }


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


_EVENT_COLUMNS = (
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
    "transaction_id",
    "allocation",
    "hold_id",
    "metadata",
)


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _event_rows(
    session: Session,
    ctx: IngestContext,
    org_id: str,
    items: list[_Priced],
    txn_id: int | None,
    allocations: list[Allocation],
) -> list[tuple[Any, ...]]:
    """Driver-ready rows of ``usage_events`` for one organization's accepted events."""
    dialect = session.get_bind().dialect.name
    received = driver_timestamp(dialect, ctx.now)
    env = ctx.environment
    return [
        (
            org_id,
            env,
            i.event.id,
            i.project_id,
            i.member_id,
            i.event.operation,
            _json({k: str(v) for k, v in i.event.quantities.items()}),
            i.event.cache_hit,
            driver_timestamp(dialect, i.occurred_at),
            received,
            i.price.total_micros,
            _json(i.breakdown),
            i.price.version,
            i.fingerprint,
            txn_id,
            _json(a.to_json()),
            i.event.hold,
            _json(i.event.metadata),
        )
        for i, a in zip(items, allocations, strict=True)
    ]


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
