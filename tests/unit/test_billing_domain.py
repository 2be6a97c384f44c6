"""Billing's pure rules as worked examples: periods, expiry dates, proration, prices, plan changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from creditmeter.billing import domain as d
from creditmeter.billing.domain import Change, CustomPackages, Plan, Share, Terms
from creditmeter.kit.credits import MICROS_PER_CREDIT
from tests.conftest import utc

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
C = MICROS_PER_CREDIT


def plan(plan_id: str = "standard", **overrides: object) -> Plan:
    values: dict[str, object] = {
        "id": plan_id,
        "name": plan_id.title(),
        "description": "",
        "monthly_fee_minor": 4900,
        "currency": "USD",
        "allocation_micros": 1000 * C,
        "rollover_cycles": 0,
        "custom_terms": False,
        "credit_price_micros": 60_000,
        "purchase_expiry_months": 12,
        "overage_in_arrears": False,
    }
    values.update(overrides)
    return Plan(**values)  # type: ignore[arg-type]


STANDARD = plan()
PROFESSIONAL = plan(
    "professional", monthly_fee_minor=19900, allocation_micros=5000 * C, rollover_cycles=3
)
ENTERPRISE = plan(
    "enterprise",
    monthly_fee_minor=150_000,
    allocation_micros=None,
    rollover_cycles=None,
    custom_terms=True,
    overage_in_arrears=True,
)


# ---- periods ---------------------------------------------------------------------------------


def test_a_utc_cycle_is_the_calendar_month() -> None:
    january = d.period_of(utc(2026, 1, 16, 12), UTC)
    assert (january.start, january.end, january.label) == (
        utc(2026, 1, 1),
        utc(2026, 2, 1),
        "2026-01",
    )
    assert d.period_of(utc(2026, 2, 1), UTC).label == "2026-02"  # the boundary opens the new month
    assert d.period_of(utc(2026, 2, 1) - timedelta(microseconds=1), UTC) == january


def test_a_berlin_cycle_starts_at_local_midnight_and_march_is_an_hour_short() -> None:
    january = d.period(2026, 1, BERLIN)
    assert january.start == utc(2025, 12, 31, 23)
    march = d.period(2026, 3, BERLIN)
    assert (march.start, march.end) == (utc(2026, 2, 28, 23), utc(2026, 3, 31, 22))
    assert march.end - march.start == timedelta(days=31, hours=-1)
    # 23:30 UTC on 31 December is already January in Berlin.
    assert d.period_of(utc(2025, 12, 31, 23, 30), BERLIN) == january


def test_a_midnight_that_does_not_exist_starts_the_cycle_when_the_clocks_jump() -> None:
    # Paraguay moved its clocks from 00:00 to 01:00 on 1 October 2023.
    asuncion = ZoneInfo("America/Asuncion")
    october = d.period(2023, 10, asuncion)
    assert october.start == utc(2023, 10, 1, 4)
    assert october.start.astimezone(asuncion).hour == 1
    assert d.period(2023, 9, asuncion).end == october.start


def test_shift_moves_whole_cycles_across_years() -> None:
    january = d.period(2026, 1, UTC)
    assert d.shift(january, 3, UTC).label == "2026-04"
    assert d.shift(january, -1, UTC).label == "2025-12"
    assert d.shift(january, 12, UTC).start == utc(2027, 1, 1)


# ---- expiry ----------------------------------------------------------------------------------


def test_a_standard_lot_expires_at_the_end_of_its_own_cycle() -> None:
    january = d.period(2026, 1, UTC)
    assert d.plan_lot_expiry(january, 0, UTC) == utc(2026, 2, 1)


def test_a_professional_lot_for_january_is_spendable_through_april_and_gone_on_may_1() -> None:
    january = d.period(2026, 1, UTC)
    assert d.plan_lot_expiry(january, 3, UTC) == utc(2026, 5, 1)
    assert d.plan_lot_expiry(d.period(2026, 11, UTC), 3, UTC) == utc(2027, 3, 1)


def test_an_enterprise_lot_may_never_expire_and_berlin_lots_expire_at_berlin_midnight() -> None:
    assert d.plan_lot_expiry(d.period(2026, 1, UTC), None, UTC) is None
    assert d.plan_lot_expiry(d.period(2026, 1, BERLIN), 0, BERLIN) == utc(2026, 1, 31, 23)
    with pytest.raises(ValueError, match="negative"):
        d.plan_lot_expiry(d.period(2026, 1, UTC), -1, UTC)


def test_credits_bought_on_january_30_last_twelve_months() -> None:
    assert d.purchase_expiry(utc(2026, 1, 30, 10, 15), 12, UTC) == utc(2027, 1, 30, 10, 15)
    assert d.purchase_expiry(utc(2026, 1, 30), None, UTC) is None
    with pytest.raises(ValueError, match="positive"):
        d.purchase_expiry(utc(2026, 1, 30), 0, UTC)


def test_a_day_the_target_month_lacks_is_clamped_to_its_last_day() -> None:
    assert d.add_months(utc(2026, 1, 31, 9), 1, UTC) == utc(2026, 2, 28, 9)
    assert d.add_months(utc(2028, 1, 31, 9), 1, UTC) == utc(2028, 2, 29, 9)
    assert d.purchase_expiry(utc(2028, 2, 29), 12, UTC) == utc(2029, 2, 28)


def test_months_keep_the_local_wall_time_across_daylight_saving() -> None:
    bought = datetime(2026, 1, 15, 9, 0, tzinfo=BERLIN)  # 08:00 UTC in winter
    expires = d.add_months(bought, 6, BERLIN)
    assert expires == utc(2026, 7, 15, 7)  # 09:00 Berlin summer time
    assert expires.astimezone(BERLIN).hour == 9


# ---- proration and prices --------------------------------------------------------------------


def test_subscribing_on_january_16_prorates_by_the_16_of_31_days_left() -> None:
    january = d.period(2026, 1, UTC)
    share = d.share_remaining(january, utc(2026, 1, 16))
    assert share == Share(16 * 86_400_000_000, 31 * 86_400_000_000)
    # 1000 x 16/31 = 516.129032258... credits -> half-even to a micro-credit.
    assert d.prorate(1000 * C, share) == 516_129_032
    assert d.prorate(4900, share) == 2529  # USD 25.29
    assert d.prorate(4900, d.share_remaining(january, january.start)) == 4900


def test_proration_rounds_half_to_even_once() -> None:
    half = Share(1, 2)
    assert [d.prorate(n, half) for n in (1, 3, 5, 7)] == [0, 2, 2, 4]
    assert d.prorate(1, Share(0, 10)) == 0


def test_an_instant_outside_the_period_cannot_be_prorated() -> None:
    with pytest.raises(ValueError, match="not inside"):
        d.share_remaining(d.period(2026, 1, UTC), utc(2026, 2, 1))


def test_purchase_prices_are_whole_minor_units() -> None:
    assert d.purchase_price_minor(1000 * C, 60_000, "USD") == 6000  # 1,000 x USD 0.06
    assert d.purchase_price_minor(5000 * C, 50_000, "USD") == 25_000
    assert d.purchase_price_minor(1000 * C, 500_000, "JPY") == 500  # yen have no minor unit
    assert d.purchase_price_minor(C // 2, 10_000, "USD") == 0  # half a cent, to even
    assert d.purchase_price_minor(3 * C // 2, 10_000, "USD") == 2  # one and a half cents
    assert d.purchase_price_minor(1000 * C, 60_000, "KWD") == 60_000  # three-decimal dinar


def test_the_cost_basis_of_a_plan_lot_is_its_fee_per_credit() -> None:
    assert d.cost_basis_micros(4900, 1000 * C, "USD") == 49_000  # USD 0.049 a credit
    assert d.cost_basis_micros(0, 1000 * C, "USD") == 0
    assert d.cost_basis_micros(4900, 0, "USD") == 0


def test_money_formats_in_the_major_unit() -> None:
    assert d.format_money(4900, "USD") == "49.00"
    assert d.format_money(-5, "USD") == "-0.05"
    assert d.format_money(500, "JPY") == "500"
    assert d.format_money(1234, "KWD") == "1.234"
    assert d.format_price(60_000) == "0.06"


# ---- terms and plan changes ------------------------------------------------------------------


def test_fixed_plans_refuse_per_subscription_terms() -> None:
    with pytest.raises(d.TermsError) as caught:
        d.terms_for(STANDARD, allocation_micros=5 * C)
    assert caught.value.field == "allocation_credits"
    with pytest.raises(d.TermsError) as caught:
        d.terms_for(PROFESSIONAL, rollover=6)
    assert caught.value.field == "rollover_cycles"


def test_enterprise_terms_come_from_the_subscription() -> None:
    with pytest.raises(d.TermsError, match="send allocation_credits"):
        d.terms_for(ENTERPRISE)
    default = d.terms_for(ENTERPRISE, 20_000 * C)
    assert (default.allocation_micros, default.rollover_cycles) == (20_000 * C, None)
    assert d.terms_for(ENTERPRISE, 20_000 * C, 6).rollover_cycles == 6
    assert d.terms_for(ENTERPRISE, 20_000 * C, "never").rollover_cycles is None
    assert Terms.from_json(default.to_json()) == default


def test_terms_snapshotted_before_packages_on_account_existed_do_not_allow_it() -> None:
    terms = d.terms_for(ENTERPRISE, 20_000 * C).to_json()
    del terms["packages_on_account"]
    assert not Terms.from_json(terms).packages_on_account


def test_more_credits_for_a_higher_fee_is_an_upgrade_and_the_reverse_waits() -> None:
    standard, professional = d.terms_for(STANDARD), d.terms_for(PROFESSIONAL)
    assert d.classify_change(standard, professional) == Change.UPGRADE
    assert d.classify_change(professional, standard) == Change.DOWNGRADE
    assert d.classify_change(standard, d.terms_for(STANDARD)) == Change.SAME


def test_enterprise_allocation_changes_and_rollover_changes() -> None:
    base = d.terms_for(ENTERPRISE, 20_000 * C)
    assert d.classify_change(base, d.terms_for(ENTERPRISE, 30_000 * C)) == Change.UPGRADE
    assert d.classify_change(base, d.terms_for(ENTERPRISE, 10_000 * C)) == Change.DOWNGRADE
    # Another rollover with the same credits and fee changes nothing this cycle: next cycle.
    assert d.classify_change(base, d.terms_for(ENTERPRISE, 20_000 * C, 3)) == Change.DOWNGRADE


def test_an_upgrade_allocates_the_prorated_difference_with_the_new_plans_expiry() -> None:
    january = d.period(2026, 1, UTC)
    standard, professional = d.terms_for(STANDARD), d.terms_for(PROFESSIONAL)
    extra = d.allocation(professional, january, utc(2026, 1, 16), UTC, previous=standard)
    assert extra.credits_micros == 2_064_516_129  # 4000 x 16/31
    assert extra.fee_minor == 7742  # USD 150.00 x 16/31
    assert extra.expires_at == utc(2026, 5, 1)
    first = d.allocation(standard, january, january.start, UTC)
    assert (first.credits_micros, first.fee_minor, first.share.full) == (1000 * C, 4900, True)


def test_custom_package_bounds() -> None:
    bounds = CustomPackages(100 * C, 1_000_000 * C, 100 * C)
    assert bounds.problem(2500 * C) is None
    assert bounds.problem(50 * C) == "a custom amount is between 100 and 1000000 credits"
    assert bounds.problem(150 * C) == "a custom amount is a multiple of 100 credits"


def test_new_york_period_of_an_instant_in_the_fall_back_hour() -> None:
    november = d.period(2026, 11, NEW_YORK)
    # 1 November 2026 01:30 happens twice in New York; both are in November.
    assert d.period_of(utc(2026, 11, 1, 5, 30), NEW_YORK) == november
    assert d.period_of(utc(2026, 11, 1, 6, 30), NEW_YORK) == november
    assert november.end - november.start == timedelta(days=30, hours=1)
