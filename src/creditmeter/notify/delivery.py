"""Sending a webhook delivery: one attempt per ``webhook_delivery`` job, its outcome recorded and the
next attempt scheduled in one write transaction.

:func:`run_delivery` is the worker's handler. It reads what to send (one read transaction), checks
the destination and makes the HTTP request **outside any transaction**, then records the attempt,
the delivery's new state and, after a failure, the job of the next attempt in one write
transaction. An HTTP failure is a normal outcome (recorded; the handler returns); only an
unexpected error (the database is down) raises, and then the outbox runs the job again.

- **Signed as Standard Webhooks.** Headers ``webhook-id`` (the event id: the same on every attempt
  and redelivery, so receivers de-duplicate on it), ``webhook-timestamp`` (Unix seconds of the
  attempt) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` with the
  endpoint's secret, followed, while a rotation's overlap lasts, by a second one with the previous
  secret (space-separated).
- **At least once.** A job re-run after a crash resends; a job whose attempt was already recorded
  (``payload["attempt"]``) sends nothing again. Receivers must de-duplicate on ``webhook-id``.
- **Schedule.** After a failed attempt the next comes after :data:`SCHEDULE` (0 s, 5 s, 5 min,
  30 min, 2 h, 5 h, then 10 h), each ±10 % (jitter), or later when the answer's ``Retry-After``
  asks for later (at most 24 h). After :data:`SCHEDULE`'s 12 attempts (about 3 days), or when the
  next attempt would come more than :data:`MAX_SPAN` after the delivery was created, it is failed.
- **Disabling.** ``410 Gone`` disables the endpoint at once. An endpoint whose every attempt failed
  for :data:`DISABLE_AFTER` (``failing_since``) is disabled at its next failure, and its
  organization's owners and admins are e-mailed. Either way its pending deliveries are failed.
- **Destination.** Redirects are never followed; the host is resolved and checked again before
  every attempt and the request goes to an address just checked. The HTTP attempt itself (headers,
  signing, pinning, bounded reads) is ``notify.webhook_http``.
"""

from __future__ import annotations

import html
import logging
import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.config import Settings
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.notify import email as notify_email
from creditmeter.notify import webhook_http, webhooks
from creditmeter.notify.models import (
    NotificationEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from creditmeter.orgs.models import Member
from creditmeter.orgs.service import Role

log = logging.getLogger("creditmeter.webhooks")

WEBHOOK_DELIVERY: Final = webhooks.WEBHOOK_DELIVERY
#: The wait before attempt ``n + 1`` after ``n`` attempts (index ``n``): 12 attempts in all.
SCHEDULE: Final = (
    timedelta(0),
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    *[timedelta(hours=10)] * 6,
)
JITTER: Final = 0.10
#: No attempt is scheduled later than this after the delivery was created (a long Retry-After).
MAX_SPAN: Final = timedelta(days=3, hours=12)
RETRY_AFTER_CAP: Final = timedelta(hours=24)
#: An endpoint failing for this long is disabled at its next failure.
DISABLE_AFTER: Final = timedelta(days=5)

_rng = random.Random()  # noqa: S311 - jitter, not a secret


def retry_after(value: str | None, now: datetime) -> timedelta | None:
    """A ``Retry-After`` header as a wait: delay-seconds or an HTTP date (None: absent or unreadable)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=min(int(value[:12]), 10**9))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


def next_wait(attempts: int, asked: timedelta | None) -> timedelta | None:
    """The wait before the next attempt after ``attempts`` attempts, None when the schedule is over:
    :data:`SCHEDULE` ±10 %, or ``asked`` (a Retry-After, at most 24 h) when that is later."""
    if attempts >= len(SCHEDULE):
        return None
    wait = SCHEDULE[attempts] * _rng.uniform(1 - JITTER, 1 + JITTER)
    if asked is not None and asked > wait:
        wait = min(asked, RETRY_AFTER_CAP)
    return wait


def run_delivery(db: Database, settings: Settings, job: outbox.Claimed) -> str:
    """Make the attempt ``job`` stands for and record it (see the module note). Returns what
    happened, in words, for the worker's log."""
    delivery_id = str(job.payload["delivery_id"])
    expected = job.payload.get("attempt")
    with db.read() as session:
        plan = _plan(session, delivery_id, expected, clock.now())
    if isinstance(plan, str):
        if plan == "endpoint disabled":
            return _cancel(db, delivery_id)
        return plan
    result = webhook_http.send(plan, settings)
    return _record(db, plan, result)


def _plan(
    session: Session, delivery_id: str, expected: object, now: datetime
) -> webhook_http.Plan | str:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        return "skipped: the delivery no longer exists (its endpoint was deleted)"
    number = expected if isinstance(expected, int) else delivery.attempts + 1
    if delivery.status != webhooks.PENDING:
        return f"skipped: the delivery is {delivery.status}"
    if delivery.attempts >= number:
        return f"skipped: attempt {number} was recorded already"
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    assert endpoint is not None
    if endpoint.status != webhooks.ENABLED:
        return "endpoint disabled"
    event = session.get(NotificationEvent, delivery.event_id)
    assert event is not None
    return webhook_http.Plan(
        delivery_id=delivery.id,
        endpoint_id=endpoint.id,
        number=number,
        url=endpoint.url,
        event_id=event.id,
        body=webhook_http.body_of(event),
        secrets=tuple(webhooks.signing_secrets(endpoint, now)),
    )


def _cancel(db: Database, delivery_id: str) -> str:
    """End a pending delivery of an endpoint disabled after it was queued."""
    with db.write() as session:
        delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None or delivery.status != webhooks.PENDING:
            return "skipped: the delivery is no longer pending"
        delivery.status = webhooks.CANCELLED
        delivery.next_attempt_at = None
        delivery.updated_at = clock.now()
    return "cancelled: the endpoint is disabled"


def _record(db: Database, plan: webhook_http.Plan, result: webhook_http.Result) -> str:
    """Record the attempt, the delivery's new state and the next attempt's job, in one write
    transaction; the endpoint is locked first (then the delivery), as ``webhooks.disable`` does."""
    with db.write() as session:
        now = clock.now()
        endpoint = session.get(WebhookEndpoint, plan.endpoint_id, with_for_update=True)
        delivery = session.get(WebhookDelivery, plan.delivery_id, with_for_update=True)
        if endpoint is None or delivery is None:
            return "sent, not recorded: the endpoint was deleted meanwhile"
        if delivery.attempts >= plan.number:
            return f"sent, not recorded: attempt {plan.number} was recorded already"
        session.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                number=plan.number,
                started_at=result.started_at,
                status_code=result.status_code,
                latency_ms=result.latency_ms,
                succeeded=result.succeeded,
                response_excerpt=result.excerpt,
                error=result.error,
            )
        )
        delivery.attempts = plan.number
        delivery.last_status_code = result.status_code
        delivery.updated_at = now
        if delivery.status != webhooks.PENDING:  # ended while the request was on its way
            return f"attempt {plan.number} recorded; the delivery is {delivery.status}"
        if result.succeeded:
            delivery.status = webhooks.SUCCEEDED
            delivery.next_attempt_at = None
            endpoint.failing_since = None
            return f"succeeded: HTTP {result.status_code}"
        return _after_failure(session, endpoint, delivery, result, now)


def _after_failure(
    session: Session,
    endpoint: WebhookEndpoint,
    delivery: WebhookDelivery,
    result: webhook_http.Result,
    now: datetime,
) -> str:
    what = result.error or f"HTTP {result.status_code}"
    if endpoint.failing_since is None:
        endpoint.failing_since = result.started_at
    if result.status_code == 410:
        webhooks.disable(
            session, endpoint, "the endpoint answered 410 Gone", now, ending=webhooks.FAILED
        )
        log.warning("webhook endpoint %s answered 410 Gone: disabled", endpoint.id)
        return "failed: 410 Gone, the endpoint is disabled"
    if now - endpoint.failing_since >= DISABLE_AFTER:
        since = endpoint.failing_since
        webhooks.disable(
            session,
            endpoint,
            f"every attempt failed for {DISABLE_AFTER.days} days (since {since:%Y-%m-%d %H:%M} "
            f"UTC; last: {what})",
            now,
            ending=webhooks.FAILED,
        )
        _tell_admins(session, endpoint, since, what, now)
        return f"failed: {what}; the endpoint failed for {DISABLE_AFTER.days} days and is disabled"
    wait = next_wait(delivery.attempts, retry_after(result.retry_after, now))
    run_at = now + wait if wait is not None else None
    if run_at is None or run_at > delivery.created_at + MAX_SPAN:
        delivery.status = webhooks.FAILED
        delivery.next_attempt_at = None
        return f"failed: {what}; no attempt left"
    delivery.next_attempt_at = run_at
    event_org = session.scalar(
        select(NotificationEvent.organization_id).where(NotificationEvent.id == delivery.event_id)
    )
    outbox.enqueue(
        session,
        [
            webhooks.delivery_job(
                delivery.id, delivery.attempts + 1, run_at, event_org, endpoint.environment
            )
        ],
        now=now,
    )
    return f"failed: {what}; attempt {delivery.attempts + 1} at {run_at.isoformat()}"


def _tell_admins(
    session: Session,
    endpoint: WebhookEndpoint,
    since: datetime,
    what: str,
    now: datetime,
) -> None:
    """E-mail the organization's owners and admins that its endpoint was disabled (an operator-wide
    endpoint has none: a warning in the log)."""
    if endpoint.organization_id is None:
        log.warning(
            "operator-wide webhook endpoint %s (%s) failed since %s and is disabled",
            endpoint.id,
            endpoint.url,
            since.isoformat(),
        )
        return
    to = list(
        session.scalars(
            select(Member.email).where(
                Member.organization_id == endpoint.organization_id,
                Member.role.in_([Role.OWNER.value, Role.ADMIN.value]),
            )
        )
    )
    if not to:
        log.warning("webhook endpoint %s is disabled; its organization has no admin", endpoint.id)
        return
    subject = f"Webhook endpoint disabled: {endpoint.url}"
    text = (
        f"Every delivery to your webhook endpoint {endpoint.url} ({endpoint.id}, "
        f"{endpoint.environment}) has failed since {since:%Y-%m-%d %H:%M} UTC, so creditmeter "
        f"disabled it. The last attempt got: {what}.\n\n"
        "Fix the receiver, then enable the endpoint again (PATCH it with status 'enabled') and "
        "replay the failed deliveries (creditmeter webhooks replay-failed, or redeliver them "
        "through the API)."
    )
    body = "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n"))
    notify_email.queue_direct(
        session,
        organization_id=endpoint.organization_id,
        environment=endpoint.environment,
        to=to,
        subject=subject,
        text=text,
        html=body,
        dedupe_key=f"webhook-disabled:{endpoint.id}:{now.isoformat()}",
        now=now,
    )
