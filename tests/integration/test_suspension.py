"""A suspended organization gets no new plan credits and owes no new plan fee, on SQLite and
PostgreSQL (docs/billing.md, "Suspended organizations").

Blue Yonder subscribes to Standard (1,000 credits, USD 49.00 a month) on 1 January with no card:
January's invoice is declined at the February close, retried on 2, 4 and 6 February, and then past
due; Blue Yonder is suspended. February's credits were allocated on 1 February, before the
suspension, and are billed on February's invoice. On 1 March the close withholds March's credits
and fee and records it. On 11 March Blue Yonder pays: it is active again, and the rest of March is
allocated at once (21 of 31 days: 677.419355 credits, USD 33.19), billed on March's invoice. A
month spent suspended from its first day has no plan fee; a withheld month that ended is never
allocated later. The close stays set-based, idempotent and resumable.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from creditmeter import billing
from creditmeter.billing import cycle, dunning, suspension
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.cycle import Due
from creditmeter.billing.models import Invoice, PlanAllocation, Subscription, WithheldAllocation
from creditmeter.billing.payments import methods as payment_methods
from creditmeter.billing.payments.provider import AttachedMethod, ChargeResult
from creditmeter.billing.plans import load_catalog
from creditmeter.billing.subscriptions import SubscriptionRequest
from creditmeter.kit.credits import MICROS_PER_CREDIT as C
from creditmeter.kit.db import Database
from creditmeter.orgs import service as orgs
from tests.conftest import utc
from tests.integration.test_cycle_close import assert_clean, invoices_of, lots, state

CATALOG = load_catalog()
MakeOrg = Callable[..., str]


class Processor:
    """A payment provider that approves every charge (the organizations start with no card, so
    nothing reaches it until one is added)."""

    name = "sandbox"

    def charge(self, amount_minor: int, currency: str, *_: Any) -> ChargeResult:
        return ChargeResult("succeeded", amount_minor, currency, "ch_test")


PROCESSOR: Any = Processor()
CHARGE = dunning.charger(PROCESSOR)


def subscribe(db: Database, org: str, plan: str, at: datetime, catalog: Any = CATALOG) -> None:
    with db.write() as session:
        subs.subscribe(session, catalog, org, "live", SubscriptionRequest(plan), at)


def close(db: Database, at: datetime, org: str | None = None, **kw: Any) -> list[Any]:
    kw.setdefault("catalog", CATALOG)
    results = cycle.run_due(db, at, org, charge=CHARGE, **kw)
    assert all(r.ok for r in results), results
    assert_clean(db)
    return results


def suspend(db: Database, *orgs_: str, catalog: Any = CATALOG) -> None:
    """January closed on 1 February (declined: no card), then the retries of 2, 4 and 6 February:
    January's invoice is past due and the organizations suspended."""
    for org in orgs_:
        close(db, utc(2026, 2, 1), org, catalog=catalog)
    for day in (2, 4, 6):
        dunning.run_due(db, PROCESSOR, utc(2026, 2, day, 0, 1))
    for org in orgs_:
        assert status(db, org) == "suspended"


def status(db: Database, org: str) -> str:
    with db.read() as s:
        return orgs.get_organization(s, org).status


def pay_up(db: Database, org: str, at: datetime) -> None:
    """A card, then every past-due invoice paid by hand at ``at``."""
    with db.write() as s:
        card = AttachedMethod(f"pm_{org[-6:]}", "visa", "4242", 12, 2030)
        payment_methods.record_method(s, org, "live", "sandbox", card, True, at)
        past_due = s.scalars(
            select(Invoice.id).where(Invoice.organization_id == org, Invoice.status == "past_due")
        ).all()
    for invoice_id in past_due:
        dunning.pay(db, PROCESSOR, invoice_id, None, at)


def withheld(db: Database, org: str) -> list[tuple[Any, ...]]:
    with db.read() as s:
        rows = s.execute(
            select(
                WithheldAllocation.period_start,
                WithheldAllocation.credits_micros,
                WithheldAllocation.fee_minor,
                WithheldAllocation.expires_at,
                WithheldAllocation.withheld_at,
                WithheldAllocation.released_at,
            )
            .where(WithheldAllocation.organization_id == org)
            .order_by(WithheldAllocation.period_start)
        ).all()
    return [tuple(r) for r in rows]


def plan_lots(db: Database, org: str) -> list[tuple[Any, ...]]:
    return [lot for lot in lots(db, org) if lot[0] == "plan"]


def standard_fee(month: str) -> tuple[Any, ...]:
    return (1, "plan_fee", f"Standard plan, {month} 2026: 1,000 credits", 4900, 1000 * C)


def test_a_suspended_organization_gets_no_plan_credits_and_pays_for_the_rest_of_the_cycle(
    db: Database, make_org: MakeOrg
) -> None:
    blue, steady = make_org("Blue Yonder"), make_org("Steady Co")
    for org in (blue, steady):
        subscribe(db, org, "standard", utc(2026, 1, 1))
    with db.write() as s:  # Steady Co pays by card
        card = AttachedMethod("pm_steady", "visa", "4242", 12, 2030)
        payment_methods.record_method(s, steady, "live", "sandbox", card, True, utc(2026, 1, 1))
    suspend(db, blue)
    close(db, utc(2026, 2, 1), steady)
    assert status(db, steady) == "active"

    # 1 March, both closed in one chunk: Steady Co's March is allocated, Blue Yonder's withheld.
    results = close(db, utc(2026, 3, 1))
    assert {r.due.organization_id: r.allocated_micros for r in results} == {
        blue: 0,
        steady: 1000 * C,
    }
    assert withheld(db, blue) == [
        (utc(2026, 3, 1), 1000 * C, 4900, utc(2026, 4, 1), utc(2026, 3, 1), None)
    ]
    assert withheld(db, steady) == []
    assert [lot[3] for lot in plan_lots(db, blue)] == [utc(2026, 1, 1), utc(2026, 2, 1)]
    with db.read() as s:
        view = subs.get(s, CATALOG, blue, "live", utc(2026, 3, 5))
        assert view.withheld is not None
        assert view.allocations == []
        sub = view.subscription
        assert (sub.status, sub.allocated_through) == ("active", utc(2026, 4, 1))
    # February's invoice still bills February's credits, allocated before the suspension.
    assert [inv["lines"] for inv in invoices_of(db, blue)] == [
        [standard_fee("January")],
        [standard_fee("February")],
    ]

    # 11 March: paid up, active again; the rest of March is allocated at once, and billed.
    pay_up(db, blue, utc(2026, 3, 11))
    assert status(db, blue) == "active"
    [*_, released] = plan_lots(db, blue)
    assert released == ("plan", 677_419_355, 677_419_355, utc(2026, 3, 11), utc(2026, 4, 1))
    [row] = withheld(db, blue)
    assert row[-1] == utc(2026, 3, 11)
    with db.read() as s:
        assert subs.get(s, CATALOG, blue, "live", utc(2026, 3, 12)).withheld is None
        allocation = s.scalars(
            select(PlanAllocation).where(
                PlanAllocation.organization_id == blue,
                PlanAllocation.period_start == utc(2026, 3, 1),
            )
        ).one()
    assert (allocation.kind, allocation.sequence, allocation.fee_minor) == ("cycle", 0, 3319)

    # Paying again, or the same release twice, changes nothing: released once.
    before = state(db, blue)
    with db.write() as s:
        assert suspension.release(s, blue, utc(2026, 3, 20), CATALOG) == []
    assert state(db, blue) == before

    close(db, utc(2026, 4, 1))
    march = invoices_of(db, blue)[2]
    assert march["lines"] == [
        (
            1,
            "proration",
            "Standard plan, 11 to 31 March 2026 (prorated from 2026-03-11 00:00 UTC): "
            "677.419355 credits",
            3319,
            677_419_355,
        )
    ]
    assert [lot[3] for lot in plan_lots(db, blue)][-1] == utc(2026, 4, 1)  # April in full


def test_a_month_spent_suspended_has_no_plan_fee_and_a_lapsed_month_is_never_allocated(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org("Gone Quiet")
    subscribe(db, org, "standard", utc(2026, 1, 1))
    suspend(db, org)
    close(db, utc(2026, 3, 1), org)
    close(db, utc(2026, 4, 1), org)
    march = invoices_of(db, org)[2]
    assert (march["lines"], march["total"], march["status"]) == ([], 0, "paid")  # nothing owed
    assert [r[0] for r in withheld(db, org)] == [utc(2026, 3, 1), utc(2026, 4, 1)]

    pay_up(db, org, utc(2026, 4, 16))  # April's rest is allocated; March lapsed
    assert [r[-1] for r in withheld(db, org)] == [None, utc(2026, 4, 16)]
    assert [lot[3] for lot in plan_lots(db, org)] == [
        utc(2026, 1, 1),
        utc(2026, 2, 1),
        utc(2026, 4, 16),
    ]
    assert plan_lots(db, org)[-1][1] == 500_000_000  # 15 of 30 days


@pytest.mark.parametrize("crash_after", cycle.STEPS)
def test_a_withholding_close_twice_or_crashed_and_rerun_equals_one_clean_close(
    db: Database, make_org: MakeOrg, crash_after: str
) -> None:
    clean, crashed = make_org("Clean"), make_org("Crashed")
    for org in (clean, crashed):
        subscribe(db, org, "professional", utc(2026, 1, 10))
    suspend(db, clean, crashed)
    close(db, utc(2026, 3, 1), clean)
    assert close(db, utc(2026, 3, 1, 0, 5), clean) == []  # twice equals once

    def crash(item: Due, step: str) -> None:
        if step == crash_after:
            raise RuntimeError(f"power cut after {step}")

    [failed] = cycle.run_due(db, utc(2026, 3, 1), crashed, catalog=CATALOG, charge=CHARGE,
                             after_step=crash)  # fmt: skip
    assert failed.error == f"RuntimeError: power cut after {crash_after}"
    close(db, utc(2026, 3, 1, 0, 10), crashed)
    close(db, utc(2026, 3, 1, 0, 20), crashed)
    assert state(db, clean) == state(db, crashed)
    assert withheld(db, clean) == withheld(db, crashed)
    assert len(withheld(db, crashed)) == 1

    for org in (clean, crashed):
        pay_up(db, org, utc(2026, 3, 11))
    assert state(db, clean) == state(db, crashed)
    assert plan_lots(db, clean)[-1][1:4] == (3_387_096_774, 3_387_096_774, utc(2026, 3, 11))


def test_a_suspended_organization_may_not_subscribe_or_upgrade_but_may_downgrade_or_cancel(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org()
    subscribe(db, org, "standard", utc(2026, 1, 1))
    suspend(db, org)
    with pytest.raises(subs.OrganizationSuspended):
        subscribe(db, org, "professional", utc(2026, 2, 10))
    with db.write() as s:
        subs.cancel(s, CATALOG, org, "live", utc(2026, 2, 10))
        assert s.scalars(select(Subscription.pending_action)).one() == "cancel"


def test_a_plan_with_cancel_after_dunning_ends_the_subscription_when_dunning_runs_out(
    db: Database, make_org: MakeOrg, tmp_path: Path
) -> None:
    source = (Path(billing.__file__).parent / "default_plans.toml").read_text()
    plans = tmp_path / "plans.toml"  # the first plan, standard, cancels after dunning
    plans.write_text(
        source.replace("cancel_after_dunning = false", "cancel_after_dunning = true", 1)
    )
    catalog = load_catalog(str(plans))
    assert catalog.plans["standard"].cancel_after_dunning
    strict, lenient = make_org("Strict"), make_org("Lenient")
    subscribe(db, strict, "standard", utc(2026, 1, 1), catalog)
    subscribe(db, lenient, "standard", utc(2026, 1, 1))
    suspend(db, strict, lenient, catalog=catalog)
    with db.read() as s:
        pending = dict(
            s.execute(select(Subscription.organization_id, Subscription.pending_action)).all()
        )
    assert pending == {strict: "cancel", lenient: None}

    close(db, utc(2026, 3, 1), catalog=catalog)
    with db.read() as s:
        ended = s.scalars(select(Subscription).where(Subscription.organization_id == strict)).one()
        assert (ended.status, ended.canceled_at) == ("canceled", utc(2026, 3, 1))
    assert withheld(db, strict) == []  # nothing to withhold: the subscription ended
    assert len(withheld(db, lenient)) == 1
    pay_up(db, strict, utc(2026, 3, 11))
    assert status(db, strict) == "active"
    assert [lot[3] for lot in plan_lots(db, strict)] == [utc(2026, 1, 1), utc(2026, 2, 1)]


def test_the_migration_matches_the_withheld_allocation_model(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from creditmeter.models import metadata

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if "withheld" in repr(d)] == []
