"""Holds for long operations: reserve an estimate, extend it, settle it with the actual usage (the
event is recorded through the ingest path and the reservation released), or release it. Expired holds
stop counting at once and are released by the worker (or by the next write that sees them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from creditmeter.errors import Conflict, CreditmeterError, NotFound
from creditmeter.kit.ids import new_id
from creditmeter.ledger.consumption import release, reserve
from creditmeter.ledger.service import LockedBalance, lock_balance
from creditmeter.metering import gate
from creditmeter.metering.models import Hold

MAX_TTL_SECONDS = 30 * 24 * 3600


class HoldRefused(CreditmeterError):
    """The hold cannot be placed: not enough credits, or the project's budget is spent."""

    status_code = 402
    title = "Payment required"


@dataclass(frozen=True)
class HoldRequest:
    organization_id: str
    status: str
    environment: str
    project: tuple[str, int | None] | None
    operation: str
    credits_micros: int
    ttl_seconds: int


def _refuse_unless_allowed(
    session: Session, request: HoldRequest, amount: int, now: datetime
) -> None:
    decision = gate.decide(
        session,
        org_id=request.organization_id,
        status=request.status,
        env=request.environment,
        project=request.project,
        estimated=amount,
        now=now,
    )
    if decision.allowed:
        return
    detail = {
        gate.INSUFFICIENT_CREDITS: "not enough available credits for this hold",
        gate.PROJECT_BUDGET_EXCEEDED: "the project's monthly budget does not cover this hold",
        gate.ORGANIZATION_SUSPENDED: "the organization is suspended",
    }[decision.reason]
    raise HoldRefused(f"{detail}; nothing was reserved", code=decision.reason)


def place(session: Session, request: HoldRequest, now: datetime) -> Hold:
    """Reserve credits, or raise HoldRefused (402) and reserve nothing."""
    balance = lock_balance(session, request.organization_id, request.environment)
    release_lapsed(session, balance, now)
    _refuse_unless_allowed(session, request, request.credits_micros, now)
    hold_id = new_id("hold")
    if request.credits_micros:
        reserve(session, balance, request.credits_micros, f"hold {hold_id}", now)
    hold = Hold(
        id=hold_id,
        organization_id=request.organization_id,
        environment=request.environment,
        project_id=request.project[0] if request.project else None,
        operation=request.operation,
        credits_micros=request.credits_micros,
        status="active",
        expires_at=now + timedelta(seconds=request.ttl_seconds),
        created_at=now,
        updated_at=now,
    )
    session.add(hold)
    session.flush()
    return hold


def get(session: Session, hold_id: str, caller_org: str | None, env: str) -> Hold:
    hold = session.get(Hold, hold_id) if "\x00" not in hold_id else None
    if (
        hold is None
        or hold.environment != env
        or (caller_org is not None and hold.organization_id != caller_org)
    ):
        raise NotFound(f"hold {hold_id} not found")
    return hold


def _require_active(hold: Hold, now: datetime) -> None:
    if hold.status == "active" and hold.expires_at <= now:
        raise Conflict(
            f"hold {hold.id} expired at {hold.expires_at.isoformat()}", code="hold_expired"
        )
    if hold.status != "active":
        raise Conflict(f"hold {hold.id} is {hold.status}", code=f"hold_{hold.status}")


def extend(
    session: Session,
    hold: Hold,
    org_status: str,
    project: tuple[str, int | None] | None,
    more_micros: int,
    ttl_seconds: int | None,
    now: datetime,
) -> Hold:
    """Reserve ``more_micros`` more (refused with 402 like a new hold) and/or push the expiry to
    ``ttl_seconds`` from now."""
    balance = lock_balance(session, hold.organization_id, hold.environment)
    session.refresh(hold)
    _require_active(hold, now)
    if more_micros:
        request = HoldRequest(
            hold.organization_id,
            org_status,
            hold.environment,
            project,
            hold.operation,
            more_micros,
            ttl_seconds or 0,
        )
        _refuse_unless_allowed(session, request, more_micros, now)
        reserve(session, balance, more_micros, f"extend hold {hold.id}", now)
        hold.credits_micros += more_micros
    if ttl_seconds is not None:
        hold.expires_at = now + timedelta(seconds=ttl_seconds)
    hold.updated_at = now
    session.flush()
    return hold


def cancel(session: Session, hold: Hold, now: datetime) -> Hold:
    """Release a hold's reservation. Releasing a released or expired hold changes nothing."""
    balance = lock_balance(session, hold.organization_id, hold.environment)
    session.refresh(hold)
    if hold.status in {"released", "expired"}:
        return hold
    if hold.status == "settled":
        raise Conflict(
            f"hold {hold.id} was settled; it has nothing left to release", code="hold_settled"
        )
    if hold.credits_micros:
        release(session, balance, hold.credits_micros, f"release hold {hold.id}", now)
    hold.status = "released"
    hold.updated_at = now
    session.flush()
    return hold


def release_lapsed(session: Session, balance: LockedBalance, now: datetime) -> int:
    """Release every active hold of the locked organization whose time is up."""
    lapsed = list(
        session.execute(
            select(Hold.id, Hold.credits_micros).where(
                Hold.organization_id == balance.organization_id,
                Hold.environment == balance.environment,
                Hold.status == "active",
                Hold.expires_at <= now,
            )
        )
    )
    if not lapsed:
        return 0
    total = sum(h.credits_micros for h in lapsed)
    if total:
        release(session, balance, total, f"{len(lapsed)} hold(s) expired", now)
    session.execute(
        update(Hold)
        .where(Hold.id.in_([h.id for h in lapsed]))
        .values(status="expired", updated_at=now)
    )
    return len(lapsed)


def expire_due(session: Session, now: datetime) -> int:
    """Worker job: release the holds of every organization whose time is up."""
    due = session.execute(
        select(Hold.organization_id, Hold.environment)
        .where(Hold.status == "active", Hold.expires_at <= now)
        .distinct()
        .order_by(Hold.organization_id, Hold.environment)
    ).all()
    count = 0
    for org_id, env in due:
        count += release_lapsed(session, lock_balance(session, org_id, env), now)
    return count
