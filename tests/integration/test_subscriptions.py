"""Subscriptions on SQLite and PostgreSQL: the first allocation, upgrades at once, downgrades and
cancellations at the next cycle, every plan credit through the ledger, and the ledger still proves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from creditmeter.billing import subscriptions as subs
from creditmeter.billing.domain import Catalog
from creditmeter.billing.models import PlanAllocation, Subscription
from creditmeter.billing.plans import load_catalog, parse_catalog
from creditmeter.billing.subscriptions import SubscriptionRequest
from creditmeter.errors import CreditmeterError
from creditmeter.kit.credits import MICROS_PER_CREDIT
from creditmeter.kit.db import Database
from creditmeter.ledger.models import Lot
from creditmeter.ledger.verify import verify
from creditmeter.models import metadata
from tests.conftest import utc
from tests.integration.test_concurrency import in_parallel

C = MICROS_PER_CREDIT
CATALOG = load_catalog()
JAN_16 = utc(2026, 1, 16)


def put(
    db: Database,
    org: str,
    plan: str,
    at: datetime,
    catalog: Catalog = CATALOG,
    env: str = "live",
    **extra: Any,
) -> subs.SubscriptionState:
    with db.write() as session:
        return subs.subscribe(session, catalog, org, env, SubscriptionRequest(plan, **extra), at)


def lots(db: Database, org: str, env: str = "live") -> list[tuple[str, int, datetime | None]]:
    with db.read() as session:
        rows = session.execute(
            select(Lot.source, Lot.amount_micros, Lot.expires_at)
            .where(Lot.organization_id == org, Lot.environment == env)
            .order_by(Lot.created_at, Lot.id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def fees(db: Database, org: str) -> list[tuple[str, str, int, int]]:
    with db.read() as session:
        rows = session.execute(
            select(
                PlanAllocation.kind,
                PlanAllocation.plan,
                PlanAllocation.credits_micros,
                PlanAllocation.fee_minor,
            )
            .where(PlanAllocation.organization_id == org)
            .order_by(PlanAllocation.id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def assert_clean(db: Database) -> None:
    with db.read() as session:
        assert verify(session) == []


def test_a_standard_organization_subscribing_on_january_16_gets_the_rest_of_january(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    state = put(db, org, "standard", JAN_16)
    # 16 of January's 31 days are left: 1,000 x 16/31 credits and USD 49.00 x 16/31.
    assert lots(db, org) == [("plan", 516_129_032, utc(2026, 2, 1))]
    assert fees(db, org) == [("initial", "standard", 516_129_032, 2529)]
    sub = state.subscription
    assert (sub.status, sub.plan, sub.allocated_through) == ("active", "standard", utc(2026, 2, 1))
    assert state.period.label == "2026-01"
    assert [a.kind for a in state.allocations] == ["initial"]
    assert_clean(db)


def test_subscribing_at_the_first_instant_of_a_cycle_allocates_it_whole(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    put(db, org, "professional", utc(2026, 1, 1))
    # The professional lot for January is spendable through April and expires on May 1.
    assert lots(db, org) == [("plan", 5000 * C, utc(2026, 5, 1))]
    assert fees(db, org) == [("initial", "professional", 5000 * C, 19900)]
    with db.read() as session:
        lot = session.scalars(select(Lot).where(Lot.organization_id == org)).one()
    assert lot.cost_basis_micros == 39_800  # USD 199.00 / 5,000 credits
    assert lot.currency == "USD"


def test_an_upgrade_takes_effect_at_once_with_the_prorated_difference(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    put(db, org, "standard", utc(2026, 1, 1))
    state = put(db, org, "professional", JAN_16)
    assert state.subscription.plan == "professional"
    assert state.terms.allocation_micros == 5000 * C
    assert lots(db, org) == [
        ("plan", 1000 * C, utc(2026, 2, 1)),  # January's standard lot keeps its expiry
        ("plan", 2_064_516_129, utc(2026, 5, 1)),  # 4,000 x 16/31, by the professional rule
    ]
    assert fees(db, org) == [
        ("initial", "standard", 1000 * C, 4900),
        ("upgrade", "professional", 2_064_516_129, 7742),  # USD 150.00 x 16/31
    ]
    with db.read() as session:
        sequences = session.scalars(
            select(PlanAllocation.sequence).order_by(PlanAllocation.sequence)
        ).all()
    assert sequences == [0, 1]
    assert_clean(db)


def test_a_downgrade_waits_for_the_next_cycle_and_asking_again_withdraws_it(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    put(db, org, "professional", utc(2026, 1, 1))
    state = put(db, org, "standard", JAN_16)
    sub = state.subscription
    assert sub.plan == "professional"  # this cycle is untouched
    assert (sub.pending_action, sub.pending_effective_at) == ("change", utc(2026, 2, 1))
    assert state.pending_terms is not None
    assert state.pending_terms.plan == "standard"
    assert len(lots(db, org)) == 1
    again = put(db, org, "professional", utc(2026, 1, 20))
    assert again.subscription.pending_action is None
    assert again.pending_terms is None
    assert len(lots(db, org)) == 1
    assert fees(db, org) == [("initial", "professional", 5000 * C, 19900)]


def test_a_cancellation_waits_for_the_next_cycle_and_twice_is_once(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    put(db, org, "standard", utc(2026, 1, 1))
    for at in (JAN_16, utc(2026, 1, 17)):
        with db.write() as session:
            state = subs.cancel(session, CATALOG, org, "live", at)
        sub = state.subscription
        assert (sub.status, sub.pending_action) == ("active", "cancel")
        assert sub.pending_effective_at == utc(2026, 2, 1)
        assert sub.updated_at == JAN_16
    assert len(lots(db, org)) == 1
    # Putting the plan again withdraws the cancellation.
    assert put(db, org, "standard", utc(2026, 1, 18)).subscription.pending_action is None


def test_enterprise_terms_are_set_per_subscription(
    db: Database, make_org: Callable[..., str]
) -> None:
    never, six = make_org("Never Inc"), make_org("Six Inc")
    put(db, never, "enterprise", utc(2026, 1, 1), allocation_micros=20_000 * C)
    assert lots(db, never) == [("plan", 20_000 * C, None)]  # no rollover limit: never expires
    put(db, six, "enterprise", utc(2026, 1, 1), allocation_micros=20_000 * C, rollover=6)
    assert lots(db, six) == [("plan", 20_000 * C, utc(2026, 8, 1))]
    # More credits for the same fee is an upgrade: the prorated 10,000 extra, at once.
    state = put(db, never, "enterprise", JAN_16, allocation_micros=30_000 * C)
    assert state.terms.allocation_micros == 30_000 * C
    assert lots(db, never)[1] == ("plan", 5_161_290_323, None)
    assert fees(db, never)[1] == ("upgrade", "enterprise", 5_161_290_323, 0)
    assert_clean(db)


@pytest.mark.parametrize(
    ("plan", "extra", "code"),
    [
        ("gold", {}, "unknown_plan"),
        ("standard", {"allocation_micros": 5 * C}, "invalid_terms"),
        ("professional", {"rollover": 2}, "invalid_terms"),
        ("enterprise", {}, "invalid_terms"),
    ],
)
def test_bad_terms_change_nothing(
    db: Database, make_org: Callable[..., str], plan: str, extra: dict[str, Any], code: str
) -> None:
    org = make_org()
    with pytest.raises(CreditmeterError) as caught:
        put(db, org, plan, JAN_16, **extra)
    assert (caught.value.status_code, caught.value.code) == (422, code)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Subscription)) == 0
    assert lots(db, org) == []


def test_after_a_boundary_plan_changes_wait_for_the_cycle_close(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    put(db, org, "standard", JAN_16)
    with pytest.raises(subs.CycleClosePending):
        put(db, org, "professional", utc(2026, 2, 2))
    with pytest.raises(subs.CycleClosePending), db.write() as session:
        subs.cancel(session, CATALOG, org, "live", utc(2026, 2, 2))
    assert len(lots(db, org)) == 1
    with db.read() as session:
        assert session.scalars(select(Subscription.plan)).one() == "standard"


def test_a_new_subscription_after_a_cancellation_took_effect(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    put(db, org, "standard", utc(2026, 1, 1))
    with db.write() as session:  # what the cycle close will do on February 1
        sub = session.scalars(select(Subscription)).one()
        sub.status, sub.canceled_at = "canceled", utc(2026, 2, 1)
    state = put(db, org, "professional", utc(2026, 3, 1))
    assert (state.subscription.status, state.subscription.plan) == ("active", "professional")
    assert state.subscription.allocated_through == utc(2026, 4, 1)
    assert state.subscription.canceled_at is None
    assert lots(db, org)[-1] == ("plan", 5000 * C, utc(2026, 7, 1))


def test_live_and_test_subscriptions_are_separate(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    put(db, org, "professional", utc(2026, 1, 1), env="test")
    put(db, org, "standard", utc(2026, 1, 1))
    assert lots(db, org, "test") == [("plan", 5000 * C, utc(2026, 5, 1))]
    assert lots(db, org, "live") == [("plan", 1000 * C, utc(2026, 2, 1))]
    with db.read() as session:
        assert subs.get(session, CATALOG, org, "test", JAN_16).subscription.plan == "professional"
    assert_clean(db)


def test_cycles_follow_the_billing_time_zone(db: Database, make_org: Callable[..., str]) -> None:
    text = resources.files("creditmeter.billing").joinpath("default_plans.toml").read_text()
    berlin = parse_catalog(
        text.replace('time_zone = "UTC"', 'time_zone = "Europe/Berlin"'), "berlin"
    )
    org = make_org()
    # 23:30 UTC on 31 December is 00:30 on 1 January in Berlin: January's whole allocation.
    state = put(db, org, "standard", utc(2025, 12, 31, 23, 30), catalog=berlin)
    assert state.period.label == "2026-01"
    assert lots(db, org) == [("plan", 999_327_957, utc(2026, 1, 31, 23))]


def test_getting_a_missing_subscription_is_a_404(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    with pytest.raises(subs.SubscriptionNotFound), db.read() as session:
        subs.get(session, CATALOG, org, "live", JAN_16)


def test_the_migration_matches_the_billing_models(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    billing = [d for d in diff if "subscriptions" in repr(d) or "plan_allocations" in repr(d)]
    assert billing == []


def test_concurrent_plan_changes_of_one_organization_serialize(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    # Four first subscriptions at once: one allocates, the others find it and change nothing.
    in_parallel([lambda: put(db, org, "standard", JAN_16) for _ in range(4)])
    assert fees(db, org) == [("initial", "standard", 516_129_032, 2529)]
    # Four identical upgrades at once: exactly one prorated difference.
    in_parallel([lambda: put(db, org, "professional", utc(2026, 1, 20)) for _ in range(4)])
    assert [f[0] for f in fees(db, org)] == ["initial", "upgrade"]
    assert len(lots(db, org)) == 2
    assert_clean(db)
