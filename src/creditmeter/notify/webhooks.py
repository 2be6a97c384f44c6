"""Webhook endpoints and their deliveries (being written)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from creditmeter.notify.models import NotificationEvent


def deliveries_for(session: Session, event: NotificationEvent, now: datetime) -> None:
    """Queue one delivery of ``event`` per matching enabled endpoint (in the caller's transaction)."""
