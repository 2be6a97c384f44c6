"""For any mix of prepaid and overage usage in an Enterprise month and any subset of it reversed
after the close (on SQLite and PostgreSQL): each credit comes back once, in the form it was paid.
Credits returned + money returned / price == credits reversed, never more; the prepaid part comes
back as credits, the overage part as money; the ledger verifies."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from creditmeter.billing import credit_notes
from creditmeter.billing.models import CreditNote, CycleClose, InvoiceLine
from creditmeter.kit.db import Database
from creditmeter.metering import usage
from tests.api.test_credit_notes import C, assert_clean, available, close, subscribe, use
from tests.conftest import utc

#: Enterprise's price per credit, USD 0.04: 4 minor units.
PRICE_MINOR = 4
REVERSED_AT = utc(2026, 2, 5)

events = st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=5)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    allocation=st.integers(min_value=100, max_value=1500),
    costs=events,
    picks=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_each_reversed_credit_comes_back_once(
    db: Database,
    make_org: Callable[..., str],
    allocation: int,
    costs: list[int],
    picks: list[bool],
) -> None:
    org = make_org("Property Co")
    subscribe(db, org, "enterprise", utc(2026, 1, 1), allocation_micros=allocation * C)
    left = allocation
    prepaid, overage = [], []
    for i, cost in enumerate(costs):
        use(db, org, f"e{i}", cost, utc(2026, 1, 2 + i))
        paid = min(cost, left)
        left -= paid
        prepaid.append(paid)
        overage.append(cost - paid)
    close(db, utc(2026, 2, 1))
    chosen = [i for i in range(len(costs)) if picks[i]]
    before = available(db, org, REVERSED_AT)

    with db.write() as session:
        for i in chosen:
            _, txn = usage.reverse(session, org, "live", f"e{i}", "property", REVERSED_AT, "USD")
            credit_notes.for_usage_reversal(
                session, org, "live", f"e{i}", txn, "property", REVERSED_AT
            )

    returned = available(db, org, REVERSED_AT) - before
    with db.read() as session:
        money = int(
            session.scalar(
                select(func.coalesce(func.sum(CreditNote.amount_minor), 0)).where(
                    CreditNote.organization_id == org
                )
            )
        )
        billed = int(
            session.scalar(
                select(func.coalesce(func.sum(CreditNote.billed_micros), 0)).where(
                    CreditNote.organization_id == org
                )
            )
        )
        overage_line = int(
            session.scalar(
                select(func.coalesce(func.sum(InvoiceLine.amount_minor), 0))
                .join(CycleClose, CycleClose.invoice_id == InvoiceLine.invoice_id)
                .where(CycleClose.organization_id == org, InvoiceLine.kind == "overage")
            )
        )
    reversed_credits = sum(costs[i] for i in chosen)
    # Once: credits back + money back / price is exactly what was reversed, never more.
    assert returned + money * C // PRICE_MINOR == reversed_credits * C
    # In the form it was paid: prepaid as credits, overage as money.
    assert returned == sum(prepaid[i] for i in chosen) * C
    assert billed == sum(overage[i] for i in chosen) * C
    assert money == sum(overage[i] for i in chosen) * PRICE_MINOR
    assert money <= overage_line
    assert_clean(db)
