"""The gate: may this organization run this operation now? It reads the same rows the ledger writes
(usable lots, arrears, active holds), so a grant or a debit is seen by the very next call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from creditmeter.errors import InvalidRequest, NotFound
from creditmeter.kit.db import driver_timestamp, fetch_one
from creditmeter.ledger.models import Balance, Lot
from creditmeter.metering.models import Hold, ProjectUsage
from creditmeter.orgs import service as orgs
from creditmeter.orgs.models import Organization, Project
from creditmeter.orgs.service import KEY_COLUMNS, Principal
from creditmeter.pricing.domain import RateCard, price

OK = "ok"
INSUFFICIENT_CREDITS = "insufficient_credits"
PROJECT_BUDGET_EXCEEDED = "project_budget_exceeded"
ORGANIZATION_SUSPENDED = "organization_suspended"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    available_micros: int
    estimated_micros: int
    organization_id: str
    project_id: str | None


def resolve_organization(session: Session, ref: str, caller_org: str | None) -> tuple[str, str]:
    """(id, status) of the organization named by id or external id; another organization's is 404."""
    if "\x00" in ref:
        raise NotFound(f"organization {ref!r} not found")
    row = session.execute(
        select(Organization.id, Organization.status)
        .where(or_(Organization.id == ref, Organization.external_id == ref))
        .order_by((Organization.id == ref).desc())
    ).first()
    if row is None or (caller_org is not None and row.id != caller_org):
        raise NotFound(f"organization {ref} not found", code="unknown_organization")
    return row.id, row.status


def resolve_project(session: Session, org_id: str, ref: str) -> tuple[str, int | None]:
    """(id, monthly budget) of a project of the organization, by id or name."""
    row = session.execute(
        select(Project.id, Project.monthly_budget_micros).where(
            Project.organization_id == org_id, or_(Project.id == ref, Project.name == ref)
        )
    ).first()
    if row is None:
        raise InvalidRequest(
            f"project {ref!r} does not exist in this organization; send its id or name",
            code="unknown_project",
            errors=[{"field": "project", "message": "unknown project", "type": "unknown_project"}],
        )
    return row.id, row.monthly_budget_micros


def available_micros(session: Session, org_id: str, env: str, now: datetime) -> int:
    """Usable lots - arrears - active holds, as of ``now`` (expired holds no longer count, even before
    the worker releases them). One round trip: this is on the gate's hot path."""
    usable = (
        select(func.coalesce(func.sum(Lot.remaining_micros), 0))
        .where(
            Lot.organization_id == org_id,
            Lot.environment == env,
            Lot.remaining_micros > 0,
            Lot.effective_at <= now,
            or_(Lot.expires_at.is_(None), Lot.expires_at > now),
        )
        .scalar_subquery()
    )
    lapsed = (
        select(func.coalesce(func.sum(Hold.credits_micros), 0))
        .where(
            Hold.organization_id == org_id,
            Hold.environment == env,
            Hold.status == "active",
            Hold.expires_at <= now,
        )
        .scalar_subquery()
    )
    row = session.execute(
        select(usable, Balance.arrears_micros, Balance.held_micros, lapsed).where(
            Balance.organization_id == org_id, Balance.environment == env
        )
    ).one()
    return int(row[0]) - int(row[1]) - (int(row[2]) - int(row[3]))


# The gate's hot path in one statement: the caller's API key, the organization it names (by id, else
# by external id) and that organization's available balance in the key's environment, as of :now.
_SNAPSHOT_SQL = f"""
SELECT {KEY_COLUMNS},
       o.id, o.status,
       (SELECT COALESCE(SUM(l.remaining_micros), 0) FROM lots l
         WHERE l.organization_id = o.id AND l.environment = k.environment
           AND l.remaining_micros > 0 AND l.effective_at <= :now
           AND (l.expires_at IS NULL OR l.expires_at > :now)),
       COALESCE(b.arrears_micros, 0), COALESCE(b.held_micros, 0),
       (SELECT COALESCE(SUM(h.credits_micros), 0) FROM holds h
         WHERE h.organization_id = o.id AND h.environment = k.environment
           AND h.status = 'active' AND h.expires_at <= :now)
FROM api_keys k
LEFT JOIN organizations o ON o.id = (
    SELECT o2.id FROM organizations o2 WHERE o2.id = :ref OR o2.external_id = :ref
    ORDER BY CASE WHEN o2.id = :ref THEN 0 ELSE 1 END LIMIT 1)
LEFT JOIN balances b ON b.organization_id = o.id AND b.environment = k.environment
WHERE k.key_hash = :key_hash
"""  # noqa: S608 - no input in the text; every value is a bound parameter


@dataclass(frozen=True)
class Snapshot:
    """What the gate needs to answer, read in one round trip."""

    principal: Principal
    touch_due: bool
    organization_id: str | None
    status: str | None
    available_micros: int


def snapshot(
    engine: Engine, secret: str, ref: str, now: datetime, touch_interval_seconds: float
) -> Snapshot:
    """The caller's key, the organization named by ``ref`` and its available balance (usable lots -
    arrears - active holds) in the key's environment, in one statement on a pooled driver connection
    (no ORM session, no statement building per call) that reads committed rows: the next call after
    any commit sees it. An unknown or revoked key is 401; the organization is ``None`` when no
    organization has that id or external id."""
    params = orgs.key_params(engine, secret, now, touch_interval_seconds)
    params["ref"] = ref.replace("\x00", "")
    params["now"] = driver_timestamp(engine.dialect.name, now)
    row = fetch_one(engine, _SNAPSHOT_SQL, params)
    principal, touch_due = orgs.principal_of(row)
    assert row is not None
    found = row[6] is not None and "\x00" not in ref
    return Snapshot(
        principal=principal,
        touch_due=touch_due,
        organization_id=row[6] if found else None,
        status=row[7] if found else None,
        available_micros=int(row[8]) - int(row[9]) - (int(row[10]) - int(row[11])),
    )


def lapsed_hold_micros(session: Session, org_id: str, env: str, now: datetime) -> int:
    """Credits still recorded as held by holds whose time is up (the worker will release them)."""
    total = session.scalar(
        select(func.coalesce(func.sum(Hold.credits_micros), 0)).where(
            Hold.organization_id == org_id,
            Hold.environment == env,
            Hold.status == "active",
            Hold.expires_at <= now,
        )
    )
    return int(total or 0)


def project_used_micros(
    session: Session, project_id: str, env: str, month: date, now: datetime
) -> int:
    """What the project used this month plus what its active holds reserve (a hold whose time is
    up no longer counts, even before the worker releases it)."""
    used = session.scalar(
        select(ProjectUsage.credits_micros).where(
            ProjectUsage.project_id == project_id,
            ProjectUsage.environment == env,
            ProjectUsage.month == month,
        )
    )
    held = session.scalar(
        select(func.coalesce(func.sum(Hold.credits_micros), 0)).where(
            Hold.project_id == project_id,
            Hold.environment == env,
            Hold.status == "active",
            Hold.expires_at > now,
        )
    )
    return int(used or 0) + int(held or 0)


def estimate_micros(
    rate_card: RateCard,
    operation: str,
    quantities: Mapping[str, Any] | None,
    credits_micros: int | None,
    now: datetime,
) -> int:
    """The estimated cost: credits given outright, or the price of the estimated quantities (with no
    quantities, the operation's base and minimum charge). The operation is checked either way."""
    version = rate_card.version_at(now)
    priced = price(version, operation, quantities or {}, now, False)
    return credits_micros if credits_micros is not None else priced.total_micros


def decide(
    session: Session,
    *,
    org_id: str,
    status: str,
    env: str,
    project: tuple[str, int | None] | None,
    estimated: int,
    now: datetime,
) -> Decision:
    available = available_micros(session, org_id, env, now)
    return decide_with(
        session,
        org_id=org_id,
        status=status,
        env=env,
        project=project,
        estimated=estimated,
        available=available,
        now=now,
    )


def decide_with(
    session: Session | None,
    *,
    org_id: str,
    status: str,
    env: str,
    project: tuple[str, int | None] | None,
    estimated: int,
    available: int,
    now: datetime,
) -> Decision:
    """The answer for an available balance already read. ``session`` is needed only when the project
    has a budget (its month's usage is read then)."""
    project_id = project[0] if project else None

    def answer(allowed: bool, reason: str) -> Decision:
        return Decision(allowed, reason, available, estimated, org_id, project_id)

    if status == "suspended":
        return answer(False, ORGANIZATION_SUSPENDED)
    if available <= 0 or estimated > available:
        return answer(False, INSUFFICIENT_CREDITS)
    if project is not None and project[1] is not None:
        assert session is not None, "a project budget is read through a session"
        used = project_used_micros(session, project[0], env, date(now.year, now.month, 1), now)
        if used + estimated > project[1] or used >= project[1]:
            return answer(False, PROJECT_BUDGET_EXCEEDED)
    return answer(True, OK)
