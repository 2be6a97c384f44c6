"""Usage after the fact: the balance next to a duplicate's original result, corrections (reversal of an
event) and project budgets."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from creditmeter.errors import Conflict, NotFound
from creditmeter.ledger.consumption import Allocation, Charge, refund
from creditmeter.ledger.models import Balance, JournalTransaction
from creditmeter.ledger.service import lock_balance
from creditmeter.metering import gate
from creditmeter.metering.domain import EventResult
from creditmeter.metering.ingest import add_project_usage, month_of
from creditmeter.metering.models import ProjectUsage, UsageEvent
from creditmeter.orgs.models import Project


def with_balance(
    session: Session, result: EventResult, org_id: str, env: str, now: datetime
) -> EventResult:
    """Attach the organization's current balance to a result (duplicates carry today's balance)."""
    available = gate.available_micros(session, org_id, env, now)
    arrears = session.scalar(
        select(Balance.arrears_micros).where(
            Balance.organization_id == org_id, Balance.environment == env
        )
    )
    snapshot = {
        "available_micros": available,
        "arrears_micros": int(arrears or 0),
        "paused": available <= 0,
    }
    return replace(result, balance=snapshot)


def reverse(
    session: Session,
    org_id: str,
    env: str,
    event_id: str,
    reason: str,
    now: datetime,
    currency: str,
) -> tuple[int, int]:
    """Re-credit exactly what a usage event cost, once. Returns (credits, journal transaction id)."""
    lock = lock_balance(session, org_id, env)
    event = (
        session.scalars(
            select(UsageEvent).where(
                UsageEvent.organization_id == org_id,
                UsageEvent.environment == env,
                UsageEvent.event_id == event_id,
            )
        ).first()
        if "\x00" not in event_id
        else None
    )
    if event is None:
        raise NotFound(f"usage event {event_id} not found")
    if event.reversal_transaction_id is not None:
        raise Conflict(f"usage event {event_id} was already reversed", code="already_reversed")
    if event.transaction_id is not None and session.scalar(
        select(func.count()).where(JournalTransaction.reverses_id == event.transaction_id)
    ):
        # The whole journal transaction that debited it (perhaps with the rest of its batch) was
        # reversed through the ledger: its credits are back already.
        raise Conflict(
            f"the journal transaction txn_{event.transaction_id} that debited usage event "
            f"{event_id} was reversed through the ledger; its credits were already given back",
            code="already_reversed",
        )
    if event.credits_micros == 0:
        raise Conflict(
            f"usage event {event_id} cost nothing; there is nothing to re-credit",
            code="nothing_to_reverse",
        )
    txn_id = refund(
        session,
        lock,
        Charge(event.credits_micros, event.operation),
        Allocation.from_json(event.allocation),
        f"reversal of usage {event_id}: {reason}",
        now,
        currency,
    )
    session.execute(
        update(UsageEvent)
        .where(UsageEvent.id == event.id)
        .values(reversal_transaction_id=txn_id, reversed_at=now)
    )
    if event.project_id:
        add_project_usage(
            session, event.project_id, env, month_of(event.occurred_at), -event.credits_micros
        )
    return event.credits_micros, txn_id


def _project(session: Session, org_id: str, project_id: str) -> Project:
    project = session.get(Project, project_id) if "\x00" not in project_id else None
    if project is None or project.organization_id != org_id:
        raise NotFound(f"project {project_id} not found")
    return project


def set_budget(
    session: Session,
    org_id: str,
    project_id: str,
    monthly_micros: int | None,
    env: str,
    month: date,
) -> int:
    """Set or remove a project's monthly budget; returns what the project used this month."""
    project = _project(session, org_id, project_id)
    project.monthly_budget_micros = monthly_micros
    session.flush()
    return _used(session, project_id, env, month)


def budget_of(
    session: Session, org_id: str, project_id: str, env: str, month: date
) -> tuple[int | None, int]:
    """A project's monthly budget (None: it has none) and what it used in ``month``."""
    project = _project(session, org_id, project_id)
    return project.monthly_budget_micros, _used(session, project_id, env, month)


def _used(session: Session, project_id: str, env: str, month: date) -> int:
    used = session.scalar(
        select(ProjectUsage.credits_micros).where(
            ProjectUsage.project_id == project_id,
            ProjectUsage.environment == env,
            ProjectUsage.month == month,
        )
    )
    return int(used or 0)
