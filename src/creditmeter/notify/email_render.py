"""The subject and bodies of an event's e-mail, rendered from ``templates/`` (Jinja2: ``<type>.txt``
and ``<type>.html`` per e-mailed type, extending ``_layout``) with the event's data as published.

Amounts in the data are decimal strings and are shown as given; timestamps as ``YYYY-MM-DD HH:MM
UTC``. HTML is autoescaped. A template that fails renders the generic message (the data as a list)
instead: an e-mail never fails the change that caused it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import jinja2

from creditmeter.notify import preferences
from creditmeter.notify.models import NotificationEvent

log = logging.getLogger("creditmeter.notify.email")

ALERT_TYPES = frozenset({"alert.triggered", "alert.resolved"})
SUBJECT_MAX = 300


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


#: Each e-mailed type's subject (a Jinja expression over the template context).
SUBJECTS: dict[str, str] = {
    "alert.triggered": "Alert: {{ alert_label }} ({{ data.value }}{{ unit }}; "
    "threshold {{ data.alert.threshold }}{{ unit }})",
    "alert.resolved": "Resolved: {{ alert_label }} ({{ data.value }}{{ unit }})",
    "organization.paused": "operations paused: no credits left",
    "payment.failed": "a payment of {{ data.amount }} {{ data.currency }} failed",
    "invoice.issued": "invoice {{ data.number }} ({{ data.total }} {{ data.currency }})",
    "invoice.past_due": "invoice {{ data.number }} is past due "
    "({{ data.amount_due }} {{ data.currency }})",
    "organization.suspended": "suspended for non-payment",
    "purchase.failed": "a purchase of {{ data.credits }} credits failed",
    "auto_top_up.failed": "auto top-up failed{{ ' and was turned off' if data.disabled }}",
    "credits.expiring": "{{ data.credits }} credits expire within {{ data.within_days }} days",
}

#: Alert type -> (what is measured, unit shown after values, what to do about it).
_ALERTS: dict[str, tuple[str, str, str]] = {
    "credits_below": ("available credits", " credits", "buy"),
    "percent_remaining_below": ("credits remaining of this cycle's grants", "%", "buy"),
    "projected_depletion_within": (
        "days until credits run out at the current rate",
        " days",
        "buy",
    ),
    "credits_expiring_within": ("credits expiring soon (days until they expire)", " days", "use"),
    "project_budget_percent": ("share of the project's monthly budget used", "%", "budget"),
    "organization_paused": ("available credits (the organization is paused at zero)", "", "buy"),
}


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("creditmeter.notify", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["when"] = _when
    return env


def _when(value: object) -> str:
    """An RFC 3339 timestamp of the data as ``2026-02-01 00:00 UTC``."""
    if not isinstance(value, str):
        return "" if value is None else str(value)
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


def template_name(type_: str, suffix: str) -> str:
    return f"{type_.replace('.', '_')}.{suffix}"


def one_line(text: str) -> str:
    return " ".join(text.split())[:SUBJECT_MAX]


def render(
    event: NotificationEvent,
    org_name: str,
    reason: str,
    unsubscribe_url: str | None,
    public_url: str,
) -> Rendered:
    """The subject and bodies of ``event``'s message. A template that fails renders the generic
    message instead (logged): an e-mail never fails the change that caused it."""
    context = _context(event, org_name, reason, unsubscribe_url, public_url)
    env = _environment()
    try:
        subject = env.from_string(SUBJECTS[event.type]).render(context)
        text = env.get_template(template_name(event.type, "txt")).render(context)
        html = env.get_template(template_name(event.type, "html")).render(context)
    except Exception:  # a template bug: the generic message still tells them
        log.exception("the e-mail template of %s failed; sending the generic message", event.type)
        subject = event.type
        text = env.get_template("_generic.txt").render(context)
        html = env.get_template("_generic.html").render(context)
    prefix = "[test] " if event.environment == "test" else ""
    return Rendered(one_line(f"{prefix}{org_name}: {subject}"), text, html)


def _context(
    event: NotificationEvent,
    org_name: str,
    reason: str,
    unsubscribe_url: str | None,
    public_url: str,
) -> dict[str, Any]:
    org_url = f"{public_url}/v1/organizations/{event.organization_id}"
    context: dict[str, Any] = {
        "org_name": org_name,
        "organization_id": event.organization_id,
        "environment": event.environment,
        "test": event.environment == "test",
        "event": {"id": event.id, "type": event.type, "occurred_at": event.occurred_at},
        "data": event.data,
        "public_url": public_url,
        "org_url": org_url,
        "reason": reason,
        "unsubscribe_url": unsubscribe_url,
    }
    if event.type in ALERT_TYPES:
        alert = event.data.get("alert") or {}
        what, unit, advice = _ALERTS.get(str(alert.get("type")), ("value", "", "buy"))
        context |= {
            "alert_label": alert.get("name") or alert.get("type") or "alert",
            "what": what,
            "unit": unit,
            "advice": advice,
        }
    return context


def emailed_types_without_templates(types: Iterable[str] | None = None) -> list[str]:
    """E-mailed types missing a subject or a template (a test keeps this empty)."""
    names = preferences.emailed_types() if types is None else list(types)
    templates = set(_environment().list_templates())
    return [
        t
        for t in names
        if t not in SUBJECTS
        or template_name(t, "txt") not in templates
        or template_name(t, "html") not in templates
    ]
