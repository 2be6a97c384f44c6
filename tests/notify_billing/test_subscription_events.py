"""Every change of a subscription publishes one ``subscription.updated``, on SQLite and
PostgreSQL: created, upgraded, a downgrade scheduled, withdrawn and scheduled again, applied by
the cycle close (run twice), a cancellation scheduled and taking effect, a new subscription after
it; asking for what is already so publishes nothing. A suspended organization's cycle is withheld
and released when it pays, and a plan that cancels after dunning says why."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from creditmeter import billing
from creditmeter.billing import cycle
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.plans import load_catalog
from creditmeter.billing.subscriptions import SubscriptionRequest
from creditmeter.kit.db import Database
from tests.conftest import utc
from tests.integration import test_suspension as story
from tests.notify_billing.events import data, published

CATALOG = load_catalog()
MakeOrg = Callable[..., str]


def put(db: Database, org: str, plan: str, at: datetime) -> None:
    with db.write() as session:
        subs.subscribe(session, CATALOG, org, "live", SubscriptionRequest(plan), at)


def cancel(db: Database, org: str, at: datetime) -> None:
    with db.write() as session:
        subs.cancel(session, CATALOG, org, "live", at)


def close(db: Database, at: datetime) -> None:
    results = cycle.run_due(db, at, catalog=CATALOG, charge=lambda *_: None)
    assert all(r.ok for r in results), results


def changes(db: Database, org: str) -> list[tuple[Any, ...]]:
    return [
        (
            e.data["change"],
            e.data["plan"],
            e.data["previous_plan"],
            e.data["status"],
            e.data["effective_at"],
            e.occurred_at,
        )
        for e in published(db, "subscription.updated", org)
    ]


def test_each_plan_change_publishes_subscription_updated_once(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org("Changing Co")
    put(db, org, "standard", utc(2026, 1, 1))
    put(db, org, "standard", utc(2026, 1, 2))  # the same plan: nothing changes
    put(db, org, "professional", utc(2026, 1, 10))
    put(db, org, "standard", utc(2026, 1, 12))
    put(db, org, "standard", utc(2026, 1, 12, 1))  # the same downgrade again: nothing new
    put(db, org, "professional", utc(2026, 1, 13))  # withdraws it
    put(db, org, "standard", utc(2026, 1, 14))
    close(db, utc(2026, 2, 1))
    close(db, utc(2026, 2, 1, 0, 5))  # again: nothing
    cancel(db, org, utc(2026, 2, 10))
    cancel(db, org, utc(2026, 2, 11))  # twice is once
    close(db, utc(2026, 3, 1))
    put(db, org, "professional", utc(2026, 3, 5))

    feb, mar = "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"
    assert changes(db, org) == [
        ("created", "standard", None, "active", "2026-01-01T00:00:00Z", utc(2026, 1, 1)),
        ("upgraded", "professional", "standard", "active", "2026-01-10T00:00:00Z", utc(2026, 1, 10)),
        ("downgrade_scheduled", "standard", "professional", "active", feb, utc(2026, 1, 12)),
        ("pending_change_withdrawn", "professional", None, "active", "2026-01-13T00:00:00Z",
         utc(2026, 1, 13)),
        ("downgrade_scheduled", "standard", "professional", "active", feb, utc(2026, 1, 14)),
        ("downgraded", "standard", "professional", "active", feb, utc(2026, 2, 1)),
        ("cancellation_scheduled", "standard", None, "active", mar, utc(2026, 2, 10)),
        ("cancelled", "standard", None, "canceled", mar, utc(2026, 3, 1)),
        ("created", "professional", "standard", "active", "2026-03-05T00:00:00Z", utc(2026, 3, 5)),
    ]  # fmt: skip
    ids = {d["subscription_id"] for d in data(db, "subscription.updated", org)}
    assert len(ids) == 1
    assert all(d["reason"] is None for d in data(db, "subscription.updated", org))


def test_a_suspended_cycle_is_withheld_then_released_and_cancel_after_dunning_says_why(
    db: Database, make_org: MakeOrg, tmp_path: Path
) -> None:
    source = (Path(billing.__file__).parent / "default_plans.toml").read_text()
    plans = tmp_path / "plans.toml"  # the first plan, standard, cancels after dunning
    plans.write_text(
        source.replace("cancel_after_dunning = false", "cancel_after_dunning = true", 1)
    )
    strict_plans = load_catalog(str(plans))
    strict, lenient = make_org("Strict"), make_org("Lenient")
    story.subscribe(db, strict, "standard", utc(2026, 1, 1), strict_plans)
    story.subscribe(db, lenient, "standard", utc(2026, 1, 1))
    story.suspend(db, strict, lenient, catalog=strict_plans)

    [why] = [c for c in published(db, "subscription.updated", strict) if c.data["reason"]]
    assert (why.data["change"], why.data["effective_at"]) == (
        "cancellation_scheduled",
        "2026-03-01T00:00:00Z",
    )
    assert why.occurred_at == utc(2026, 2, 6, 0, 1)
    assert "INV-2026-00000" in why.data["reason"]
    assert "dunning" in why.data["reason"]

    story.close(db, utc(2026, 3, 1))
    story.close(db, utc(2026, 3, 1, 0, 5))
    story.pay_up(db, lenient, utc(2026, 3, 11))
    story.pay_up(db, strict, utc(2026, 3, 11))
    assert [c[0] for c in changes(db, strict)] == ["created", "cancellation_scheduled", "cancelled"]
    assert [c[0] for c in changes(db, lenient)] == [
        "created",
        "allocation_withheld",
        "allocation_released",
    ]
    withheld, released = published(db, "subscription.updated", lenient)[1:]
    assert (withheld.occurred_at, withheld.data["effective_at"]) == (
        utc(2026, 3, 1),
        "2026-03-01T00:00:00Z",
    )
    assert "suspended for non-payment" in withheld.data["reason"]
    assert released.occurred_at == utc(2026, 3, 11)
    assert released.data["reason"] == "the suspension ended: the rest of 2026-03 is allocated"
    [lot] = [
        d for d in data(db, "credits.granted", lenient) if d["effective_at"].startswith("2026-03")
    ]
    assert lot["credits"] == "677.419355"
