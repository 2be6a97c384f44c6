"""E-mail notifications (being written)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from creditmeter.notify.models import NotificationEvent


def emails_for(session: Session, event: NotificationEvent, now: datetime) -> None:
    """Queue the e-mails of ``event`` for the members who want it (in the caller's transaction)."""
