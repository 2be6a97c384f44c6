"""The hot path: usage ingest, the gate, holds; plus estimates, the rate card and project budgets."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from creditmeter.api.coalesce import Coalescer, write_events
from creditmeter.api.coalesce import Scope as IngestScope
from creditmeter.api.deps import (
    ADMIN_SCOPES,
    DB,
    READ_SCOPES,
    BearerSecret,
    Caller,
    IdempotencyKey,
    SettingsDep,
    authorize_org,
    get_settings,
    record_key_use,
    require_operator,
)
from creditmeter.api.idempotent import run_once
from creditmeter.api.jsonio import json_response
from creditmeter.api.schemas import Timestamp
from creditmeter.api.schemas_metering import (
    AuthorizeIn,
    AuthorizeOut,
    BatchOut,
    BudgetIn,
    BudgetOut,
    EstimateIn,
    EstimateOut,
    HoldExtendIn,
    HoldIn,
    HoldOut,
    HoldSettleIn,
    ReverseUsageIn,
    ReverseUsageOut,
    UsageBatchIn,
    UsageEventIn,
    UsageOut,
)
from creditmeter.api.usage_batch import apply_batch
from creditmeter.billing import credit_notes, org_time, test_clocks
from creditmeter.config import Settings
from creditmeter.errors import Forbidden, InvalidRequest, NotFound
from creditmeter.kit import clock
from creditmeter.kit.credits import format_credits
from creditmeter.kit.db import Database
from creditmeter.metering import gate, holds, usage
from creditmeter.metering.domain import EventInput, EventResult
from creditmeter.metering.ingest import IngestContext, ingest
from creditmeter.metering.models import Hold
from creditmeter.notify import alerts
from creditmeter.orgs.service import Principal, Scope
from creditmeter.pricing.domain import RateCard

router = APIRouter(tags=["metering"])
INGEST_SCOPES = frozenset({Scope.ORG_INGEST, Scope.ORG_ADMIN})


async def rate_card(request: Request) -> RateCard:
    card: RateCard = request.app.state.rate_card
    return card


Card = Annotated[RateCard, Depends(rate_card)]
Config = Annotated[Settings, Depends(get_settings)]


def _ingest_key(caller: Principal) -> str | None:
    """The organization an ingest key is bound to (None: an operator key, any organization)."""
    if caller.is_operator:
        return None
    if not caller.scopes & INGEST_SCOPES:
        raise Forbidden("this API key lacks the org:ingest scope", code="insufficient_scope")
    return caller.organization_id


def _context(caller: Principal, card: RateCard, settings: Settings, db: Database) -> IngestContext:
    return _scope_context((caller.environment, _ingest_key(caller)), card, settings, db)


def _scope_context(
    scope: IngestScope, card: RateCard, settings: Settings, db: Database
) -> IngestContext:
    """The ingest context of a request or coalesced batch. ``now`` is the key's organization's:
    its test clock's time when it is on one (no query unless the cached set says so), else real
    time; an operator key's events are on real time."""
    return IngestContext(
        environment=scope[0],
        caller_organization_id=scope[1],
        now=test_clocks.hot_now_for(db, scope[1]),
        rate_card=card,
        late_window=timedelta(days=settings.late_window_days),
        future_skew=timedelta(seconds=settings.future_skew_seconds),
        currency=settings.currency,
    )


async def coalescer(request: Request) -> Coalescer:
    """The app's group-commit queue for single events (made on first use)."""
    state = request.app.state
    found: Coalescer | None = getattr(state, "usage_coalescer", None)
    if found is None:
        card, settings, db = state.rate_card, state.settings, state.db
        found = state.usage_coalescer = Coalescer(
            db, lambda scope: _scope_context(scope, card, settings, db)
        )
    return found


def _balance_json(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {
        "available": format_credits(snapshot["available_micros"]),
        "arrears": format_credits(snapshot["arrears_micros"]),
        "paused": snapshot["paused"],
    }


def _usage_json(result: EventResult) -> dict[str, Any]:
    assert result.credits_micros is not None
    assert result.balance is not None
    return {
        "id": result.id,
        "status": result.status,
        "credits": format_credits(result.credits_micros),
        "breakdown": result.breakdown,
        "rate_card_version": result.rate_card_version,
        "balance": _balance_json(result.balance),
    }


@router.post("/v1/usage", status_code=201, response_model=UsageOut, responses={200: {}})
async def record_usage(
    body: UsageEventIn, caller: Caller, queue: Annotated[Coalescer, Depends(coalescer)]
) -> Any:
    """Record one usage event and debit it at once. Repeating the same id and body answers 200 with
    the original result and `status: "duplicate"`; the same id with another body is a 409."""
    # Concurrent single events share write transactions (api/coalesce.py): each still gets its own
    # result, committed before the answer is sent.
    result = await queue.submit((caller.environment, _ingest_key(caller)), body.to_input())
    return _answer(result)


def _answer(result: EventResult) -> Any:
    """A single event's answer: 201 applied, 200 duplicate, its problem otherwise."""
    if result.error is not None:
        raise result.error
    return json_response(_usage_json(result), 201 if result.status == "applied" else 200)


def record_one(
    body: UsageEventIn, caller: Principal, db: Database, card: RateCard, settings: Settings
) -> Any:
    """One event in a transaction of its own, answered like ``POST /v1/usage`` (for callers that are
    already on a worker thread, such as a single CloudEvent)."""
    result = write_events(db, _context(caller, card, settings, db), [body.to_input()])[0]
    if isinstance(result, Exception):
        raise result
    return _answer(result)


@router.post("/v1/usage/batch", response_model=BatchOut)
def record_usage_batch(
    body: UsageBatchIn, caller: Caller, db: DB, card: Card, settings: Config
) -> Any:
    """Record up to 10,000 events. Each stands alone: a rejected event (with a problem-style `error`)
    changes nothing and the others apply. Results come back in request order."""
    ctx = _context(caller, card, settings, db)
    return json_response({"results": apply_batch(db, ctx, body.events)})


@router.post("/v1/organizations/{org_id}/usage/{event_id}/reverse", response_model=ReverseUsageOut)
def reverse_usage(
    org_id: str, event_id: str, body: ReverseUsageIn, caller: Caller, db: DB, settings: Config
) -> Any:
    """Correct a usage event (operator keys only): re-credit exactly what it cost, to the lots it came
    from while they are valid, otherwise as an adjustment lot. Once per event. When its month was
    invoiced, a credit note is issued; the part the invoice billed as overage comes back as money on
    the note, not also as credits (`credits_returned`)."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    require_operator(caller)
    with db.write() as session:
        now = org_time.now_for(session, org_id)  # a clocked organization: its clock's time
        credits, txn_id = usage.reverse(
            session,
            org_id,
            caller.environment,
            event_id,
            body.reason,
            now,
            settings.currency,
        )
        note = credit_notes.for_usage_reversal(
            session, org_id, caller.environment, event_id, txn_id, body.reason, now
        )
        billed = note.billed_micros if note is not None else 0
        number = note.number if note is not None else None
    return {
        "id": event_id,
        "reversed": True,
        "credits": format_credits(credits),
        "credits_returned": format_credits(credits - billed),
        "transaction_id": f"txn_{txn_id}",
        "credit_note": number,
    }


@router.post("/v1/estimate", response_model=EstimateOut)
def estimate(body: EstimateIn, caller: Caller, card: Card) -> Any:
    """Price an operation without recording anything, with the full breakdown."""
    at = body.occurred_at or clock.now()
    from creditmeter.pricing.domain import price

    return price(card.version_at(at), body.operation, body.quantities, at, body.cache_hit).to_json()


@router.get("/v1/rate-card")
def get_rate_card(
    caller: Caller, card: Card, at: Annotated[Timestamp | None, Query()] = None
) -> Any:
    """The rate card version in force now (or at `?at=`), with every operation, rate and modifier."""
    return card.version_at(at or clock.now()).to_json()


@router.post("/v1/authorize", response_model=AuthorizeOut)
async def authorize(
    body: AuthorizeIn, secret: BearerSecret, db: DB, card: Card, settings: SettingsDep
) -> Any:
    """May this organization run this operation now? `reason` is `ok`, `insufficient_credits` (the
    available balance is at or below zero, or below the estimate), `project_budget_exceeded` (the
    project's monthly budget would be passed) or `organization_suspended` (billing suspended it)."""
    # The hot path. The key, the organization and its balance are one indexed read (gate.snapshot)
    # that never waits for a lock (WAL readers on SQLite, MVCC on PostgreSQL). On SQLite, a local
    # file, it runs right here on the event loop, saving the thread-pool hop that costs as much as
    # the read; on PostgreSQL, a network round trip, it runs in the thread pool. Writes never run
    # on the loop.
    now = clock.now()
    if db.dialect == "sqlite":
        answer, touch = _authorize(body, secret, db, card, settings, now)
    else:
        answer, touch = await run_in_threadpool(_authorize, body, secret, db, card, settings, now)
    if touch is not None:
        await run_in_threadpool(record_key_use, db, touch, now)
    return answer


def _authorize(
    body: AuthorizeIn, secret: str, db: Database, card: RateCard, settings: Settings, now: datetime
) -> tuple[dict[str, str | bool], Principal | None]:
    """The gate's answer, and the principal whose key use is due to be recorded (if it is)."""
    # A clocked organization is gated at its clock's time (no query for any other organization).
    clocked = test_clocks.clocked_ids(db)
    if body.organization in clocked:
        now = test_clocks.hot_now_for(db, body.organization)
    snap = gate.snapshot(
        db.hot_engine, secret, body.organization, now, settings.key_touch_interval_seconds
    )
    if snap.organization_id in clocked and snap.organization_id != body.organization:
        now = test_clocks.hot_now_for(db, snap.organization_id)  # named by its external id
        snap = gate.snapshot(
            db.hot_engine, secret, body.organization, now, settings.key_touch_interval_seconds
        )
    caller_org = _ingest_key(snap.principal)
    org_id, status = snap.organization_id, snap.status
    if org_id is None or status is None or (caller_org is not None and org_id != caller_org):
        raise NotFound(f"organization {body.organization} not found", code="unknown_organization")
    env = snap.principal.environment
    if body.project is None:
        estimated = gate.estimate_micros(card, body.operation, body.quantities, body.credits, now)
        d = gate.decide_with(
            None,
            org_id=org_id,
            status=status,
            env=env,
            project=None,
            estimated=estimated,
            available=snap.available_micros,
            now=now,
        )
    else:
        with db.read() as session:
            project = gate.resolve_project(session, org_id, body.project)
            estimated = gate.estimate_micros(
                card, body.operation, body.quantities, body.credits, now
            )
            d = gate.decide_with(
                session,
                org_id=org_id,
                status=status,
                env=env,
                project=project,
                estimated=estimated,
                available=snap.available_micros,
                now=now,
            )
    answer: dict[str, str | bool] = {
        "allowed": d.allowed,
        "reason": d.reason,
        "available": format_credits(d.available_micros),
        "estimated_credits": format_credits(d.estimated_micros),
    }
    return answer, snap.principal if snap.touch_due else None


def _hold_json(hold: Hold) -> dict[str, Any]:
    status = hold.status
    if status == "active" and hold.expires_at <= clock.now():
        status = "expired"  # it no longer reserves anything; the worker will record that too
    return HoldOut(
        id=hold.id,
        organization_id=hold.organization_id,
        project_id=hold.project_id,
        operation=hold.operation,
        credits=format_credits(hold.credits_micros),
        status=status,
        expires_at=hold.expires_at,
        created_at=hold.created_at,
    ).model_dump(mode="json")


@router.post("/v1/holds", status_code=201, response_model=HoldOut)
def place_hold(
    body: HoldIn, caller: Caller, db: DB, card: Card, idempotency_key: IdempotencyKey = None
) -> Any:
    """Reserve credits for a long operation (the estimate's price, or `credits`). 402 with code
    `insufficient_credits` or `project_budget_exceeded` when it cannot be covered: nothing reserved.
    With an `Idempotency-Key`, a retry returns the first hold instead of placing another."""
    caller_org = _ingest_key(caller)
    now = clock.now()

    def create(session: Session) -> dict[str, Any]:
        org_id, status = gate.resolve_organization(session, body.organization, caller_org)
        project = gate.resolve_project(session, org_id, body.project) if body.project else None
        amount = gate.estimate_micros(card, body.operation, body.quantities, body.credits, now)
        request = holds.HoldRequest(
            org_id, status, caller.environment, project, body.operation, amount, body.ttl_seconds
        )
        return _hold_json(holds.place(session, request, now))

    scope = f"holds:{caller.organization_id or 'operator'}:{caller.environment}"
    return run_once(db, scope, idempotency_key, body.model_dump(mode="json"), create)


@router.get("/v1/holds/{hold_id}", response_model=HoldOut)
def get_hold(hold_id: str, caller: Caller, db: DB) -> Any:
    caller_org = _ingest_key(caller)
    with db.read() as session:
        return _hold_json(holds.get(session, hold_id, caller_org, caller.environment))


@router.post("/v1/holds/{hold_id}/extend", response_model=HoldOut)
def extend_hold(
    hold_id: str,
    body: HoldExtendIn,
    caller: Caller,
    db: DB,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Reserve more credits (`credits`, added to the hold) and/or set a new expiry (`ttl_seconds`
    from now). More credits are refused with 402 like a new hold. With an `Idempotency-Key`, a
    retry returns the first answer instead of adding the credits twice."""
    if body.credits is None and body.ttl_seconds is None:
        raise InvalidRequest(
            "send credits, ttl_seconds or both",
            code="validation_failed",
            errors=[{"field": "body", "message": "nothing to extend", "type": "missing"}],
        )
    caller_org = _ingest_key(caller)
    now = clock.now()

    def create(session: Session) -> dict[str, Any]:
        hold = holds.get(session, hold_id, caller_org, caller.environment)
        _, status = gate.resolve_organization(session, hold.organization_id, None)
        project = (
            gate.resolve_project(session, hold.organization_id, hold.project_id)
            if hold.project_id
            else None
        )
        hold = holds.extend(
            session, hold, status, project, body.credits or 0, body.ttl_seconds, now
        )
        return _hold_json(hold)

    return run_once(
        db,
        f"hold-extensions:{hold_id}",
        idempotency_key,
        body.model_dump(mode="json"),
        create,
        status_code=200,
    )


@router.post(
    "/v1/holds/{hold_id}/settle", response_model=UsageOut, status_code=201, responses={200: {}}
)
def settle_hold(
    hold_id: str, body: HoldSettleIn, caller: Caller, db: DB, card: Card, settings: Config
) -> Any:
    """Record the usage of a held operation (its actual cost, which may exceed the hold) and release
    the rest of the hold. Settling again with the same event id returns the first result."""
    ctx = _context(caller, card, settings, db)
    with db.write() as session:
        hold = holds.get(session, hold_id, ctx.caller_organization_id, ctx.environment)
        clocked = test_clocks.clocked_ids(db)
        if ctx.caller_organization_id is None and hold.organization_id in clocked:
            # An operator key settling a clocked organization's hold: at the clock's time.
            ctx = replace(ctx, now=org_time.now_for(session, hold.organization_id))
        event = EventInput(
            id=body.id,
            organization=hold.organization_id,
            operation=hold.operation,
            quantities=dict(body.quantities),
            project=hold.project_id,
            member=body.member,
            occurred_at=body.occurred_at,
            cache_hit=body.cache_hit,
            hold=hold.id,
            metadata=body.metadata,
        )
        result = ingest(session, ctx, [event], with_balance=True)[0]
        if result.status == "duplicate":
            result = usage.with_balance(
                session, result, hold.organization_id, ctx.environment, ctx.now
            )
    return _answer(result)


@router.delete("/v1/holds/{hold_id}", response_model=HoldOut)
def release_hold(hold_id: str, caller: Caller, db: DB) -> Any:
    """Release a hold: its credits are available again. Releasing twice changes nothing."""
    caller_org = _ingest_key(caller)
    with db.write() as session:
        hold = holds.get(session, hold_id, caller_org, caller.environment)
        return _hold_json(holds.cancel(session, hold, clock.now()))


@router.put("/v1/organizations/{org_id}/projects/{project_id}/budget", response_model=BudgetOut)
def set_budget(org_id: str, project_id: str, body: BudgetIn, caller: Caller, db: DB) -> Any:
    """Set (or with `null` remove) a project's monthly credit budget. The gate and holds refuse the
    project with `project_budget_exceeded` once its month's usage would pass it."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    now = test_clocks.hot_now_for(db, org_id)  # the month of usage is the organization's
    month = date(now.year, now.month, 1)
    with db.write() as session:
        used = usage.set_budget(
            session, org_id, project_id, body.monthly_credits, caller.environment, month
        )
        alerts.budget_changed(session, project_id, now)  # budget alerts judged at once
    return _budget_json(project_id, body.monthly_credits, month, used)


@router.get("/v1/organizations/{org_id}/projects/{project_id}/budget", response_model=BudgetOut)
def get_budget(org_id: str, project_id: str, caller: Caller, db: DB) -> Any:
    """A project's monthly credit budget (`null`: none) and what it used this month (UTC; on its
    test clock's time for an organization on one), in the key's environment."""
    authorize_org(caller, org_id, READ_SCOPES)
    now = test_clocks.hot_now_for(db, org_id)
    month = date(now.year, now.month, 1)
    with db.read() as session:
        budget, used = usage.budget_of(session, org_id, project_id, caller.environment, month)
    return _budget_json(project_id, budget, month, used)


def _budget_json(project_id: str, budget: int | None, month: date, used: int) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "monthly_credits": None if budget is None else format_credits(budget),
        "month": month.strftime("%Y-%m"),
        "used_this_month": format_credits(used),
    }
