"""Properties of billing periods, expiry and proration, in UTC and in zones with daylight saving
(including half-hour shifts and a midnight that does not exist)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from fractions import Fraction
from itertools import pairwise
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from creditmeter.billing import domain as d

ZONES: list[tzinfo] = [
    UTC,
    ZoneInfo("Europe/Berlin"),
    ZoneInfo("America/New_York"),
    ZoneInfo("America/Asuncion"),  # clocks jump at midnight
    ZoneInfo("Australia/Lord_Howe"),  # a 30-minute daylight-saving shift
    ZoneInfo("Pacific/Apia"),  # skipped a whole day in 2011
    ZoneInfo("Asia/Kathmandu"),
]
US = timedelta(microseconds=1)

#: No per-example deadline: the machine is shared, and a zone's first use reads its tzdata file.
PROPERTY = settings(deadline=None)
zones = st.sampled_from(ZONES)
instants = st.datetimes(
    min_value=datetime(1995, 1, 1),  # hypothesis wants naive bounds
    max_value=datetime(2060, 12, 31),
    timezones=st.just(UTC),
)


@PROPERTY
@given(instants, zones)
def test_every_instant_lies_in_exactly_one_period(instant: datetime, zone: tzinfo) -> None:
    period = d.period_of(instant, zone)
    assert period.start <= instant < period.end
    before, after = d.shift(period, -1, zone), d.shift(period, 1, zone)
    assert before.end == period.start  # contiguous: no gap, no overlap
    assert after.start == period.end
    assert not before.contains(instant)
    assert not after.contains(instant)
    assert d.period_of(period.start, zone) == period
    assert d.period_of(period.end - US, zone) == period
    assert d.period_of(period.end, zone) == after


@PROPERTY
@given(st.integers(1995, 2059), zones)
def test_a_years_periods_chain_without_gaps(year: int, zone: tzinfo) -> None:
    periods = [d.period(year, month, zone) for month in range(1, 13)]
    for earlier, later in pairwise(periods):
        assert earlier.end == later.start
    assert periods[-1].end == d.period(year + 1, 1, zone).start
    lengths = {p.end - p.start for p in periods}
    assert all(timedelta(days=27) < length < timedelta(days=32) for length in lengths)


@PROPERTY
@given(instants, zones, st.integers(0, 1000 * 1_000_000 * 1_000_000))
def test_proration_never_exceeds_the_full_amount(
    instant: datetime, zone: tzinfo, amount: int
) -> None:
    period = d.period_of(instant, zone)
    share = d.share_remaining(period, instant)
    prorated = d.prorate(amount, share)
    assert 0 <= prorated <= amount
    exact = Fraction(amount * share.remaining_us, share.total_us)
    assert abs(prorated - exact) <= Fraction(1, 2)  # rounded once, to the nearest unit


@PROPERTY
@given(instants, zones, st.integers(0, 10**15), st.integers(0, 40 * 86_400_000_000))
def test_proration_is_monotone_in_time(
    instant: datetime, zone: tzinfo, amount: int, later_by_us: int
) -> None:
    period = d.period_of(instant, zone)
    later = min(instant + timedelta(microseconds=later_by_us), period.end - US)
    early = d.prorate(amount, d.share_remaining(period, instant))
    late = d.prorate(amount, d.share_remaining(period, later))
    assert late <= early


@PROPERTY
@given(instants, zones, st.one_of(st.none(), st.integers(0, 36)))
def test_a_plan_lot_expires_on_a_cycle_boundary_after_its_cycle(
    instant: datetime, zone: tzinfo, rollover: int | None
) -> None:
    period = d.period_of(instant, zone)
    expiry = d.plan_lot_expiry(period, rollover, zone)
    if rollover is None:
        assert expiry is None
        return
    assert expiry is not None
    assert expiry >= period.end > instant
    assert d.period_of(expiry, zone).start == expiry  # a boundary
    assert expiry == d.shift(period, rollover + 1, zone).start


@settings(max_examples=200, deadline=None)
@given(instants, zones, st.integers(1, 120))
def test_purchase_expiry_is_the_same_day_clamped_n_months_later(
    instant: datetime, zone: tzinfo, months: int
) -> None:
    expiry = d.purchase_expiry(instant, months, zone)
    assert expiry is not None
    assert expiry > instant
    bought, until = instant.astimezone(zone), expiry.astimezone(zone)
    assert (until.year * 12 + until.month) - (bought.year * 12 + bought.month) == months
    last_day = (d.period(until.year, until.month, UTC).end - timedelta(days=1)).day
    assert until.day == min(bought.day, last_day)
