"""Pure rules of the cycle close and invoices: which boundaries are due, invoice numbers, line texts,
and the seller and invoicing settings of the plans file."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from creditmeter.billing import domain
from creditmeter.billing.domain import Invoicing, Seller, Share
from creditmeter.billing.plans import PlansError, parse_catalog

BERLIN = ZoneInfo("Europe/Berlin")
MINIMAL = """
[plans.basic]
name = "Basic"
monthly_fee = 1000
currency = "EUR"
allocation_credits = "500"
credit_price = "0.1"

[custom_packages]
min_credits = "10"
max_credits = "1000"
step_credits = "10"
"""


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc, arg-type]


def test_a_period_is_due_once_it_has_ended() -> None:
    january = domain.period(2026, 1, UTC)
    assert domain.periods_due(january, utc(2026, 1, 31, 23, 59), UTC) == []
    assert [p.label for p in domain.periods_due(january, utc(2026, 2, 1), UTC)] == ["2026-01"]
    three = domain.periods_due(january, utc(2026, 4, 1, 9), UTC)
    assert [p.label for p in three] == ["2026-01", "2026-02", "2026-03"]


def test_boundaries_are_local_midnights_in_the_billing_zone() -> None:
    january = domain.period(2026, 1, BERLIN)
    assert domain.periods_due(january, utc(2026, 1, 31, 22, 59), BERLIN) == []
    [due] = domain.periods_due(january, utc(2026, 1, 31, 23), BERLIN)
    assert due.end == utc(2026, 1, 31, 23)


@given(
    start=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
    ),
    days=st.integers(min_value=0, max_value=800),
    zone=st.sampled_from([UTC, BERLIN, ZoneInfo("America/New_York"), ZoneInfo("Pacific/Apia")]),
)
def test_due_periods_touch_and_all_have_ended(start: datetime, days: int, zone: ZoneInfo) -> None:
    first = domain.period_of(start, zone)
    now = start + timedelta(days=days)
    due = domain.periods_due(first, now, zone)
    assert all(p.end <= now for p in due)
    assert all(a.end == b.start for a, b in itertools.pairwise(due))
    after = domain.shift(due[-1], 1, zone) if due else first
    assert after.end > now  # the next one has not ended: nothing is left out


def test_invoice_numbers_run_per_year_and_environment() -> None:
    assert domain.invoice_number(domain.invoice_series("INV", "live", 2026), 1) == "INV-2026-000001"
    assert domain.invoice_number(domain.invoice_series("INV", "test", 2026), 42) == (
        "INV-TEST-2026-000042"
    )
    assert domain.invoice_number("INV-2026", 1_234_567) == "INV-2026-1234567"
    with pytest.raises(ValueError, match="start at 1"):
        domain.invoice_number("INV-2026", 0)


def test_digits_are_grouped_exactly() -> None:
    assert domain.group_digits("1234567.000001") == "1,234,567.000001"
    assert domain.group_digits("-1000") == "-1,000"
    assert domain.group_digits("0.5") == "0.5"


def test_allocation_lines_say_what_and_when() -> None:
    january = domain.period(2026, 1, UTC)
    assert domain.allocation_line_kind(Share(10, 10)) == "plan_fee"
    assert domain.allocation_line_kind(Share(5, 10)) == "proration"
    assert domain.describe_allocation("cycle", "Standard", january, january.start, UTC) == (
        "Standard plan, January 2026"
    )
    assert domain.describe_allocation(
        "upgrade", "Professional", january, utc(2026, 1, 20), UTC
    ) == ("Upgrade to Professional, 20 to 31 January 2026 (prorated from 2026-01-20 00:00 UTC)")
    march = domain.period(2026, 3, BERLIN)
    assert domain.describe_allocation(
        "initial", "Standard", march, utc(2026, 3, 29, 12), BERLIN
    ) == ("Standard plan, 29 to 31 March 2026 (prorated from 2026-03-29 14:00 CEST)")


def test_seller_and_invoicing_default_when_the_file_has_none() -> None:
    catalog = parse_catalog(MINIMAL, "minimal.toml")
    assert catalog.seller == Seller(name="creditmeter operator")
    assert catalog.invoicing == Invoicing("INV", 14)


def test_seller_and_invoicing_are_read_and_checked() -> None:
    good = (
        MINIMAL
        + """
[seller]
name = "Acme Compute GmbH"
address = ["Hauptstrasse 1", "10115 Berlin"]
tax_id = "DE123456789"

[invoices]
number_prefix = "AC"
payment_terms_days = 30
"""
    )
    catalog = parse_catalog(good, "good.toml")
    assert catalog.seller.address == ("Hauptstrasse 1", "10115 Berlin")
    assert catalog.invoicing == Invoicing("AC", 30)
    bad = (
        MINIMAL
        + """
[seller]
address = "Hauptstrasse 1"
fax = "+49"

[invoices]
number_prefix = "inv-"
payment_terms_days = 365
"""
    )
    with pytest.raises(PlansError) as caught:
        parse_catalog(bad, "bad.toml")
    fields = {e["field"] for e in caught.value.errors or []}
    assert {
        "seller.name",
        "seller.address",
        "seller.fax",
        "invoices.number_prefix",
        "invoices.payment_terms_days",
    } <= fields
    assert "capital letters" in caught.value.detail
