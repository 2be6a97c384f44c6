"""An endpoint's delivery log: its deliveries with their attempts, redelivering one, replaying the
failed ones, and test events.

A redelivery or a test is a new delivery (kind ``redelivery`` or ``test``) of an existing event,
with its own attempts and schedule; it carries the same ``webhook-id`` (the event id), so a receiver
that de-duplicates on it sees a redelivery of an event it already handled as a duplicate. All of it
runs in the caller's transaction; the endpoint must be enabled.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.notify import events, webhooks
from creditmeter.notify.models import (
    NotificationEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

DEFAULT_TEST_MESSAGE = "A test event from creditmeter: this endpoint receives webhooks."


@dataclass(frozen=True)
class DeliveryView:
    """A delivery as the log shows it: with its event's type and its attempts, first first."""

    delivery: WebhookDelivery
    event_type: str
    attempts: list[WebhookAttempt]


def _views(session: Session, deliveries: list[WebhookDelivery]) -> list[DeliveryView]:
    if not deliveries:
        return []
    ids = [d.id for d in deliveries]
    attempts: dict[str, list[WebhookAttempt]] = defaultdict(list)
    for attempt in session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(ids))
        .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number, WebhookAttempt.id)
    ):
        attempts[attempt.delivery_id].append(attempt)
    rows = session.execute(
        select(NotificationEvent.id, NotificationEvent.type).where(
            NotificationEvent.id.in_({d.event_id for d in deliveries})
        )
    )
    types: dict[str, str] = {row.id: row.type for row in rows}
    return [DeliveryView(d, types.get(d.event_id, ""), attempts[d.id]) for d in deliveries]


def list_deliveries(
    session: Session,
    endpoint_id: str,
    *,
    limit: int,
    after: str | None = None,
    status: str | None = None,
) -> list[DeliveryView]:
    """The endpoint's deliveries, newest first, before the id ``after``, optionally of one status."""
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if after is not None:
        query = query.where(WebhookDelivery.id < after)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    rows = list(session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit)))
    return _views(session, rows)


def get_delivery(session: Session, delivery_id: str, endpoint_id: str | None) -> WebhookDelivery:
    """The delivery, if it is one of ``endpoint_id``'s (None: any endpoint, for the CLI); else 404
    ``webhook_delivery_not_found``."""
    query = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    delivery = session.scalar(query)
    if delivery is None:
        raise webhooks.DeliveryNotFound(f"webhook delivery {delivery_id} not found")
    return delivery


def view(session: Session, delivery: WebhookDelivery) -> DeliveryView:
    return _views(session, [delivery])[0]


def _event(session: Session, event_id: str) -> NotificationEvent:
    event = session.get(NotificationEvent, event_id)
    assert event is not None  # a delivery's event: a foreign key
    return event


def redeliver(
    session: Session, endpoint: WebhookEndpoint, delivery: WebhookDelivery, now: datetime
) -> WebhookDelivery:
    """A new delivery (kind ``redelivery``) of ``delivery``'s event to ``endpoint``, due now."""
    assert delivery.endpoint_id == endpoint.id
    event = _event(session, delivery.event_id)
    return webhooks.queue_delivery(session, endpoint, event, webhooks.REDELIVERY, now)


def replay_failed(
    session: Session, endpoint: WebhookEndpoint, since: datetime | None, now: datetime
) -> list[WebhookDelivery]:
    """Redeliver, once each, the events whose delivery to ``endpoint`` failed (created at or after
    ``since``, if given) and that have no pending or succeeded delivery to it since. Oldest event
    first."""
    query = select(WebhookDelivery.event_id).where(
        WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == webhooks.FAILED
    )
    if since is not None:
        query = query.where(WebhookDelivery.created_at >= since)
    failed = set(session.scalars(query))
    if not failed:
        return []
    settled = set(
        session.scalars(
            select(WebhookDelivery.event_id).where(
                WebhookDelivery.endpoint_id == endpoint.id,
                WebhookDelivery.event_id.in_(failed),
                WebhookDelivery.status.in_([webhooks.PENDING, webhooks.SUCCEEDED]),
            )
        )
    )
    return [
        webhooks.queue_delivery(
            session, endpoint, _event(session, event_id), webhooks.REDELIVERY, now
        )
        for event_id in sorted(failed - settled)
    ]


def send_test(
    session: Session, endpoint: WebhookEndpoint, message: str | None, now: datetime
) -> WebhookDelivery:
    """Publish a ``webhook.test`` event (of the endpoint's organization and environment) and
    deliver it to this endpoint only (kind ``test``), due now."""
    webhooks.require_enabled(endpoint)  # before publishing anything
    event = events.publish(
        session,
        webhooks.TEST_EVENT,
        organization_id=endpoint.organization_id,
        environment=endpoint.environment,
        data={"message": message or DEFAULT_TEST_MESSAGE},
        now=now,
    )
    assert event is not None  # no source key: always written
    return webhooks.queue_delivery(session, endpoint, event, webhooks.TEST, now)
