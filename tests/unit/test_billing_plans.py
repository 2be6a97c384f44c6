"""The plans file: the shipped default matches the product document; a bad file is refused whole,
with every problem named."""

from __future__ import annotations

from pathlib import Path

import pytest

from creditmeter.billing.plans import (
    DEFAULT_SOURCE,
    PLANS_ENV,
    PlansError,
    clear_catalog_cache,
    load_catalog,
    parse_catalog,
)
from creditmeter.config import Settings
from creditmeter.kit.credits import MICROS_PER_CREDIT

C = MICROS_PER_CREDIT

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


@pytest.fixture(autouse=True)
def _fresh_cache() -> object:
    clear_catalog_cache()
    yield None
    clear_catalog_cache()


def test_the_default_plans_follow_the_product_document() -> None:
    catalog = load_catalog()
    assert catalog.source == DEFAULT_SOURCE
    assert catalog.time_zone == "UTC"
    assert list(catalog.plans) == ["standard", "professional", "enterprise"]
    standard, professional, enterprise = catalog.plans.values()
    # Standard: 1,000 credits a month, unused credits expire at the end of the cycle.
    assert (standard.allocation_micros, standard.rollover_cycles) == (1000 * C, 0)
    # Professional: 5,000 credits a month, rolling over for up to 3 months.
    assert (professional.allocation_micros, professional.rollover_cycles) == (5000 * C, 3)
    # Enterprise: custom allocation and rollover; overage may be invoiced in arrears.
    assert enterprise.custom_terms
    assert enterprise.allocation_micros is None
    assert enterprise.overage_in_arrears
    # Enterprise package: bought on account, billed on the month's invoice.
    assert [p.id for p in catalog.plans.values() if p.packages_on_account] == ["enterprise"]
    for plan in catalog.plans.values():
        assert plan.currency == "USD"
        assert plan.monthly_fee_minor > 0
        assert plan.purchase_expiry_months == 12
        assert plan.credit_price_micros > 0
    # Packages: Standard 1,000 credits, Professional 5,000 credits, custom amounts.
    assert {p.id: p.credits_micros for p in catalog.packages.values()} == {
        "standard": 1000 * C,
        "professional": 5000 * C,
    }
    assert catalog.custom_packages.problem(2500 * C) is None


def test_a_minimal_file_takes_the_documented_defaults() -> None:
    catalog = parse_catalog(MINIMAL, "minimal.toml")
    basic = catalog.plans["basic"]
    assert basic.rollover_cycles == 0
    assert basic.purchase_expiry_months == 12
    assert basic.credit_price_micros == 100_000
    assert not basic.custom_terms
    assert not basic.overage_in_arrears
    assert not basic.packages_on_account
    assert catalog.packages == {}


@pytest.mark.parametrize("value", ['"yes"', "1", '"true"'])
def test_packages_on_account_is_a_toml_boolean(value: str) -> None:
    bad = MINIMAL.replace(
        'credit_price = "0.1"', f'credit_price = "0.1"\npackages_on_account = {value}'
    )
    with pytest.raises(PlansError) as caught:
        parse_catalog(bad, "bad.toml")
    assert {e["field"] for e in caught.value.errors} == {"plans.basic.packages_on_account"}
    on = MINIMAL.replace('credit_price = "0.1"', 'credit_price = "0.1"\npackages_on_account = true')
    assert parse_catalog(on, "on.toml").plans["basic"].packages_on_account


def test_the_file_named_by_the_environment_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "plans.toml"
    path.write_text('time_zone = "Europe/Berlin"\n' + MINIMAL)
    monkeypatch.setenv(PLANS_ENV, str(path))
    catalog = load_catalog()
    assert catalog.time_zone == "Europe/Berlin"
    assert list(catalog.plans) == ["basic"]
    assert load_catalog() is catalog  # cached
    assert Settings.from_env().plans_path == str(path)


def test_an_unreadable_file_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PLANS_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(PlansError, match=f"missing.toml \\(named by {PLANS_ENV}\\)"):
        load_catalog()


def test_every_problem_is_reported_at_once() -> None:
    bad = """
time_zone = "Mars/Olympus"
colour = "blue"

[plans.standard]
name = "Standard"
monthly_fee = 49.0
currency = "usd"
allocation_credits = 1000.5
rollover_cycles = -1
credit_price = "0.0000001"
purchase_expiry_months = 0

[plans.Gold]
name = "Gold"
monthly_fee = 100
currency = "USD"
credit_price = "1"

[custom_packages]
min_credits = "10"
max_credits = "5"
step_credits = "3"
"""
    with pytest.raises(PlansError) as caught:
        parse_catalog(bad, "bad.toml")
    error = caught.value
    assert error.status_code == 500
    assert error.code == "invalid_plans"
    fields = {e["field"] for e in error.errors}
    assert {
        "time_zone",
        "colour",
        "plans.standard.monthly_fee",
        "plans.standard.currency",
        "plans.standard.allocation_credits",
        "plans.standard.rollover_cycles",
        "plans.standard.credit_price",
        "plans.standard.purchase_expiry_months",
        "plans.Gold.[key]",
        "custom_packages",
    } <= fields
    messages = {e["field"]: e["message"] for e in error.errors}
    assert "floats are inexact" in messages["plans.standard.allocation_credits"]
    assert "minor units" in messages["plans.standard.monthly_fee"]
    assert "Europe/Berlin" in messages["time_zone"]
    assert error.detail.startswith("invalid plans file bad.toml: ")


def test_a_fixed_plan_needs_an_allocation() -> None:
    with pytest.raises(PlansError, match="allocation_credits is required unless custom_terms"):
        parse_catalog(MINIMAL.replace('allocation_credits = "500"\n', ""), "x.toml")


def test_plans_share_one_currency() -> None:
    other = (
        MINIMAL
        + """
[plans.other]
name = "Other"
monthly_fee = 1000
currency = "USD"
allocation_credits = "500"
credit_price = "0.1"
"""
    )
    with pytest.raises(PlansError, match="one currency"):
        parse_catalog(other, "x.toml")


def test_custom_package_bounds_are_multiples_of_the_step() -> None:
    with pytest.raises(PlansError, match="multiples of step_credits"):
        parse_catalog(MINIMAL.replace('min_credits = "10"', 'min_credits = "15"'), "x.toml")


def test_not_toml_at_all() -> None:
    with pytest.raises(PlansError, match="not valid TOML"):
        parse_catalog("[plans", "x.toml")
