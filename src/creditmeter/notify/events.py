"""Publishing an event of the catalog: one row, written with its cause, fanned out at once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from creditmeter.kit.ids import new_id
from creditmeter.notify import catalog, email, webhooks
from creditmeter.notify.models import NotificationEvent


def _insert(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    return dialect_insert(NotificationEvent)


def publish(
    session: Session,
    type_: str,
    *,
    organization_id: str | None,
    environment: str,
    data: dict[str, Any],
    now: datetime,
    occurred_at: datetime | None = None,
    source_key: str | None = None,
) -> NotificationEvent | None:
    """Write one event in the caller's transaction and fan it out (webhook deliveries, e-mails) in
    the same transaction. ``data`` is checked against the type's schema. With a ``source_key``, a
    second publish of the same cause writes nothing and returns None."""
    kind = catalog.event_type(type_)
    row = {
        "id": new_id("evt"),
        "type": type_,
        "version": kind.version,
        "organization_id": organization_id,
        "environment": environment,
        "occurred_at": occurred_at or now,
        "created_at": now,
        "data": catalog.check_data(type_, data),
        "source_key": source_key,
    }
    if source_key is None:
        session.execute(insert(NotificationEvent).values(**row))
    else:
        stmt = (
            _insert(session)
            .values(**row)
            .on_conflict_do_nothing(index_elements=["source_key"])
            .returning(NotificationEvent.id)
        )
        if session.execute(stmt).scalar() is None:  # the same cause published it already
            return None
    event = NotificationEvent(**row)  # as written (transient: no read back)
    webhooks.deliveries_for(session, event, now)
    email.emails_for(session, event, now)
    return event


def envelope(event: NotificationEvent) -> dict[str, Any]:
    """The JSON body sent to webhooks (``catalog.Envelope``)."""
    return catalog.Envelope(
        id=event.id,
        type=event.type,
        version=event.version,
        organization_id=event.organization_id,
        environment=event.environment,
        occurred_at=event.occurred_at,
        created_at=event.created_at,
        data=event.data,
    ).model_dump(mode="json")


def recent(
    session: Session,
    organization_id: str | None,
    environment: str,
    *,
    limit: int = 50,
    after: str | None = None,
    types: list[str] | None = None,
) -> list[NotificationEvent]:
    """Events of an organization (all organizations with None), newest first."""
    q = select(NotificationEvent).where(NotificationEvent.environment == environment)
    if organization_id is not None:
        q = q.where(NotificationEvent.organization_id == organization_id)
    if after is not None:
        q = q.where(NotificationEvent.id < after)
    if types:
        q = q.where(NotificationEvent.type.in_(types))
    return list(session.scalars(q.order_by(NotificationEvent.id.desc()).limit(limit)))
