"""An event's cause publishes it once: a second publish with the same source key writes nothing,
fans nothing out and returns None, on both databases."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.notify import events
from creditmeter.notify.models import NotificationEvent


def test_a_second_publish_of_the_same_cause_writes_nothing(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    data = {"available_credits": "0", "at": clock.now()}
    with db.write() as s:
        first = events.publish(
            s, "balance.depleted", organization_id=org, environment="live", data=data,
            now=clock.now(), source_key="cause-1",
        )  # fmt: skip
        again = events.publish(
            s, "balance.depleted", organization_id=org, environment="live", data=data,
            now=clock.now(), source_key="cause-1",
        )  # fmt: skip
    assert first is not None
    assert again is None
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(NotificationEvent)) == 1
