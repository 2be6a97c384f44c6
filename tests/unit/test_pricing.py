"""Pricing one event: worked examples of every line of the breakdown, and every refusal.

The card below is small and written out in full so each figure can be checked by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from creditmeter.errors import InvalidRequest
from creditmeter.pricing import (
    ROUNDING,
    Price,
    PricingError,
    RateCardVersion,
    exact_total,
    parse_rate_card,
    price,
)
from creditmeter.pricing.domain import largest_remainder, parse_quantity

CARD = """
[[versions]]
version = "v1"
effective_at = 2026-01-01T00:00:00Z

[versions.off_peak]
time_zone = "UTC"
windows = [[22, 6]]
multiplier = "0.8"

[versions.cache_hit]
multiplier = "0.5"

[versions.operations.training]
base = "1"
minimum = "2"
cache_hit_multiplier = "1"
[versions.operations.training.rates]
cpu_seconds = "0.00002"
data_gb = "0.05"
[versions.operations.training.rates.gpu_seconds]
a100 = "0.0012"
h100 = "0.002"
[versions.operations.training.instance_classes]
standard = "1"
highmem = "1.25"
gpu-large = "2"

[versions.operations.inference]
minimum = "0.0001"
default_accelerator = "l4"
off_peak = false
[versions.operations.inference.rates]
input_tokens = { credits = "0.002", per = 1000 }
output_tokens = "0.000006"
[versions.operations.inference.rates.gpu_seconds]
l4 = "0.0003"

[versions.operations.embedding]
[versions.operations.embedding.rates]
input_tokens = "0.0000001"
"""

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
NIGHT = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def v1() -> RateCardVersion:
    return parse_rate_card(CARD, "test card").versions[0]


def lines(p: Price) -> list[tuple[str, str | None, str | None, int]]:
    return [(x.component, x.quantity, x.rate, x.credits_micros) for x in p.lines]


def refusal(v1: RateCardVersion, operation: str, quantities: Any, **kw: Any) -> PricingError:
    with pytest.raises(PricingError) as caught:
        price(v1, operation, quantities, kw.pop("at", NOON), **kw)
    assert caught.value.status_code == 422
    assert isinstance(caught.value, InvalidRequest)
    return caught.value


# --- worked examples -------------------------------------------------------------------------


def test_an_inference_request_pays_for_its_tokens(v1: RateCardVersion) -> None:
    p = price(v1, "inference", {"input_tokens": "1200", "output_tokens": 350}, NOON)
    assert p.total_micros == 2400 + 2100
    assert lines(p) == [
        ("input_tokens", "1200", "0.000002", 2400),
        ("output_tokens", "350", "0.000006", 2100),
    ]
    assert p.version == "v1"


def test_the_breakdown_as_json_uses_decimal_strings(v1: RateCardVersion) -> None:
    p = price(v1, "inference", {"input_tokens": "1200", "output_tokens": "350"}, NOON)
    assert p.to_json() == {
        "credits": "0.0045",
        "rate_card_version": "v1",
        "breakdown": [
            {
                "component": "input_tokens",
                "quantity": "1200",
                "rate": "0.000002",
                "credits": "0.0024",
            },
            {
                "component": "output_tokens",
                "quantity": "350",
                "rate": "0.000006",
                "credits": "0.0021",
            },
        ],
    }


def test_a_training_hour_on_an_a100_with_a_highmem_machine(v1: RateCardVersion) -> None:
    quantities = {"gpu_seconds": "3600", "accelerator": "a100", "instance_class": "highmem"}
    p = price(v1, "training", quantities, NOON)
    # (1 base + 3600 x 0.0012) x 1.25 = 5.32 x 1.25 = 6.65
    assert lines(p) == [
        ("base", None, "1", 1_000_000),
        ("gpu_seconds:a100", "3600", "0.0012", 4_320_000),
        ("instance_class:highmem", None, "1.25", 1_330_000),
    ]
    assert p.total_micros == 6_650_000


def test_dimension_lines_follow_the_card_not_the_request(v1: RateCardVersion) -> None:
    p = price(v1, "training", {"data_gb": "2", "cpu_seconds": "100"}, NOON)
    assert [x.component for x in p.lines][:3] == ["base", "cpu_seconds", "data_gb"]


def test_off_peak_is_a_negative_line_after_the_class_multiplier(v1: RateCardVersion) -> None:
    quantities = {"gpu_seconds": "3600", "accelerator": "h100", "instance_class": "gpu-large"}
    p = price(v1, "training", quantities, NIGHT)
    # (1 + 7.2) x 2 = 16.4; x 0.8 = 13.12
    assert lines(p)[-2:] == [
        ("instance_class:gpu-large", None, "2", 8_200_000),
        ("off_peak", None, "0.8", -3_280_000),
    ]
    assert p.total_micros == 13_120_000


def test_off_peak_window_wraps_midnight(v1: RateCardVersion) -> None:
    q = {"cpu_seconds": "100000"}
    at = datetime(2026, 3, 2, tzinfo=UTC)
    discounted = {h for h in range(24) if "off_peak" in components(v1, q, at + timedelta(hours=h))}
    assert discounted == {22, 23, 0, 1, 2, 3, 4, 5}


def components(v1: RateCardVersion, q: Mapping[str, object], at: datetime) -> list[str]:
    return [x.component for x in price(v1, "training", q, at).lines]


def test_an_operation_can_opt_out_of_off_peak(v1: RateCardVersion) -> None:
    p = price(v1, "inference", {"output_tokens": "1000"}, NIGHT)
    assert [x.component for x in p.lines] == ["output_tokens"]


def test_off_peak_hours_are_read_in_the_cards_time_zone() -> None:
    card = CARD.replace('time_zone = "UTC"', 'time_zone = "America/New_York"')
    v = parse_rate_card(card, "ny").versions[0]
    q = {"cpu_seconds": "100000"}
    # 03:00 UTC is 22:00 in New York in winter (UTC-5) and 23:00 in summer (UTC-4): off-peak both
    assert "off_peak" in components(v, q, datetime(2026, 1, 15, 3, tzinfo=UTC))
    assert "off_peak" in components(v, q, datetime(2026, 7, 15, 3, tzinfo=UTC))
    # 10:30 UTC is 05:30 in winter (off-peak) but 06:30 in summer (not)
    assert "off_peak" in components(v, q, datetime(2026, 1, 15, 10, 30, tzinfo=UTC))
    assert "off_peak" not in components(v, q, datetime(2026, 7, 15, 10, 30, tzinfo=UTC))


def test_an_event_in_another_offset_is_the_same_instant(v1: RateCardVersion) -> None:
    berlin_night = datetime(2026, 3, 3, 0, 30, tzinfo=timezone(timedelta(hours=1)))  # 23:30 UTC
    assert "off_peak" in components(v1, {"cpu_seconds": "100000"}, berlin_night)


def test_a_cache_hit_halves_the_price(v1: RateCardVersion) -> None:
    q = {"input_tokens": "1000", "output_tokens": "1000"}
    p = price(v1, "inference", q, NOON, cache_hit=True)
    assert lines(p)[-1] == ("cache_hit", None, "0.5", -4000)
    assert p.total_micros == 4000


def test_a_cache_hit_multiplier_of_one_adds_no_line(v1: RateCardVersion) -> None:
    p = price(v1, "training", {"cpu_seconds": "100000"}, NOON, cache_hit=True)
    assert "cache_hit" not in [x.component for x in p.lines]


def test_the_minimum_charge_tops_up_a_small_event(v1: RateCardVersion) -> None:
    p = price(v1, "inference", {"input_tokens": "10"}, NOON)
    assert lines(p) == [
        ("input_tokens", "10", "0.000002", 20),
        ("minimum_charge", None, "0.0001", 80),
    ]
    assert p.total_micros == 100


def test_the_minimum_applies_after_every_discount(v1: RateCardVersion) -> None:
    # base 1 + 50000 cpu-s x 0.00002 = 2; off-peak 0.8 makes it 1.6; the minimum 2 tops it up
    p = price(v1, "training", {"cpu_seconds": "50000"}, NIGHT)
    assert lines(p)[-2:] == [
        ("off_peak", None, "0.8", -400_000),
        ("minimum_charge", None, "2", 400_000),
    ]
    assert p.total_micros == 2_000_000


def test_an_event_with_no_quantities_pays_the_base_or_minimum(v1: RateCardVersion) -> None:
    assert price(v1, "training", {}, NOON).total_micros == 2_000_000
    assert price(v1, "embedding", {}, NOON).lines == ()
    assert price(v1, "embedding", {}, NOON).total_micros == 0


def test_gpu_seconds_without_accelerator_use_the_default(v1: RateCardVersion) -> None:
    p = price(v1, "inference", {"gpu_seconds": "60"}, NOON)
    assert lines(p) == [("gpu_seconds:l4", "60", "0.0003", 18_000)]


def test_quantities_may_be_integers_or_decimals(v1: RateCardVersion) -> None:
    as_text = price(v1, "training", {"data_gb": "1.5"}, NOON)
    assert price(v1, "training", {"data_gb": Decimal("1.5")}, NOON) == as_text
    assert price(v1, "training", {"data_gb": 3}, NOON).lines[1].quantity == "3"


# --- the one rounding step ---------------------------------------------------------------


def test_rounding_is_half_even_and_named() -> None:
    assert ROUNDING == "ROUND_HALF_EVEN"


@pytest.mark.parametrize(
    ("tokens", "micros"),
    [("5", 0), ("15", 2), ("25", 2), ("35", 4), ("4", 0), ("6", 1)],
)
def test_the_total_rounds_half_to_even(v1: RateCardVersion, tokens: str, micros: int) -> None:
    # 0.0000001 credits = 0.1 micros per token: 5 tokens = 0.5 micros -> 0, 15 = 1.5 -> 2, 25 = 2.5 -> 2
    assert price(v1, "embedding", {"input_tokens": tokens}, NOON).total_micros == micros


def test_rounding_happens_once_not_per_line(v1: RateCardVersion) -> None:
    # each line alone is 0.4 micros (rounds to 0), together 0.8 (rounds to 1)
    card = CARD.replace('input_tokens = "0.0000001"', 'a = "0.0000004"\nb = "0.0000004"')
    v = parse_rate_card(card, "t").versions[0]
    p = price(v, "embedding", {"a": 1, "b": 1}, NOON)
    assert p.total_micros == 1
    assert [x.credits_micros for x in p.lines] == [1, 0]  # largest remainder, earlier first on ties


def test_exact_total_is_what_gets_rounded(v1: RateCardVersion) -> None:
    assert exact_total(v1, "embedding", {"input_tokens": "25"}, NOON) == Decimal("0.0000025")


def test_largest_remainder_gives_units_to_the_biggest_fractions() -> None:
    values = [Decimal("1.2"), Decimal("2.7"), Decimal("-0.4")]  # sum 3.5 -> 4 (half-even)
    assert largest_remainder(values, 4) == [1, 3, 0]
    assert largest_remainder([Decimal(5), Decimal(-2)], 3) == [5, -2]


def test_a_discount_line_can_round_down_to_its_floor(v1: RateCardVersion) -> None:
    # 3 tokens x 0.000006 = 18 micros; cache-hit 0.5 -> -9 -> 9 total; all whole
    p = price(v1, "inference", {"output_tokens": "3"}, NOON, cache_hit=True)
    assert [x.credits_micros for x in p.lines] == [18, -9, 91]
    assert p.total_micros == 100


# --- refusals ------------------------------------------------------------------------------


def test_unknown_operation_lists_the_priced_ones(v1: RateCardVersion) -> None:
    err = refusal(v1, "trainng", {})
    assert err.code == "unknown_operation"
    assert "embedding, inference, training" in err.detail
    assert err.errors == [
        {
            "field": "operation",
            "message": "send one of: embedding, inference, training",
            "type": "unknown_operation",
        }
    ]


def test_unknown_dimension_lists_the_accepted_ones(v1: RateCardVersion) -> None:
    err = refusal(v1, "inference", {"input_tokens": "1", "images": "3"})
    assert err.code == "unknown_dimension"
    assert err.errors[0]["field"] == "quantities.images"
    assert "gpu_seconds, input_tokens, output_tokens" in err.errors[0]["message"]


def test_a_dimension_the_operation_does_not_price_is_refused(v1: RateCardVersion) -> None:
    err = refusal(v1, "embedding", {"gpu_seconds": "10"})
    assert err.code == "unknown_dimension"
    assert "send only: input_tokens" in err.errors[0]["message"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (3.5, "send quantities as decimal strings or integers"),
        (True, "not true/false"),
        (None, "send quantities as decimal strings or integers"),
        ([1], "send quantities as decimal strings or integers"),
        ("-5", "negative"),
        (-5, "negative"),
        ("abc", "is not a number"),
        ("", "is not a number"),
        ("NaN", "NaN and Infinity"),
        ("Infinity", "NaN and Infinity"),
        (Decimal("NaN"), "NaN and Infinity"),
        ("1.0000000000001", "more than 12 decimal places"),
        (Decimal("1E-13"), "more than 12 decimal places"),
        ("1e3", "plain decimal notation"),
        (" 5", "plain decimal notation"),
        ("007", "plain decimal notation"),
        ("1_000", "plain decimal notation"),
        ("+5", "plain decimal notation"),
        ("1000000000000001", "too large"),
        ("9999999999999999", "too large"),
        (10**16, "too large"),
        ("9" * 100, "too long"),
    ],
)
def test_bad_quantities_say_what_to_send(v1: RateCardVersion, value: object, says: str) -> None:
    err = refusal(v1, "training", {"cpu_seconds": value})
    assert err.code == "invalid_quantity"
    assert err.errors[0]["field"] == "quantities.cpu_seconds"
    assert says in err.errors[0]["message"]


def test_quantities_at_the_limits_are_accepted() -> None:
    assert parse_quantity("1000000000000000") == ("1000000000000000", Decimal(10**15))
    assert parse_quantity("0.000000000001") == ("0.000000000001", Decimal("1E-12"))
    assert parse_quantity("0") == ("0", Decimal(0))
    assert parse_quantity(Decimal("-0")) == ("0", Decimal(0))


def test_gpu_seconds_need_an_accelerator(v1: RateCardVersion) -> None:
    err = refusal(v1, "training", {"gpu_seconds": "10"})
    assert err.code == "unknown_class"
    assert err.errors == [
        {
            "field": "quantities.accelerator",
            "message": 'gpu_seconds needs an accelerator: add "accelerator": one of a100, h100',
            "type": "unknown_class",
        }
    ]


@pytest.mark.parametrize(
    ("selector", "value"),
    [("accelerator", "v100"), ("accelerator", 100), ("instance_class", "huge")],
)
def test_unknown_classes_list_the_configured_ones(
    v1: RateCardVersion, selector: str, value: object
) -> None:
    err = refusal(v1, "training", {"gpu_seconds": "10", "accelerator": "a100", selector: value})
    assert err.code == "unknown_class"
    assert err.errors[0]["field"] == f"quantities.{selector}"
    assert "send one of:" in err.errors[0]["message"]


def test_a_selector_the_operation_has_no_classes_for(v1: RateCardVersion) -> None:
    err = refusal(v1, "inference", {"input_tokens": "1", "instance_class": "highmem"})
    assert err.code == "unknown_dimension"
    assert err.errors[0]["field"] == "quantities.instance_class"


def test_every_problem_is_reported_at_once(v1: RateCardVersion) -> None:
    err = refusal(v1, "training", {"x": 1, "cpu_seconds": 1.5, "accelerator": "v100"})
    assert [(e["field"], e["type"]) for e in err.errors] == [
        ("quantities.x", "unknown_dimension"),
        ("quantities.cpu_seconds", "invalid_quantity"),
        ("quantities.accelerator", "unknown_class"),
    ]
    assert err.code == "unknown_dimension"


def test_quantities_must_be_a_mapping(v1: RateCardVersion) -> None:
    err = refusal(v1, "training", ["cpu_seconds"])
    assert err.errors[0]["field"] == "quantities"


def test_a_naive_occurred_at_is_refused(v1: RateCardVersion) -> None:
    err = refusal(v1, "training", {}, at=datetime(2026, 3, 2, 12))
    assert err.code == "invalid_occurred_at"


def test_a_price_beyond_the_largest_amount_is_refused() -> None:
    card = CARD.replace('data_gb = "0.05"', 'data_gb = "1000000"')
    v = parse_rate_card(card, "t").versions[0]
    err = refusal(v, "training", {"data_gb": "1000000000000000"})
    assert err.code == "invalid_quantity"
