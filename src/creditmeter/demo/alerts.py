"""Acme AI's alert rules in the demo: two levels of credits left and one of the month's share, a
budget alert on its chatbot project, expiring credits and the paused alert. Its balance is already
below 6,000 credits: that rule fires at once, so
``GET …/notification-events`` and ``GET …/emails`` (kept: no SMTP server in the demo) show them
seconds after ``serve --demo`` starts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.notify import alert_rules, alerts
from creditmeter.notify.models import AlertRule

RULES = (
    alert_rules.RuleInput("credits_below", "6000", name="Below 6,000 credits"),
    alert_rules.RuleInput(
        "credits_below", "1000", name="Nearly out", recipients=("oncall@acme.example",)
    ),
    alert_rules.RuleInput("percent_remaining_below", "20", name="A fifth of the month left"),
    alert_rules.RuleInput(
        "project_budget_percent", "80", name="Chatbot budget at 80 %", project="chatbot"
    ),
    alert_rules.RuleInput("credits_expiring_within", "31", name="Credits expire within a month"),
    alert_rules.RuleInput("organization_paused", None, name="Paused"),
)


def seed_alerts(session: Session, organization_id: str, now: datetime) -> None:
    """Add the rules once (kept between runs) and evaluate them."""
    if session.scalar(select(AlertRule.id).where(AlertRule.organization_id == organization_id)):
        return
    for rule in RULES:
        created = alert_rules.create(session, organization_id, "live", rule, now)
        if created.project_id:
            alerts.check_project(session, created.project_id, "live", now)
    alerts.refresh(session, organization_id, "live", now)
