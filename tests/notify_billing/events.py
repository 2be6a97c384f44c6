"""Reading the catalog events billing published (``notification_events``), for the tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from creditmeter.kit.db import Database
from creditmeter.notify import catalog
from creditmeter.notify.models import NotificationEvent


def published(
    db: Database, type_: str | None = None, org: str | None = None
) -> list[NotificationEvent]:
    """The events written so far (of one type, of one organization), oldest first; each one's
    ``data`` validates against its type's schema."""
    with db.read() as session:
        query = select(NotificationEvent).order_by(NotificationEvent.id)
        if type_ is not None:
            query = query.where(NotificationEvent.type == type_)
        if org is not None:
            query = query.where(NotificationEvent.organization_id == org)
        rows = list(session.scalars(query))
    for row in rows:
        assert catalog.check_data(row.type, row.data) == row.data
        assert row.version == catalog.event_type(row.type).version
    return rows


def data(db: Database, type_: str, org: str | None = None) -> list[dict[str, Any]]:
    return [row.data for row in published(db, type_, org)]


def one(db: Database, type_: str, org: str) -> NotificationEvent:
    """The one event of ``type_`` of ``org`` (exactly once)."""
    rows = published(db, type_, org)
    assert len(rows) == 1, [r.data for r in rows]
    return rows[0]


def keys(db: Database) -> list[str | None]:
    return [row.source_key for row in published(db)]
