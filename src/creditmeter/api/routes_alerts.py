"""Alert rules of an organization, per environment (``notify.alert_rules``, ``notify.alerts``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, EmailStr, Field, StringConstraints
from pydantic.functional_validators import AfterValidator
from sqlalchemy.orm import Session

from creditmeter.api.deps import (
    ADMIN_SCOPES,
    DB,
    READ_SCOPES,
    Caller,
    Cursor,
    Env,
    IdempotencyKey,
    Limit,
    authorize_org,
    environment_for,
)
from creditmeter.api.idempotent import run_once
from creditmeter.api.schemas import Name, Page, Request, checked_text
from creditmeter.kit import clock
from creditmeter.kit.pagination import DEFAULT_LIMIT, decode_cursor, page_of
from creditmeter.notify import alert_rules, alerts
from creditmeter.notify.alert_rules import AlertType
from creditmeter.notify.models import AlertRule
from creditmeter.orgs import service as orgs

router = APIRouter(prefix="/v1/organizations/{org_id}/alerts", tags=["alerts"])

Number = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=40),
    AfterValidator(checked_text),
]


class AlertCreate(Request):
    type: AlertType = Field(description="What the rule watches (see docs/alerts.md).")
    threshold: Number | None = Field(
        None,
        description="Credits (`credits_below`), percent (`percent_remaining_below`, "
        "`project_budget_percent`) or days (`projected_depletion_within`, "
        "`credits_expiring_within`) as a string; none for `organization_paused`.",
        examples=["100", "20", "7"],
    )
    name: Name | None = None
    project: Name | None = Field(None, description="A project's id or name (budget rules).")
    recipients: list[EmailStr] = Field(
        default_factory=list,
        max_length=alert_rules.MAX_RECIPIENTS,
        description="Who is e-mailed; empty: the organization's owners and admins.",
    )
    hysteresis_percent: Number | None = Field(
        None,
        description="How far past the threshold the value must recover before the rule re-arms, "
        "in percent of the threshold (default 10).",
    )
    enabled: bool = True


class AlertUpdate(Request):
    threshold: Number | None = None
    name: Name | None = None
    recipients: list[EmailStr] | None = Field(None, max_length=alert_rules.MAX_RECIPIENTS)
    hysteresis_percent: Number | None = None
    enabled: bool | None = None


class AlertOut(BaseModel):
    id: str
    organization_id: str
    environment: str
    type: str
    name: str
    threshold: str
    hysteresis_percent: str
    project_id: str | None
    recipients: list[str]
    enabled: bool
    state: Literal["ok", "triggered"]
    triggered_at: datetime | None
    resolved_at: datetime | None
    last_value: str | None
    created_at: datetime
    updated_at: datetime


def _out(rule: AlertRule) -> dict[str, Any]:
    return AlertOut(
        id=rule.id,
        organization_id=rule.organization_id,
        environment=rule.environment,
        type=rule.type,
        name=rule.name,
        threshold=alert_rules.show_threshold(rule),
        hysteresis_percent=alert_rules.show_hundredths(rule.hysteresis_bp),
        project_id=rule.project_id,
        recipients=list(rule.recipients),
        enabled=rule.enabled,
        state=rule.state,
        triggered_at=rule.triggered_at,
        resolved_at=rule.resolved_at,
        last_value=rule.last_value,
        created_at=rule.created_at,
        updated_at=rule.updated_at,
    ).model_dump(mode="json")


def evaluate(session: Session, rule: AlertRule) -> None:
    """Evaluate a new or changed rule at once (a line already crossed fires now)."""
    now = clock.now()
    if rule.type in {t.value for t in alert_rules.BALANCE_TYPES}:
        alerts.refresh(session, rule.organization_id, rule.environment, now)
    elif rule.type == AlertType.PROJECT_BUDGET_PERCENT.value and rule.project_id:
        alerts.check_project(session, rule.project_id, rule.environment, now)
    session.flush()
    session.refresh(rule)


@router.post("", status_code=201, response_model=AlertOut)
def create_alert(
    org_id: str,
    body: AlertCreate,
    caller: Caller,
    db: DB,
    environment: Env = None,
    idempotency_key: IdempotencyKey = None,
) -> object:
    """Add an alert rule (one level: several levels of a type are several rules). A rule whose line
    is already crossed when it is created triggers at once."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    env = environment_for(caller, environment)

    def create(session: Session) -> dict[str, Any]:
        orgs.get_organization(session, org_id)
        rule = alert_rules.create(
            session,
            org_id,
            env,
            alert_rules.RuleInput(
                type=body.type.value,
                threshold=body.threshold,
                name=body.name or "",
                project=body.project,
                recipients=tuple(body.recipients),
                hysteresis_percent=body.hysteresis_percent,
                enabled=body.enabled,
            ),
            clock.now(),
        )
        evaluate(session, rule)
        return _out(rule)

    request = body.model_dump(mode="json")
    return run_once(db, f"alerts:{org_id}:{env}", idempotency_key, request, create)


@router.get("", response_model=Page[AlertOut])
def list_alerts(
    org_id: str,
    caller: Caller,
    db: DB,
    environment: Env = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> object:
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    after = decode_cursor(cursor, "alr_")
    with db.read() as session:
        orgs.get_organization(session, org_id)
        rows = alert_rules.list_rules(session, org_id, env, after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return page_of([_out(r) for r in rows], rows[-1].id if more else None)


@router.get("/{alert_id}", response_model=AlertOut)
def get_alert(
    org_id: str, alert_id: str, caller: Caller, db: DB, environment: Env = None
) -> object:
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    with db.read() as session:
        return _out(alert_rules.get(session, org_id, env, alert_id))


@router.patch("/{alert_id}", response_model=AlertOut)
def update_alert(
    org_id: str,
    alert_id: str,
    body: AlertUpdate,
    caller: Caller,
    db: DB,
    environment: Env = None,
) -> object:
    """Change a rule's threshold, name, recipients, hysteresis or whether it is on. Its state is
    kept; a changed line is evaluated at once."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    env = environment_for(caller, environment)
    with db.write() as session:
        rule = alert_rules.get(session, org_id, env, alert_id)
        alert_rules.update(
            session,
            rule,
            clock.now(),
            threshold=body.threshold,
            name=body.name,
            recipients=None if body.recipients is None else list(body.recipients),
            hysteresis_percent=body.hysteresis_percent,
            enabled=body.enabled,
        )
        evaluate(session, rule)
        return _out(rule)


@router.delete("/{alert_id}", response_model=AlertOut)
def delete_alert(
    org_id: str, alert_id: str, caller: Caller, db: DB, environment: Env = None
) -> object:
    """Remove a rule; its mark goes with it (nothing more is sent for it)."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    env = environment_for(caller, environment)
    with db.write() as session:
        rule = alert_rules.get(session, org_id, env, alert_id)
        shown = _out(rule)
        alert_rules.delete(session, rule)
        if rule.type in {t.value for t in alert_rules.BALANCE_TYPES}:
            alerts.refresh(session, org_id, env, clock.now())
        return shown
