"""An organization's "now": its test clock's time while it is attached to one, real time otherwise.

Every billing action of an organization is dated by this time: subscriptions, purchases, paying
and voiding invoices, refunds, payment methods, operator grants and reversals with their credit
notes. A module at the bottom of billing (its tables and ``kit.clock`` only), so any billing
service can ask it without importing ``test_clocks``, which runs closes and dunning.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.billing.models import TestClock, TestClockAttachment
from creditmeter.kit import clock


def now_for(session: Session, organization_id: str) -> datetime:
    """ "Now" for ``organization_id``: its test clock's frozen time when it is attached to one, else
    real time (``kit.clock.now()``, which tests can freeze). One primary-key read."""
    frozen = session.scalar(
        select(TestClock.frozen_time)
        .join(TestClockAttachment, TestClockAttachment.test_clock_id == TestClock.id)
        .where(TestClockAttachment.organization_id == organization_id)
    )
    return clock.now() if frozen is None else frozen
