"""The shortcuts of batched ingest give exactly what the long way gives.

A batch prices each distinct shape once (``PriceCache``), fingerprints each distinct body once
(``fingerprints``) and validates the whole list in one call (``parse_events``); for any mix of events —
repeated, near-identical (``1`` and ``"1"``, ``1`` and ``1.0``, equal instants in other time zones) and
invalid — each must answer what pricing, fingerprinting and validating that event alone answers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from creditmeter.api.schemas_metering import UsageEventIn, parse_events
from creditmeter.metering.domain import EventInput, fingerprints
from creditmeter.pricing import PricingError, load_rate_card, price
from creditmeter.pricing.cache import PriceCache

CARD = load_rate_card()
START = CARD.versions[-1].effective_at

quantity_values = st.one_of(
    st.sampled_from(["1200", "300", "0", "0.5", "3600", "1e3", "-1", "abc", "01", " 5"]),
    st.integers(-2, 5_000),
    st.sampled_from([1.0, 0.5, True, False, None, Decimal("1.0"), Decimal("1.00")]),
)
selector_values = st.sampled_from(["a100", "h100", "l4", "standard", "highmem", "nope", 1, None])
quantity_dicts = st.dictionaries(
    st.sampled_from(
        ["input_tokens", "output_tokens", "gpu_seconds", "cpu_seconds", "data_gb", "bogus"]
    ),
    quantity_values,
    max_size=4,
) | st.builds(
    lambda q, a: {**q, "accelerator": a},
    st.dictionaries(st.sampled_from(["gpu_seconds"]), quantity_values, max_size=1),
    selector_values,
)
operations = st.sampled_from(["inference", "training", "data_processing", "nope"])
# every hour of a week: the off-peak windows are in and out
moments = st.integers(0, 24 * 7 - 1).map(lambda h: START + timedelta(days=1, hours=h, minutes=7))


def outcome(call: Any) -> Any:
    try:
        return call()
    except PricingError as exc:
        return ("error", exc.code, exc.detail, exc.errors)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(operations, quantity_dicts, moments, st.booleans()), min_size=1, max_size=12
    ),
    st.data(),
)
def test_a_cached_price_is_the_price(shapes: list[Any], data: st.DataObject) -> None:
    # repeats are what the cache is for: draw the batch from the shapes, with replacement
    batch = data.draw(st.lists(st.sampled_from(shapes), min_size=1, max_size=30))
    cache = PriceCache()
    for operation, quantities, at, cache_hit in batch:
        version = CARD.version_at(at)
        args = (version, operation, quantities, at, cache_hit)
        expected = outcome(lambda args=args: price(*args))
        got = outcome(lambda args=args: cache.price(*args))
        assert got == expected


def test_a_batch_of_one_shape_is_priced_once() -> None:
    cache = PriceCache()
    at = START + timedelta(days=3)
    version = CARD.version_at(at)
    prices = {
        id(cache.price(version, "inference", {"input_tokens": "1200"}, at)) for _ in range(100)
    }
    assert len(prices) == 1
    assert len(cache) == 1
    # the same numbers sent as an integer are another shape, with the same price
    assert cache.price(version, "inference", {"input_tokens": 1200}, at) == price(
        version, "inference", {"input_tokens": 1200}, at
    )
    assert len(cache) == 2


plus_two = timezone(timedelta(hours=2))
instants = st.sampled_from(
    [
        None,
        datetime(2026, 5, 1, 12, tzinfo=UTC),
        datetime(2026, 5, 1, 14, tzinfo=plus_two),  # the same instant, another offset
        datetime(2026, 5, 1, 12, 0, 0, 1, tzinfo=UTC),
    ]
)
events = st.builds(
    EventInput,
    id=st.sampled_from(["a", "b"]),
    organization=st.sampled_from(["org_1", "org_2"]),
    operation=st.sampled_from(["inference", "training"]),
    quantities=st.dictionaries(
        st.sampled_from(["input_tokens", "gpu_seconds"]),
        st.sampled_from(["1", 1, 1.0, True, "1.0", Decimal("1.0"), Decimal("1.00"), None]),
        max_size=2,
    ),
    project=st.sampled_from([None, "p", 1]),
    member=st.sampled_from([None, "m@example.com"]),
    occurred_at=instants,
    cache_hit=st.sampled_from([False, True, 1, 0]),
    hold=st.sampled_from([None, "hold_1"]),
    metadata=st.sampled_from([None, {}, {"k": "v"}, {"k": 1}, {"k": 1.0}]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=25))
def test_batch_fingerprints_are_each_events_fingerprint(batch: list[EventInput]) -> None:
    assert fingerprints(batch) == [e.fingerprint() for e in batch]


raw_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1, 3),
    st.sampled_from(
        ["", "x", "org_1", "a\x00b", "x" * 256, "2026-05-01T12:00:00Z", "2026-05-01T12:00:00"]
    ),
    st.just(1.5),
    st.just({"input_tokens": "1200"}),
    st.just([1]),
    st.just({"k": [[[]]]}),
)
raw_events = st.one_of(
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "organization",
                "operation",
                "project",
                "member",
                "quantities",
                "occurred_at",
                "cache_hit",
                "hold",
                "metadata",
                "extra",
            ]
        ),
        raw_values,
    ),
    st.builds(
        lambda i, extra: {
            "id": i,
            "organization": "org_1",
            "operation": "inference",
            "quantities": {"input_tokens": "1200"},
            **extra,
        },
        st.sampled_from(["e1", "e2", "", 7]),
        st.dictionaries(st.sampled_from(["cache_hit", "occurred_at", "metadata"]), raw_values),
    ),
    st.sampled_from([None, 3, "event", []]),
)


def alone(raw: Any) -> Any:
    try:
        return UsageEventIn.model_validate(raw).to_input()
    except ValidationError as exc:
        return exc.errors(include_url=False, include_context=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_events, min_size=1, max_size=12))
def test_validating_a_batch_at_once_equals_validating_each_event(raw: list[Any]) -> None:
    got = [
        p.errors(include_url=False, include_context=False) if isinstance(p, ValidationError) else p
        for p in parse_events(raw)
    ]
    assert got == [alone(r) for r in raw]
