"""Random subscription histories across several months (subscribe, upgrade, downgrade, cancel,
usage, packages bought on account), with closes run on time or caught up later: whatever happens,
the plan credits allocated are the plan allocations, each allocation's fee is billed once, each
purchase on account is billed once on the invoice of its month, every invoice is the sum of its
lines, numbers only grow, expired plan lots are empty, and the ledger verifies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from creditmeter.billing import cycle, purchases
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.models import (
    CycleClose,
    Invoice,
    InvoiceLine,
    PlanAllocation,
    Subscription,
)
from creditmeter.billing.payments.models import Purchase
from creditmeter.billing.plans import load_catalog
from creditmeter.errors import CreditmeterError
from creditmeter.kit.credits import MICROS_PER_CREDIT
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import Lot
from creditmeter.ledger.verify import verify
from tests.conftest import utc

C = MICROS_PER_CREDIT
CATALOG = load_catalog()
MONTHS = 4  # January to April, closed through May 1

action = st.one_of(
    st.tuples(st.just("subscribe"), st.sampled_from(["standard", "professional", "enterprise"])),
    st.tuples(st.just("cancel"), st.none()),
    st.tuples(st.just("use"), st.integers(min_value=1, max_value=3000)),
    st.tuples(st.just("buy"), st.sampled_from(["standard", "professional"])),
)
month_plan = st.lists(
    st.tuples(st.integers(min_value=1, max_value=28), action), min_size=0, max_size=4
)
history = st.tuples(
    st.lists(month_plan, min_size=MONTHS, max_size=MONTHS),
    st.lists(st.booleans(), min_size=MONTHS, max_size=MONTHS),  # close on time at each boundary?
)


def apply(db: Database, org: str, day: Any, what: tuple[str, Any]) -> None:
    kind, arg = what
    try:
        with db.write() as session:
            if kind == "subscribe":
                extra = {"allocation_micros": 2000 * C} if arg == "enterprise" else {}
                request = subs.SubscriptionRequest(arg, **extra)
                subs.subscribe(session, CATALOG, org, "live", request, day)
            elif kind == "cancel":
                subs.cancel(session, CATALOG, org, "live", day)
            elif kind == "buy":
                request = purchases.PurchaseRequest(arg, billing=purchases.ON_ACCOUNT)
                key = f"buy-{day.isoformat()}-{arg}"
                purchases.begin(session, CATALOG, org, "live", request, key, day)
            else:
                ledger.debit(session, org, "live", arg * C, "inference", "usage", day)
    except CreditmeterError as exc:  # no subscription yet, or the close has not run yet
        expected = {
            "subscription_not_found",
            "cycle_close_pending",
            "subscription_required",
            "on_account_not_allowed",
        }
        if exc.code not in expected:
            raise


def check(db: Database, org: str) -> None:
    closed_through = utc(2026, MONTHS + 1, 1)
    with db.write() as session:
        # No close runs for a canceled subscription after its last cycle: its plan lots left expire
        # through the worker's real-time expiry, as the worker would have done on time.
        canceled = session.scalar(
            select(func.count()).where(
                Subscription.organization_id == org, Subscription.status == "canceled"
            )
        )
        if canceled:
            ledger.expire_due(session, closed_through, org)
    with db.read() as session:
        assert verify(session) == []
        lots = session.scalar(
            select(func.coalesce(func.sum(Lot.amount_micros), 0)).where(
                Lot.organization_id == org, Lot.source == "plan"
            )
        )
        allocations = list(
            session.scalars(select(PlanAllocation).where(PlanAllocation.organization_id == org))
        )
        assert lots == sum(a.credits_micros for a in allocations)
        for a in allocations:  # every fee of a closed month is billed, and only once
            assert (a.invoice_id is not None) == (a.period_start < closed_through), a.kind
        invoices = list(
            session.scalars(
                select(Invoice).where(Invoice.organization_id == org).order_by(Invoice.period_start)
            )
        )
        bought = list(session.scalars(select(Purchase).where(Purchase.organization_id == org)))
        of_invoice = {i.id: i for i in invoices}
        for p in bought:  # billed once, on the invoice of the month it was bought in
            invoice = of_invoice[p.invoice_id] if p.invoice_id else None
            assert invoice is not None, p.created_at
            assert invoice.period_start <= p.created_at < invoice.period_end
        fees = packages = 0
        for invoice in invoices:
            lines = session.execute(
                select(InvoiceLine.kind, InvoiceLine.amount_minor).where(
                    InvoiceLine.invoice_id == invoice.id
                )
            ).all()
            assert invoice.total_minor == invoice.subtotal_minor == sum(a for _, a in lines)
            fees += sum(a for kind, a in lines if kind in {"plan_fee", "proration"})
            packages += sum(a for kind, a in lines if kind == "package")
        assert fees == sum(a.fee_minor for a in allocations if a.invoice_id)
        assert packages == sum(p.amount_minor for p in bought)
        numbers = [i.number for i in invoices]
        assert numbers == sorted(numbers)
        assert len({(i.period_start) for i in invoices}) == len(invoices)
        cycle_credits = sum(a.credits_micros for a in allocations if a.kind == "cycle")
        allocated = session.scalar(
            select(func.coalesce(func.sum(CycleClose.allocated_micros), 0)).where(
                CycleClose.organization_id == org
            )
        )
        assert allocated == cycle_credits
        assert not session.scalar(
            select(func.count()).where(
                Lot.organization_id == org,
                Lot.source == "plan",
                Lot.expires_at <= closed_through,
                Lot.remaining_micros != 0,
            )
        )
        unfinished = select(func.count()).where(
            CycleClose.organization_id == org, CycleClose.completed_at.is_(None)
        )
        assert session.scalar(unfinished) == 0


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=history)
def test_random_histories_keep_the_billing_invariants(
    db: Database, make_org: Callable[..., str], history: Any
) -> None:
    plans, on_time = history
    org = make_org()
    for month, actions in enumerate(plans, start=1):
        for day, what in sorted(actions, key=lambda a: a[0]):
            apply(db, org, utc(2026, month, day, 12), what)
        if on_time[month - 1]:
            results = cycle.run_due(db, utc(2026, month + 1, 1), org, catalog=CATALOG)
            assert all(r.ok for r in results)
    results = cycle.run_due(db, utc(2026, MONTHS + 1, 1, 6), org, catalog=CATALOG)
    assert all(r.ok for r in results)
    check(db, org)
