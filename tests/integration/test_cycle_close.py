"""The monthly cycle close on SQLite and PostgreSQL: worked stories from the product document, the
catch-up after downtime, crash and rerun after every step, and gapless invoice numbers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from creditmeter.billing import cycle, domain
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.cycle import Due
from creditmeter.billing.models import (
    CycleClose,
    Invoice,
    InvoiceLine,
    PlanAllocation,
    Subscription,
    UsageStatementLine,
)
from creditmeter.billing.plans import load_catalog
from creditmeter.billing.subscriptions import SubscriptionRequest
from creditmeter.kit.credits import MICROS_PER_CREDIT
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import Lot
from creditmeter.ledger.verify import verify
from tests.conftest import utc
from tests.integration.test_concurrency import in_parallel

C = MICROS_PER_CREDIT
CATALOG = load_catalog()
MakeOrg = Callable[..., str]


def subscribe(db: Database, org: str, plan: str, at: datetime, **extra: Any) -> None:
    with db.write() as session:
        subs.subscribe(session, CATALOG, org, "live", SubscriptionRequest(plan, **extra), at)


def spend(db: Database, org: str, credits: int, at: datetime) -> None:
    with db.write() as session:
        ledger.debit(session, org, "live", credits * C, "inference", "test usage", at)


def close(db: Database, at: datetime, org: str | None = None, **kw: Any) -> list[cycle.CloseResult]:
    results = cycle.run_due(db, at, org, catalog=CATALOG, **kw)
    assert_clean(db)
    return results


def available(db: Database, org: str, at: datetime) -> int:
    with db.read() as session:
        return ledger.get_balance(session, org, "live", at).available_micros


def lots(db: Database, org: str) -> list[tuple[Any, ...]]:
    """Every lot of ``org`` as (source, amount, remaining, effective, expires), in creation order."""
    with db.read() as session:
        rows = session.execute(
            select(
                Lot.source,
                Lot.amount_micros,
                Lot.remaining_micros,
                Lot.effective_at,
                Lot.expires_at,
            )
            .where(Lot.organization_id == org)
            .order_by(Lot.effective_at, Lot.id)
        ).all()
    return [tuple(r) for r in rows]


def invoices_of(db: Database, org: str) -> list[dict[str, Any]]:
    """Invoices of ``org`` without their ids and numbers, with their lines, for comparisons."""
    with db.read() as session:
        result = []
        for inv in session.scalars(
            select(Invoice).where(Invoice.organization_id == org).order_by(Invoice.period_start)
        ):
            lines = session.execute(
                select(
                    InvoiceLine.position,
                    InvoiceLine.kind,
                    InvoiceLine.description,
                    InvoiceLine.amount_minor,
                    InvoiceLine.credits_micros,
                )
                .where(InvoiceLine.invoice_id == inv.id)
                .order_by(InvoiceLine.position)
            ).all()
            result.append(
                {
                    "period": inv.period_start,
                    "total": inv.total_minor,
                    "status": inv.status,
                    "issued": inv.issued_at,
                    "due": inv.due_at,
                    "lines": [tuple(line) for line in lines],
                }
            )
    return result


def state(db: Database, org: str) -> dict[str, Any]:
    """What a close leaves behind for ``org``: lots, invoices, statements, close records."""
    with db.read() as session:
        closes = session.execute(
            select(
                CycleClose.period_start,
                CycleClose.step,
                CycleClose.expired_micros,
                CycleClose.allocated_micros,
                CycleClose.overage_micros,
            )
            .where(CycleClose.organization_id == org)
            .order_by(CycleClose.period_start)
        ).all()
        statement = session.execute(
            select(
                UsageStatementLine.dimension,
                UsageStatementLine.key,
                UsageStatementLine.credits_micros,
            ).where(UsageStatementLine.organization_id == org)
        ).all()
        sub = session.scalars(select(Subscription).where(Subscription.organization_id == org)).one()
        billed = session.execute(
            select(PlanAllocation.kind, PlanAllocation.period_start, PlanAllocation.fee_minor)
            .where(PlanAllocation.organization_id == org, PlanAllocation.invoice_id.is_not(None))
            .order_by(PlanAllocation.id)
        ).all()
    return {
        "lots": lots(db, org),
        "invoices": invoices_of(db, org),
        "closes": [tuple(c) for c in closes],
        "statement": sorted(tuple(s) for s in statement),
        "subscription": (sub.status, sub.plan, sub.allocated_through, sub.pending_action),
        "billed": [tuple(b) for b in billed],
    }


def assert_clean(db: Database) -> None:
    with db.read() as session:
        assert verify(session) == []


def test_a_standard_organizations_unused_january_credits_are_gone_on_february_1(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org("Standard Co")
    subscribe(db, org, "standard", utc(2026, 1, 1))
    spend(db, org, 300, utc(2026, 1, 20))
    assert available(db, org, utc(2026, 1, 31, 23, 59)) == 700 * C

    [result] = close(db, utc(2026, 2, 1))
    assert result.ok
    assert result.steps_run == list(cycle.STEPS)
    assert result.expired_micros == 700 * C
    assert result.allocated_micros == 1000 * C
    assert available(db, org, utc(2026, 2, 1)) == 1000 * C
    assert lots(db, org) == [
        ("plan", 1000 * C, 0, utc(2026, 1, 1), utc(2026, 2, 1)),
        ("plan", 1000 * C, 1000 * C, utc(2026, 2, 1), utc(2026, 3, 1)),
    ]
    [invoice] = invoices_of(db, org)
    assert invoice["total"] == 4900
    assert invoice["status"] == "open"
    assert invoice["issued"] == utc(2026, 2, 1)
    assert invoice["due"] == utc(2026, 2, 15)
    assert invoice["lines"] == [
        (1, "plan_fee", "Standard plan, January 2026: 1,000 credits", 4900, 1000 * C)
    ]
    assert result.invoice_number == "INV-2026-000001"
    # Twice is once.
    assert close(db, utc(2026, 2, 1, 0, 5)) == []
    assert len(invoices_of(db, org)) == 1


def test_a_professional_organizations_january_credits_last_through_april_and_pay_first(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org("Pro Co")
    subscribe(db, org, "professional", utc(2026, 1, 1))
    spend(db, org, 1000, utc(2026, 1, 10))
    close(db, utc(2026, 2, 1))
    spend(db, org, 500, utc(2026, 2, 10))  # the January lot expires first, so it pays
    close(db, utc(2026, 3, 1))
    close(db, utc(2026, 4, 1))
    jan = lots(db, org)[0]
    assert jan == ("plan", 5000 * C, 3500 * C, utc(2026, 1, 1), utc(2026, 5, 1))
    assert available(db, org, utc(2026, 4, 30, 23)) == (3500 + 3 * 5000) * C
    [result] = close(db, utc(2026, 5, 1))
    assert result.expired_micros == 3500 * C
    assert lots(db, org)[0][2] == 0
    assert available(db, org, utc(2026, 5, 1)) == 4 * 5000 * C
    assert [i["total"] for i in invoices_of(db, org)] == [19900] * 4


def test_an_enterprise_contract_allocates_its_own_amount_that_never_expires(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org("Big Co")
    subscribe(db, org, "enterprise", utc(2026, 1, 1), allocation_micros=20_000 * C)
    spend(db, org, 5000, utc(2026, 1, 15))
    close(db, utc(2026, 3, 1))
    assert [(lot[1], lot[2], lot[4]) for lot in lots(db, org)] == [
        (20_000 * C, 15_000 * C, None),
        (20_000 * C, 20_000 * C, None),
        (20_000 * C, 20_000 * C, None),
    ]
    assert [i["total"] for i in invoices_of(db, org)] == [150000, 150000]


def test_enterprise_overage_is_invoiced_in_arrears_and_settled(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org("Overage Co")
    subscribe(db, org, "enterprise", utc(2026, 1, 1), allocation_micros=1000 * C)
    spend(db, org, 1250, utc(2026, 1, 20))  # 250 credits past zero: arrears
    [result] = close(db, utc(2026, 2, 1))
    [invoice] = invoices_of(db, org)
    assert invoice["lines"][1][1:] == (
        "overage",
        "Usage beyond the credits (overage, billed in arrears)",
        1000,  # 250 credits at USD 0.04
        250 * C,
    )
    assert invoice["total"] == 150000 + 1000
    # February's credits are whole: the overage was billed, not taken from them.
    assert available(db, org, utc(2026, 2, 1)) == 1000 * C
    assert result.ok


def test_a_standard_organization_is_not_billed_overage_it_pays_with_next_months_credits(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org("Short Co")
    subscribe(db, org, "standard", utc(2026, 1, 1))
    spend(db, org, 1100, utc(2026, 1, 20))
    close(db, utc(2026, 2, 1))
    assert [line[1] for line in invoices_of(db, org)[0]["lines"]] == ["plan_fee"]
    assert available(db, org, utc(2026, 2, 1)) == 900 * C


def test_a_downgrade_and_a_cancellation_take_effect_at_the_close(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org("Changing Co")
    subscribe(db, org, "professional", utc(2026, 1, 1))
    subscribe(db, org, "standard", utc(2026, 1, 20))  # a downgrade: pending
    close(db, utc(2026, 2, 1))
    assert state(db, org)["subscription"] == ("active", "standard", utc(2026, 3, 1), None)
    assert lots(db, org)[-1][1] == 1000 * C
    with db.write() as session:
        subs.cancel(session, CATALOG, org, "live", utc(2026, 2, 10))
    close(db, utc(2026, 3, 1))
    assert state(db, org)["subscription"] == ("canceled", "standard", utc(2026, 3, 1), None)
    assert close(db, utc(2026, 6, 1)) == []  # nothing more to close, nothing allocated
    assert [i["total"] for i in invoices_of(db, org)] == [19900, 4900]
    # Back in May: a first allocation, prorated, and closes again from May.
    subscribe(db, org, "standard", utc(2026, 6, 16))
    [result] = close(db, utc(2026, 7, 1))
    assert result.due.period.label == "2026-06"
    assert invoices_of(db, org)[-1]["lines"][0][1] == "proration"


def test_a_first_subscription_and_the_close_never_allocate_one_cycle_twice(
    db: Database, make_org: MakeOrg
) -> None:
    """Subscribed in the first seconds of February, before the close ran: the close has nothing
    to allocate for February, and January has nothing to close."""
    org = make_org("Early Co")
    subscribe(db, org, "standard", utc(2026, 2, 1, 0, 0, 5))
    assert close(db, utc(2026, 2, 1, 0, 1)) == []
    close(db, utc(2026, 3, 1))
    with db.read() as session:
        periods = session.execute(
            select(PlanAllocation.period_start, PlanAllocation.kind)
            .where(PlanAllocation.organization_id == org)
            .order_by(PlanAllocation.id)
        ).all()
    assert [tuple(p) for p in periods] == [
        (utc(2026, 2, 1), "initial"),
        (utc(2026, 3, 1), "cycle"),
    ]


def test_three_missed_boundaries_caught_up_equal_three_closes_on_time(
    db: Database, make_org: MakeOrg
) -> None:
    on_time, late = make_org("On Time"), make_org("Late")
    for org in (on_time, late):
        subscribe(db, org, "professional", utc(2026, 1, 10))
        spend(db, org, 700, utc(2026, 1, 20))
    for month in (2, 3, 4):
        close(db, utc(2026, month, 1), on_time)
    results = close(db, utc(2026, 4, 1, 9), late)
    assert [r.due.period.label for r in results] == ["2026-01", "2026-02", "2026-03"]
    a, b = state(db, on_time), state(db, late)
    assert a == b
    assert len(a["invoices"]) == 3
    assert len(a["lots"]) == 4


@pytest.mark.parametrize("crash_after", cycle.STEPS)
def test_a_crash_after_any_step_and_a_rerun_equal_one_clean_close(
    db: Database, make_org: MakeOrg, crash_after: str
) -> None:
    clean, crashed = make_org("Clean"), make_org("Crashed")
    for org in (clean, crashed):
        subscribe(db, org, "professional", utc(2026, 1, 10))
        spend(db, org, 700, utc(2026, 1, 20))
        subscribe(db, org, "standard", utc(2026, 1, 25))  # pending downgrade
    close(db, utc(2026, 2, 1), clean)

    def crash(item: Due, step: str) -> None:
        if step == crash_after:
            raise RuntimeError(f"power cut after {step}")

    [failed] = close(db, utc(2026, 2, 1), crashed, after_step=crash)
    assert failed.error == f"RuntimeError: power cut after {crash_after}"
    rerun = close(db, utc(2026, 2, 1, 0, 10), crashed)
    remaining = list(cycle.STEPS[cycle.STEPS.index(crash_after) + 1 :])
    if remaining:
        [resumed] = rerun
        assert resumed.ok
        assert resumed.steps_run == remaining
    else:  # the close had finished: nothing is due
        assert rerun == []
    assert state(db, clean) == state(db, crashed)


def test_one_failing_organization_does_not_stop_the_others(db: Database, make_org: MakeOrg) -> None:
    good, bad = make_org("Good"), make_org("Bad")
    for org in (good, bad):
        subscribe(db, org, "standard", utc(2026, 1, 1))

    def fail_bad(item: Due, step: str) -> None:
        if item.organization_id == bad and step == "expiry":
            raise RuntimeError("boom")

    results = close(db, utc(2026, 3, 1), after_step=fail_bad)
    by_org = {(r.due.organization_id, r.due.period.label): r for r in results}
    assert by_org[(good, "2026-01")].ok
    assert by_org[(good, "2026-02")].ok
    assert by_org[(bad, "2026-01")].error == "RuntimeError: boom"
    assert by_org[(bad, "2026-02")].error == "skipped: an earlier close of it failed"
    close(db, utc(2026, 3, 1))
    assert state(db, good)["lots"] == state(db, bad)["lots"]


def test_invoice_numbers_are_gapless_and_unique_under_concurrency(
    db: Database, make_org: MakeOrg
) -> None:
    orgs = [make_org(f"Org {i}") for i in range(8)]
    for org in orgs:
        subscribe(db, org, "standard", utc(2026, 1, 1))
    results = in_parallel(
        [lambda org=org: cycle.run_due(db, utc(2026, 2, 1), org, catalog=CATALOG) for org in orgs]  # type: ignore[misc]
    )
    assert all(r.ok for batch in results for r in batch)
    with db.read() as session:
        numbers = sorted(session.scalars(select(Invoice.number)))
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 9)]
    assert_clean(db)


def test_a_rolled_back_invoice_gives_its_number_back(db: Database, make_org: MakeOrg) -> None:
    first, second = make_org("First"), make_org("Second")
    for org in (first, second):
        subscribe(db, org, "standard", utc(2026, 11, 1))

    def crash_in_invoice(db: Database, invoice_id: str, now: datetime) -> None:
        raise RuntimeError("card network down")

    # The charge step fails after the invoice committed: its number stays taken.
    close(db, utc(2026, 12, 1), first, charge=crash_in_invoice)
    # A failure inside the invoice transaction gives the number back.
    original = cycle.invoices.next_number

    def next_then_fail(session: Any, series: str, count: int = 1) -> int:
        original(session, series, count)
        raise RuntimeError("disk full")

    cycle.invoices.next_number = next_then_fail  # type: ignore[assignment]
    try:
        [failed] = close(db, utc(2026, 12, 1), second)
    finally:
        cycle.invoices.next_number = original  # type: ignore[assignment]
    assert failed.error == "RuntimeError: disk full"
    close(db, utc(2026, 12, 1))
    with db.read() as session:
        numbers = sorted(session.scalars(select(Invoice.number)))
    assert numbers == ["INV-2026-000001", "INV-2026-000002"]


def test_december_is_invoiced_in_the_new_years_series(db: Database, make_org: MakeOrg) -> None:
    org = make_org()
    subscribe(db, org, "standard", utc(2026, 12, 1))
    [result] = close(db, utc(2027, 1, 1))
    assert result.invoice_number == "INV-2027-000001"


def test_test_environment_invoices_are_numbered_apart(db: Database, make_org: MakeOrg) -> None:
    org = make_org()
    with db.write() as session:
        subs.subscribe(
            session, CATALOG, org, "test", SubscriptionRequest("standard"), utc(2026, 1, 1)
        )
    subscribe(db, org, "standard", utc(2026, 1, 1))
    results = close(db, utc(2026, 2, 1))
    assert sorted(r.invoice_number or "" for r in results) == [
        "INV-2026-000001",
        "INV-TEST-2026-000001",
    ]


def test_each_environments_close_expires_and_records_its_own_lots(
    db: Database, make_org: MakeOrg
) -> None:
    org = make_org()
    with db.write() as session:
        subs.subscribe(
            session, CATALOG, org, "test", SubscriptionRequest("standard"), utc(2026, 1, 1)
        )
    subscribe(db, org, "standard", utc(2026, 1, 1))
    spend(db, org, 100, utc(2026, 1, 10))
    january = domain.period_of(utc(2026, 1, 1), CATALOG.zone)
    live = cycle.close(db, CATALOG, Due(january, org, "live"), utc(2026, 2, 1))
    assert live.ok
    assert live.expired_micros == 900 * C
    with db.read() as session:  # the test environment's January lot waits for its own close
        test_lot = ledger.get_balance(session, org, "test", utc(2026, 1, 31)).available_micros
    assert test_lot == 1000 * C
    results = close(db, utc(2026, 2, 1))
    assert [(r.due.environment, r.expired_micros) for r in results] == [("test", 1000 * C)]


def test_due_lists_boundaries_in_order(db: Database, make_org: MakeOrg) -> None:
    a, b = make_org("A"), make_org("B")
    subscribe(db, a, "standard", utc(2026, 1, 5))
    subscribe(db, b, "standard", utc(2026, 2, 5))
    with db.read() as session:
        work = cycle.due(session, CATALOG, utc(2026, 3, 1))
    assert [(d.period.label, d.organization_id) for d in work] == [
        ("2026-01", a),
        ("2026-02", min(a, b)),
        ("2026-02", max(a, b)),
    ]


def test_the_migration_matches_the_cycle_and_invoice_models(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from creditmeter.models import metadata

    mine = (
        "cycle_closes",
        "usage_statement_lines",
        "invoice_counters",
        "invoices",
        "invoice_lines",
    )
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if any(name in repr(d) for name in mine)] == []


def test_the_charge_hook_gets_each_open_invoice_outside_any_transaction(
    db: Database, make_org: MakeOrg
) -> None:
    paying, free = make_org("Paying"), make_org("Free")
    subscribe(db, paying, "standard", utc(2026, 1, 1))
    subscribe(db, free, "enterprise", utc(2026, 1, 1), allocation_micros=10 * C)
    with db.write() as session:  # a contract without a fee: its invoice has nothing to pay
        sub = session.scalars(
            select(Subscription).where(Subscription.organization_id == free)
        ).one()
        sub.terms = {**sub.terms, "monthly_fee_minor": 0}
        for row in session.scalars(
            select(PlanAllocation).where(PlanAllocation.organization_id == free)
        ):
            row.fee_minor = 0
    calls: list[tuple[str, str]] = []

    def charge(database: Database, invoice_id: str, now: datetime) -> None:
        with database.read() as session:  # the close's writes are committed and visible
            invoice = session.get(Invoice, invoice_id)
            assert invoice is not None
            calls.append((invoice.organization_id, invoice.status))

    close(db, utc(2026, 2, 1), charge=charge)
    assert calls == [(paying, "open")]
    [free_invoice] = invoices_of(db, free)
    assert (free_invoice["total"], free_invoice["status"]) == (0, "paid")
    close(db, utc(2026, 2, 1, 1), charge=charge)
    assert calls == [(paying, "open")]  # a closed month is not charged again


def test_four_runners_closing_the_same_months_at_once_close_them_once(
    db: Database, make_org: MakeOrg
) -> None:
    """The worker of every server and an operator's `cycle run` may overlap: every step takes the
    organization's lock and finds it recorded, so each month is closed, allocated and billed once."""
    reference, raced = make_org("Reference"), make_org("Raced")
    for org in (reference, raced):
        subscribe(db, org, "professional", utc(2026, 1, 10))
        spend(db, org, 700, utc(2026, 1, 20))
    close(db, utc(2026, 3, 1), reference)
    batches = in_parallel(
        [lambda: cycle.run_due(db, utc(2026, 3, 1), raced, catalog=CATALOG) for _ in range(4)]
    )
    assert all(r.ok for batch in batches for r in batch)
    assert_clean(db)
    assert state(db, raced) == state(db, reference)
