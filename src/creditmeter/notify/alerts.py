"""Alert evaluation: rules turned into marks of the ledger's write path, crossings into events.

- Balance types (``credits_below``, ``percent_remaining_below``, ``projected_depletion_within``,
  ``organization_paused``) are lines on available credits: :func:`refresh` computes each enabled
  rule's line (a percentage of the period's plan allocation plus purchases; days of the trailing
  burn rate) and hands them to ``ledger.marks.sync``. From then on the write that crosses a line
  records it in its own transaction (``balance_crossing`` job) and :func:`on_crossing` publishes
  ``alert.triggered`` / ``alert.resolved`` once per crossing. The built-in line at zero publishes
  ``balance.depleted`` and ``organization.paused`` / ``organization.resumed``.
- ``project_budget_percent``: ingest adds to the project's month (``project_usage``) and, when the
  total reaches ``alert_at_micros``, enqueues ``project_usage_check`` in the same transaction;
  :func:`check_project` fires the rules reached and stores the next line.
- Time moves values without a write (the burn rate changes, lots near expiry, a new month): the
  :func:`sweep` recomputes lines, evaluates ``credits_expiring_within`` and budgets, and publishes
  ``credits.expiring`` once per lot a week before it expires.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

from sqlalchemy import func, literal, or_, select, update
from sqlalchemy.orm import Session

from creditmeter.kit import outbox
from creditmeter.kit.credits import format_credits
from creditmeter.kit.db import Database
from creditmeter.ledger import marks
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import Lot
from creditmeter.metering import ingest
from creditmeter.metering.models import ProjectUsage, UsageEvent
from creditmeter.notify import events
from creditmeter.notify.alert_rules import (
    BALANCE_TYPES,
    AlertType,
    show_hundredths,
    show_threshold,
)
from creditmeter.notify.models import AlertRule, NotificationEvent
from creditmeter.orgs.models import Project

log = logging.getLogger("creditmeter.alerts")

PREFIX = "alert:"
PROJECT_USAGE_CHECK = ingest.PROJECT_USAGE_CHECK
ALERTS_SWEEP = "alerts_sweep"
#: The trailing window of the burn rate.
BURN_WINDOW = timedelta(days=7)
#: ``credits.expiring`` is published this long before a lot expires.
EXPIRING_NOTICE = timedelta(days=7)
#: ``alert_at_micros`` of a project month no rule watches.
NEVER = 9_000_000_000_000_000_000


def owner(rule_id: str) -> str:
    return f"{PREFIX}{rule_id}"


# --- balance lines -------------------------------------------------------------------------


def period_grants_micros(session: Session, org: str, env: str, now: datetime) -> int:
    """The period's plan allocation plus purchases: the credits of plan and purchase lots effective
    since the latest plan allocation (the last 31 days when there is none)."""
    start = session.scalar(
        select(func.max(Lot.effective_at)).where(
            Lot.organization_id == org,
            Lot.environment == env,
            Lot.source == "plan",
            Lot.effective_at <= now,
        )
    ) or (now - timedelta(days=31))
    total = session.scalar(
        select(func.coalesce(func.sum(Lot.amount_micros), 0)).where(
            Lot.organization_id == org,
            Lot.environment == env,
            Lot.source.in_(["plan", "purchase"]),
            Lot.effective_at >= start,
            Lot.effective_at <= now,
        )
    )
    return int(total or 0)


def burn_per_day_micros(session: Session, org: str, env: str, now: datetime) -> int:
    """Credits consumed per day over the trailing :data:`BURN_WINDOW` (recorded usage, corrections
    excluded), rounded down."""
    used = session.scalar(
        select(func.coalesce(func.sum(UsageEvent.credits_micros), 0)).where(
            UsageEvent.organization_id == org,
            UsageEvent.environment == env,
            UsageEvent.occurred_at.is_not(None),
            UsageEvent.occurred_at > now - BURN_WINDOW,
            UsageEvent.occurred_at <= now,
            UsageEvent.reversed_at.is_(None),
        )
    )
    return int(used or 0) // BURN_WINDOW.days


def _line(
    session: Session, rule: AlertRule, now: datetime, cache: dict[str, int]
) -> marks.Line | None:
    kind = AlertType(rule.type)
    org, env = rule.organization_id, rule.environment
    if kind is AlertType.ORGANIZATION_PAUSED:
        return marks.Line(owner(rule.id), 1, 1)
    if kind is AlertType.CREDITS_BELOW:
        below = rule.threshold
    elif kind is AlertType.PERCENT_REMAINING_BELOW:
        if "grants" not in cache:
            cache["grants"] = period_grants_micros(session, org, env, now)
        below = cache["grants"] * rule.threshold // 100_00
    else:  # projected depletion within N days: below N days of the burn rate
        if "burn" not in cache:
            cache["burn"] = burn_per_day_micros(session, org, env, now)
        below = cache["burn"] * rule.threshold
    if below <= 0:
        return None  # nothing to measure against yet (no grants, no usage): never fires
    return marks.Line(owner(rule.id), below, below + below * rule.hysteresis_bp // 100_00)


def refresh(session: Session, org: str, env: str, now: datetime) -> list[marks.Crossing]:
    """Recompute the lines of the organization's balance rules and sync its marks, under its
    balance lock; a rule whose line is already crossed fires now. Returns the crossings."""
    balance = ledger.lock_balance(session, org, env)
    rules = list(
        session.scalars(
            select(AlertRule).where(
                AlertRule.organization_id == org,
                AlertRule.environment == env,
                AlertRule.type.in_([t.value for t in BALANCE_TYPES]),
            )
        )
    )
    cache: dict[str, int] = {}
    lines = [line for r in rules if r.enabled and (line := _line(session, r, now, cache))]
    for r in rules:  # a rule without a line (disabled, nothing to measure) is not triggered
        if r.state == "triggered" and owner(r.id) not in {line.owner for line in lines}:
            r.state, r.resolved_at = "ok", now
    percent = any(r.enabled and r.type == AlertType.PERCENT_REMAINING_BELOW.value for r in rules)
    return marks.sync(session, balance, PREFIX, lines, now, refresh_on_grant=percent)


def on_marks_refresh(db: Database, job: outbox.Claimed, now: datetime) -> int:
    """``marks_refresh`` (a grant reached a balance with percentage rules)."""
    org, env = job.organization_id, job.environment
    if org is None or env is None:
        return 0
    with db.write() as session:
        return len(refresh(session, org, env, now))


def _value(session: Session, rule: AlertRule, available: int, now: datetime) -> str:
    kind = AlertType(rule.type)
    if kind is AlertType.PERCENT_REMAINING_BELOW:
        grants = period_grants_micros(session, rule.organization_id, rule.environment, now)
        return show_hundredths(available * 100_00 // grants) if grants > 0 else "0"
    if kind is AlertType.PROJECTED_DEPLETION_WITHIN:
        burn = burn_per_day_micros(session, rule.organization_id, rule.environment, now)
        return str(max(available, 0) // burn) if burn > 0 else "never"
    return format_credits(available)


def _alert_data(rule: AlertRule, value: str, available: int | None, at: datetime) -> dict:  # type: ignore[type-arg]
    return {
        "alert": {
            "id": rule.id,
            "type": rule.type,
            "name": rule.name,
            "threshold": show_threshold(rule),
            "project_id": rule.project_id,
        },
        "value": value,
        "available_credits": None if available is None else format_credits(available),
        "at": at,
    }


def _set_state(
    session: Session,
    rule: AlertRule,
    triggered: bool,
    value: str,
    available: int | None,
    at: datetime,
    now: datetime,
    source_key: str,
) -> None:
    rule.state = "triggered" if triggered else "ok"
    rule.last_value = value
    if triggered:
        rule.triggered_at = at
    else:
        rule.resolved_at = at
    events.publish(
        session,
        "alert.triggered" if triggered else "alert.resolved",
        organization_id=rule.organization_id,
        environment=rule.environment,
        data=_alert_data(rule, value, available, at),
        now=now,
        occurred_at=at,
        source_key=source_key,
    )


def on_crossing(db: Database, job: outbox.Claimed, now: datetime) -> str:
    """``balance_crossing``: publish what one line crossed by a write means (once per job)."""
    c = marks.Crossing.from_job(job)
    key = f"crossing:{job.id}"
    with db.write() as session:
        if c.owner == marks.PAUSED:
            _paused_events(session, c, key, now)
            return c.direction
        if not c.owner.startswith(PREFIX):
            return "unknown owner"
        rule = session.get(AlertRule, c.owner[len(PREFIX) :])
        if rule is None or not rule.enabled:
            return "rule gone"
        value = _value(session, rule, c.available_micros, c.at)
        _set_state(
            session, rule, c.direction == marks.DOWN, value, c.available_micros, c.at, now, key
        )
    return c.direction


def _paused_events(session: Session, c: marks.Crossing, key: str, now: datetime) -> None:
    available = format_credits(c.available_micros)
    data = {"available_credits": available, "at": c.at}
    if c.direction == marks.DOWN:
        published = [
            ("balance.depleted", data),
            ("organization.paused", {**data, "reason": "insufficient_credits"}),
        ]
    else:
        published = [("organization.resumed", data)]
    for type_, payload in published:
        events.publish(
            session,
            type_,
            organization_id=c.organization_id,
            environment=c.environment,
            data=payload,
            now=now,
            occurred_at=c.at,
            source_key=f"{key}:{type_}",
        )


# --- project budgets -----------------------------------------------------------------------


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


def check_project(
    session: Session, project_id: str, env: str, now: datetime, month: date | None = None
) -> int:
    """Fire or resolve the budget rules of one project for its latest month of usage (or ``month``;
    months follow the organization's clock, so a project on a test clock is judged on its own
    months) and store the next line in ``project_usage.alert_at_micros``. Returns how many rules
    changed state."""
    project = session.get(Project, project_id)
    if project is None:
        return 0
    latest = session.scalar(
        select(func.max(ProjectUsage.month)).where(
            ProjectUsage.project_id == project_id, ProjectUsage.environment == env
        )
    )
    if month is not None and latest is not None and month < latest:
        _set_alert_at(session, project_id, env, month, NEVER)  # a late event: not this month
        return 0
    month = month or latest or month_of(now)
    used = int(
        session.scalar(
            select(ProjectUsage.credits_micros).where(
                ProjectUsage.project_id == project_id,
                ProjectUsage.environment == env,
                ProjectUsage.month == month,
            )
        )
        or 0
    )
    budget = project.monthly_budget_micros
    rules = session.scalars(
        select(AlertRule).where(
            AlertRule.project_id == project_id,
            AlertRule.environment == env,
            AlertRule.type == AlertType.PROJECT_BUDGET_PERCENT.value,
        )
    ).all()
    changed, next_line = 0, NEVER
    for rule in rules:
        if not rule.enabled or not budget:
            if rule.state == "triggered":
                rule.state, rule.resolved_at = "ok", now
            continue
        line = -(-budget * rule.threshold // 100_00)  # at least this much used: reached
        rearm = line - line * rule.hysteresis_bp // 100_00
        value = show_hundredths(used * 100_00 // budget)
        key = f"budget:{rule.id}:{month.isoformat()}:{used}"
        if rule.state == "ok" and used >= line:
            _set_state(session, rule, True, value, None, now, now, key)
            changed += 1
        elif rule.state == "triggered" and used < rearm:
            _set_state(session, rule, False, value, None, now, now, key)
            changed += 1
        if rule.state == "ok":
            next_line = min(next_line, line)
    _set_alert_at(session, project_id, env, month, next_line)
    return changed


def _set_alert_at(session: Session, project_id: str, env: str, month: date, micros: int) -> None:
    session.execute(
        update(ProjectUsage)
        .where(
            ProjectUsage.project_id == project_id,
            ProjectUsage.environment == env,
            ProjectUsage.month == month,
        )
        .values(alert_at_micros=micros)
    )


def on_project_usage(db: Database, job: outbox.Claimed, now: datetime) -> int:
    """``project_usage_check``: a write took a project's month to its next alert line."""
    p = job.payload
    with db.write() as session:
        month = date.fromisoformat(p["month"])
        return check_project(session, p["project_id"], p["environment"], now, month)


def budget_changed(session: Session, project_id: str, now: datetime) -> None:
    """A project's budget changed: evaluate its rules now, in both environments."""
    for env in ("live", "test"):
        check_project(session, project_id, env, now)


# --- the sweep ----------------------------------------------------------------------------


def sweep(db: Database, now: datetime) -> dict[str, int]:
    """Everything time changes without a write; each organization in its own transaction, a failing
    one logged and left to the next sweep. Returns counts of what it did."""
    done = {"crossed": 0, "refreshed": 0, "expiring": 0, "budgets": 0, "lots": 0}
    with db.read() as session:
        outside = marks.sweep(session, now)
        timed = session.execute(
            select(AlertRule.organization_id, AlertRule.environment)
            .where(
                AlertRule.enabled.is_(True),
                AlertRule.type.in_(
                    [
                        AlertType.PROJECTED_DEPLETION_WITHIN.value,
                        AlertType.PERCENT_REMAINING_BELOW.value,
                    ]
                ),
            )
            .distinct()
        ).all()
        expiring_rules = session.scalars(
            select(AlertRule.id).where(
                AlertRule.type == AlertType.CREDITS_EXPIRING_WITHIN.value,
                or_(AlertRule.enabled.is_(True), AlertRule.state == "triggered"),
            )
        ).all()
        budget_projects = session.execute(
            select(AlertRule.project_id, AlertRule.environment)
            .where(AlertRule.type == AlertType.PROJECT_BUDGET_PERCENT.value)
            .distinct()
        ).all()
    for org, env in sorted({*outside, *timed}):
        try:
            with db.write() as session:
                if (org, env) in timed:
                    done["crossed"] += len(refresh(session, org, env, now))
                    done["refreshed"] += 1
                else:
                    balance = ledger.lock_balance(session, org, env)
                    done["crossed"] += len(marks.cross(session, [balance], now))
        except Exception:
            log.exception("alert sweep of %s (%s) failed; retried at the next sweep", org, env)
    for rule_id in expiring_rules:
        try:
            with db.write() as session:
                done["expiring"] += _check_expiring(session, rule_id, now)
        except Exception:
            log.exception("alert sweep of rule %s failed; retried at the next sweep", rule_id)
    for project_id, env in budget_projects:
        try:
            with db.write() as session:
                done["budgets"] += check_project(session, str(project_id), env, now)
        except Exception:
            log.exception("budget sweep of %s failed; retried at the next sweep", project_id)
    with db.write() as session:
        done["lots"] = publish_expiring_lots(session, now)
    return done


def _check_expiring(session: Session, rule_id: str, now: datetime) -> int:
    rule = session.get(AlertRule, rule_id)
    if rule is None:
        return 0
    expiring = int(
        session.scalar(
            select(func.coalesce(func.sum(Lot.remaining_micros), 0)).where(
                Lot.organization_id == rule.organization_id,
                Lot.environment == rule.environment,
                Lot.remaining_micros > 0,
                Lot.effective_at <= now,
                Lot.expires_at.is_not(None),
                Lot.expires_at > now,
                Lot.expires_at <= now + timedelta(days=rule.threshold),
            )
        )
        or 0
    )
    value = format_credits(expiring)
    key = f"expiring:{rule.id}:{now.isoformat()}"
    if rule.enabled and rule.state == "ok" and expiring > 0:
        _set_state(session, rule, True, value, None, now, now, key)
        return 1
    if rule.state == "triggered" and (expiring == 0 or not rule.enabled):
        _set_state(session, rule, False, value, None, now, now, key)
        return 1
    return 0


def publish_expiring_lots(session: Session, now: datetime, limit: int = 1000) -> int:
    """Publish ``credits.expiring`` once per lot with credits left that expires within
    :data:`EXPIRING_NOTICE` (at most ``limit`` per call). Returns how many were published."""
    lots = session.execute(
        select(Lot.id, Lot.organization_id, Lot.environment, Lot.remaining_micros, Lot.expires_at)
        .where(
            Lot.remaining_micros > 0,
            Lot.expires_at.is_not(None),
            Lot.expires_at > now,
            Lot.expires_at <= now + EXPIRING_NOTICE,
            Lot.effective_at <= now,
            ~select(NotificationEvent.id)
            .where(NotificationEvent.source_key == literal("credits.expiring:") + Lot.id)
            .exists(),
        )
        .order_by(Lot.expires_at, Lot.id)
        .limit(limit)
    ).all()
    published = 0
    for lot in lots:
        event = events.publish(
            session,
            "credits.expiring",
            organization_id=lot.organization_id,
            environment=lot.environment,
            data={
                "credits": format_credits(lot.remaining_micros),
                "within_days": EXPIRING_NOTICE.days,
                "lots": [
                    {
                        "lot_id": lot.id,
                        "credits": format_credits(lot.remaining_micros),
                        "expires_at": lot.expires_at,
                    }
                ],
            },
            now=now,
            source_key=f"credits.expiring:{lot.id}",
        )
        published += event is not None
    return published
