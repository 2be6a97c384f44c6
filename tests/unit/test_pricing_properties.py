"""Properties of pricing, checked against an independent model in exact fractions.

The model: total = max(minimum, (base + sum(quantity x rate)) x class x off-peak x cache-hit), rounded
once, half to even, to whole micro-credits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from creditmeter.pricing import (
    OffPeak,
    OperationRates,
    PricingError,
    Rate,
    RateCard,
    RateCardVersion,
    exact_total,
    price,
)
from creditmeter.pricing.domain import largest_remainder

DAY = datetime(2026, 3, 2, tzinfo=UTC)
DIMENSIONS = ("cpu_seconds", "data_gb", "input_tokens", "output_tokens")


def decimals(top: int, min_places: int, max_places: int) -> st.SearchStrategy[Decimal]:
    """Exact decimals n x 10^-p with 0 <= n <= top and min_places <= p <= max_places."""
    return st.builds(
        lambda n, p: Decimal(n).scaleb(-p),
        st.integers(0, top),
        st.integers(min_places, max_places),
    )


rates = decimals(999_999, 3, 12)  # at most 999.999 credits per unit, down to 10^-12
quantities = decimals(10**9, 2, 6)  # at most 10^7 units, up to 6 decimal places
multipliers = st.integers(1, 40_000).map(lambda n: Decimal(n).scaleb(-4))  # (0, 4]
discounts = st.integers(0, 10_000).map(lambda n: Decimal(n).scaleb(-4))  # [0, 1]
windows = st.tuples(st.integers(0, 23), st.integers(0, 24)).filter(lambda w: w[0] != w[1] % 24)


@dataclass(frozen=True)
class Case:
    version: RateCardVersion
    quantities: dict[str, object]
    at: datetime
    cache_hit: bool
    base: Decimal
    minimum: Decimal
    dim_rates: dict[str, Decimal]
    instance: Decimal
    off_peak: Decimal
    cache: Decimal

    def model(self, scale: int = 1) -> Fraction:
        total = Fraction(self.base)
        for dim, rate in self.dim_rates.items():
            total += Fraction(str(self.quantities[dim])) * scale * Fraction(rate)
        total *= Fraction(self.instance) * Fraction(self.off_peak) * Fraction(self.cache)
        return max(total, Fraction(self.minimum))


@st.composite
def cases(draw: st.DrawFn, base_and_minimum: bool = True) -> Case:
    dims = draw(st.lists(st.sampled_from(DIMENSIONS), min_size=1, unique=True))
    dim_rates = {d: draw(rates) for d in dims}
    gpu_rate = draw(rates)
    dim_rates["gpu_seconds"] = gpu_rate
    base = draw(decimals(999_999, 3, 6)) if base_and_minimum else Decimal(0)
    minimum = draw(decimals(99_999, 3, 6)) if base_and_minimum else Decimal(0)
    instance = draw(multipliers)
    off_peak_multiplier = draw(discounts)
    cache_multiplier = draw(discounts)
    window = draw(windows)
    hour = draw(st.integers(0, 23))
    cache_hit = draw(st.booleans())
    off_peak = OffPeak("UTC", UTC, (window,), Rate.of(off_peak_multiplier, "off_peak"))
    op = OperationRates(
        name="job",
        description="",
        base=Rate.of(base, "base"),
        minimum=Rate.of(minimum, "minimum_charge"),
        rates={d: Rate.of(r, d) for d, r in dim_rates.items() if d != "gpu_seconds"},
        gpu_rates={"a100": Rate.of(gpu_rate, "gpu_seconds:a100")},
        default_accelerator="a100",
        instance_classes={"big": Rate.of(instance, "instance_class:big")},
        default_instance_class="big",
        off_peak=off_peak,
        cache_hit=Rate.of(cache_multiplier, "cache_hit"),
    )
    version = RateCardVersion("v", DAY, "", {"job": op}, off_peak, None)
    qs: dict[str, object] = {d: format(draw(quantities), "f") for d in dim_rates}
    at = DAY + timedelta(hours=hour, minutes=draw(st.integers(0, 59)))
    return Case(
        version=version,
        quantities=qs,
        at=at,
        cache_hit=cache_hit,
        base=base,
        minimum=minimum,
        dim_rates=dim_rates,
        instance=instance,
        off_peak=off_peak_multiplier if off_peak.applies(at) else Decimal(1),
        cache=cache_multiplier if cache_hit else Decimal(1),
    )


def micros(credits: Fraction) -> int:
    return round(credits * 10**6)  # round() on a Fraction is half to even


def priced(case: Case, at: datetime | None = None, cache_hit: bool | None = None) -> int:
    when = case.at if at is None else at
    hit = case.cache_hit if cache_hit is None else cache_hit
    return price(case.version, "job", case.quantities, when, hit).total_micros


@given(cases())
def test_breakdown_credits_sum_exactly_to_the_total(case: Case) -> None:
    p = price(case.version, "job", case.quantities, case.at, case.cache_hit)
    assert sum(line.credits_micros for line in p.lines) == p.total_micros


@given(cases())
def test_the_total_is_the_exact_formula_rounded_once_half_even(case: Case) -> None:
    p = price(case.version, "job", case.quantities, case.at, case.cache_hit)
    exact = exact_total(case.version, "job", case.quantities, case.at, case.cache_hit)
    assert Fraction(exact) == case.model()
    assert p.total_micros == micros(case.model())


@given(cases(base_and_minimum=False), st.integers(0, 1000))
def test_scaling_quantities_scales_the_exact_total(case: Case, k: int) -> None:
    scaled = {d: format(Decimal(str(q)) * k, "f") for d, q in case.quantities.items()}
    before = exact_total(case.version, "job", case.quantities, case.at, case.cache_hit)
    after = exact_total(case.version, "job", scaled, case.at, case.cache_hit)
    assert Fraction(after) == Fraction(before) * k  # Fraction: the default Decimal context rounds


@given(cases())
def test_discounts_never_increase_the_price(case: Case) -> None:
    assert priced(case, cache_hit=True) <= priced(case, cache_hit=False)
    window = case.version.off_peak
    assert window is not None
    on = [case.at.replace(hour=h) for h in range(24) if window.hours[h]]
    off = [case.at.replace(hour=h) for h in range(24) if not window.hours[h]]
    if on and off:
        assert priced(case, at=on[0]) <= priced(case, at=off[0])


@given(cases())
def test_the_minimum_charge_is_respected(case: Case) -> None:
    assert priced(case) >= micros(Fraction(case.minimum))


@given(st.lists(windows, min_size=1, max_size=3), st.integers(0, 23), st.integers(0, 59))
def test_off_peak_windows_may_wrap_midnight(
    spans: list[tuple[int, int]], hour: int, minute: int
) -> None:
    off_peak = OffPeak("UTC", UTC, tuple(spans), Rate.of(Decimal("0.5"), "off_peak"))

    def inside(start: int, end: int) -> bool:
        end %= 24
        return start <= hour < end if start < end else hour >= start or hour < end

    expected = any(inside(s, e) for s, e in spans)
    assert off_peak.applies(DAY.replace(hour=hour, minute=minute)) == expected


@given(
    st.lists(st.integers(0, 10_000), min_size=1, max_size=6, unique=True),
    st.integers(-100, 10_100),
    st.booleans(),
)
def test_an_event_is_priced_by_the_version_in_force(
    starts: list[int], minute: int, on_boundary: bool
) -> None:
    def version(n: int) -> RateCardVersion:
        base = Rate.of(Decimal(n + 1), "base")
        zero = Rate.of(Decimal(0), "minimum_charge")
        op = OperationRates("job", "", base, zero, {}, {}, None, {}, None, None, None)
        return RateCardVersion(f"v{n}", DAY + timedelta(minutes=n), "", {"job": op}, None, None)

    card = RateCard(tuple(version(n) for n in sorted(starts)), "t")
    if on_boundary:
        minute = starts[minute % len(starts)]
    at = DAY + timedelta(minutes=minute)
    in_force = [n for n in starts if n <= minute]
    if not in_force:
        with pytest.raises(PricingError) as caught:
            card.price("job", {}, at)
        assert caught.value.code == "no_rate_card_version"
        return
    p = card.price("job", {}, at)
    assert p.version == f"v{max(in_force)}"
    assert p.total_micros == (max(in_force) + 1) * 1_000_000


@given(st.lists(st.integers(-(10**9), 10**9).map(lambda n: Decimal(n).scaleb(-4)), max_size=8))
def test_largest_remainder_moves_each_value_by_less_than_one(values: list[Decimal]) -> None:
    total = round(sum(Fraction(v) for v in values))
    split = largest_remainder(values, total)
    assert sum(split) == total
    for part, value in zip(split, values, strict=True):
        assert abs(part - value) < 1
        if value == int(value):
            assert part == value
