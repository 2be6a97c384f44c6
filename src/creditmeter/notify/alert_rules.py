"""Alert rules: what an organization wants to be told, per environment, one level per rule.

Thresholds are stored as integers in the unit of the type (:data:`TYPES`): micro-credits, hundredths
of a percent, or days. Several rules of one type are several levels (50 %, 20 %, 5 %), each with its
own recipients. The hysteresis (default 10 % of the threshold) is the margin the value must recover
by before the rule re-arms, so usage hovering at the line does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.errors import InvalidRequest, NotFound
from creditmeter.kit.credits import CreditsFormatError, format_credits, parse_credits
from creditmeter.kit.ids import new_id
from creditmeter.notify.models import AlertRule
from creditmeter.orgs.models import Project


class AlertType(StrEnum):
    CREDITS_BELOW = "credits_below"
    PERCENT_REMAINING_BELOW = "percent_remaining_below"
    PROJECTED_DEPLETION_WITHIN = "projected_depletion_within"
    CREDITS_EXPIRING_WITHIN = "credits_expiring_within"
    PROJECT_BUDGET_PERCENT = "project_budget_percent"
    ORGANIZATION_PAUSED = "organization_paused"


class Unit(StrEnum):
    CREDITS = "credits"
    PERCENT = "percent"
    DAYS = "days"
    NONE = "none"


#: The unit of each type's threshold.
TYPES: dict[AlertType, Unit] = {
    AlertType.CREDITS_BELOW: Unit.CREDITS,
    AlertType.PERCENT_REMAINING_BELOW: Unit.PERCENT,
    AlertType.PROJECTED_DEPLETION_WITHIN: Unit.DAYS,
    AlertType.CREDITS_EXPIRING_WITHIN: Unit.DAYS,
    AlertType.PROJECT_BUDGET_PERCENT: Unit.PERCENT,
    AlertType.ORGANIZATION_PAUSED: Unit.NONE,
}
#: Types whose state is a mark of the ledger's write path (``ledger.marks``).
BALANCE_TYPES = frozenset(
    {
        AlertType.CREDITS_BELOW,
        AlertType.PERCENT_REMAINING_BELOW,
        AlertType.PROJECTED_DEPLETION_WITHIN,
        AlertType.ORGANIZATION_PAUSED,
    }
)
MAX_DAYS = 366
MAX_RULES_PER_ORGANIZATION = 100
MAX_RECIPIENTS = 20
DEFAULT_HYSTERESIS_BP = 1000


@dataclass(frozen=True)
class RuleInput:
    type: str
    threshold: str | None
    name: str = ""
    project: str | None = None
    recipients: tuple[str, ...] = ()
    hysteresis_percent: str | None = None
    enabled: bool = True


def _bad(message: str, field: str, code: str = "invalid_alert") -> InvalidRequest:
    return InvalidRequest(message, code=code, errors=[{"field": field, "message": message}])


def parse_type(value: str) -> AlertType:
    try:
        return AlertType(value)
    except ValueError:
        known = ", ".join(t.value for t in AlertType)
        raise _bad(f"unknown alert type {value!r}; known types: {known}", "type") from None


def parse_threshold(kind: AlertType, text: str | None) -> int:
    unit = TYPES[kind]
    if unit is Unit.NONE:
        if text not in (None, "", "0"):
            raise _bad(f"{kind.value} takes no threshold", "threshold")
        return 0
    if text is None or text == "":
        raise _bad(f"{kind.value} needs a threshold ({unit.value})", "threshold")
    if unit is Unit.CREDITS:
        try:
            micros = parse_credits(text)
        except CreditsFormatError as exc:
            raise _bad(f"threshold: {exc}", "threshold") from None
        if micros <= 0:
            raise _bad("threshold must be more than zero credits", "threshold")
        return micros
    if unit is Unit.PERCENT:
        bp = _hundredths(text, "threshold")
        upper = 100_00 if kind is AlertType.PERCENT_REMAINING_BELOW else 1000_00
        if not 0 < bp <= upper:
            raise _bad(f"threshold must be a percentage in (0, {upper // 100}]", "threshold")
        return bp
    if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise _bad(f"threshold must be a whole number of days from 1 to {MAX_DAYS}", "threshold")
    return int(text)


def _hundredths(text: str, field: str) -> int:
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        raise _bad(f'{field} must be a decimal number such as "20" or "12.5"', field) from None
    if not value.is_finite() or value != value.quantize(Decimal("0.01")) or abs(value) > 10**6:
        raise _bad(f"{field} must have at most two decimal places", field)
    return int(value * 100)


def show_threshold(rule: AlertRule) -> str:
    unit = TYPES[AlertType(rule.type)]
    if unit is Unit.CREDITS:
        return format_credits(rule.threshold)
    if unit is Unit.PERCENT:
        return show_hundredths(rule.threshold)
    if unit is Unit.DAYS:
        return str(rule.threshold)
    return ""


def show_hundredths(value: int) -> str:
    text = f"{Decimal(value) / 100:.2f}"
    return text.rstrip("0").rstrip(".")


def _recipients(values: tuple[str, ...] | list[str]) -> list[str]:
    if len(values) > MAX_RECIPIENTS:
        raise _bad(f"at most {MAX_RECIPIENTS} recipients", "recipients")
    found = []
    for value in values:
        try:
            found.append(validate_email(value, check_deliverability=False).normalized.lower())
        except EmailNotValidError as exc:
            raise _bad(f"recipient {value!r}: {exc}", "recipients") from None
    return sorted(set(found))


def _project(session: Session, org: str, kind: AlertType, ref: str | None) -> str | None:
    if kind is not AlertType.PROJECT_BUDGET_PERCENT:
        if ref is not None:
            raise _bad(f"{kind.value} is about the organization; omit project", "project")
        return None
    if not ref:
        raise _bad("project_budget_percent needs a project (id or name)", "project")
    row = session.execute(
        select(Project.id).where(
            Project.organization_id == org, (Project.id == ref) | (Project.name == ref)
        )
    ).first()
    if row is None:
        raise NotFound(f"project {ref} not found in this organization")
    return str(row.id)


def create(
    session: Session, organization_id: str, environment: str, rule: RuleInput, now: datetime
) -> AlertRule:
    """Check and add a rule (the caller then evaluates it: ``alerts.refresh``)."""
    kind = parse_type(rule.type)
    count = len(list_rules(session, organization_id, environment))
    if count >= MAX_RULES_PER_ORGANIZATION:
        raise _bad(
            f"an organization may have at most {MAX_RULES_PER_ORGANIZATION} alert rules per "
            "environment",
            "type",
            code="too_many_alerts",
        )
    row = AlertRule(
        id=new_id("alr"),
        organization_id=organization_id,
        environment=environment,
        type=kind.value,
        name=rule.name.strip()[:200],
        threshold=parse_threshold(kind, rule.threshold),
        hysteresis_bp=_hysteresis(rule.hysteresis_percent),
        project_id=_project(session, organization_id, kind, rule.project),
        recipients=_recipients(rule.recipients),
        enabled=rule.enabled,
        state="ok",
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def _hysteresis(text: str | None) -> int:
    if text is None:
        return DEFAULT_HYSTERESIS_BP
    bp = _hundredths(text, "hysteresis_percent")
    if not 0 <= bp <= 100_00:
        raise _bad("hysteresis_percent must be from 0 to 100", "hysteresis_percent")
    return bp


def update(
    session: Session,
    rule: AlertRule,
    now: datetime,
    *,
    threshold: str | None = None,
    name: str | None = None,
    recipients: list[str] | None = None,
    hysteresis_percent: str | None = None,
    enabled: bool | None = None,
) -> AlertRule:
    """Change a rule's settings (its type and project stay: make a new rule for another)."""
    if threshold is not None:
        rule.threshold = parse_threshold(AlertType(rule.type), threshold)
    if name is not None:
        rule.name = name.strip()[:200]
    if recipients is not None:
        rule.recipients = _recipients(recipients)
    if hysteresis_percent is not None:
        rule.hysteresis_bp = _hysteresis(hysteresis_percent)
    if enabled is not None:
        rule.enabled = enabled
    rule.updated_at = now
    session.flush()
    return rule


def get(session: Session, organization_id: str, environment: str, rule_id: str) -> AlertRule:
    rule = session.get(AlertRule, rule_id)
    if rule is None or (rule.organization_id, rule.environment) != (organization_id, environment):
        raise NotFound(f"alert {rule_id} not found")
    return rule


def list_rules(
    session: Session,
    organization_id: str,
    environment: str,
    *,
    after: str | None = None,
    limit: int | None = None,
) -> list[AlertRule]:
    q = select(AlertRule).where(
        AlertRule.organization_id == organization_id, AlertRule.environment == environment
    )
    if after is not None:
        q = q.where(AlertRule.id > after)
    q = q.order_by(AlertRule.id)
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))


def delete(session: Session, rule: AlertRule) -> None:
    session.delete(rule)
    session.flush()
