"""GET /v1/rate-card and POST /v1/estimate: the price book in force (or at ``?at=``), and the exact
price of an operation with its breakdown, without recording anything (DESIGN.md §2 "Rate card")."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from tests.metering import (
    H100_HOUR,
    T0,
    TOKENS,
    Headers,
    assert_breakdown_sums,
    assert_clean,
    assert_problem,
    dec,
    state_of,
)


@pytest.fixture(autouse=True)
def _noon(db: Database) -> Iterator[None]:
    """Every test runs at noon on 10 March 2026, and the ledger proves itself afterwards."""
    with clock.frozen_at(T0):
        yield
    assert_clean(db)


@pytest.fixture
def org(make_org: Callable[..., str]) -> str:
    return make_org("Acme")


@pytest.fixture
def key(org: str, make_key: Callable[..., Headers]) -> Headers:
    return make_key(org, "org:read")


def estimate(client: TestClient, headers: Headers, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/estimate", json=body, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert set(result) == {"credits", "breakdown", "rate_card_version"}
    assert_breakdown_sums(result)
    return result


def no_floats(value: Any) -> bool:
    if isinstance(value, float):
        return False
    if isinstance(value, dict):
        return all(no_floats(v) for v in value.values())
    if isinstance(value, list):
        return all(no_floats(v) for v in value)
    return True


# --- the rate card -----------------------------------------------------------------------------


def test_the_rate_card_in_force_lists_every_operation_with_exact_rates(
    client: TestClient, key: Headers
) -> None:
    response = client.get("/v1/rate-card", headers=key)

    assert response.status_code == 200, response.text
    card = response.json()
    assert (card["version"], card["effective_at"]) == ("2026-01", "2026-01-01T00:00:00Z")
    assert set(card["operations"]) == {"training", "inference", "data_processing"}
    training = card["operations"]["training"]
    assert (training["base"], training["minimum"]) == ("1", "1")
    assert training["rates"]["gpu_seconds"] == {"l4": "0.0003", "a100": "0.0012", "h100": "0.0016"}
    assert card["operations"]["inference"]["rates"]["input_tokens"] == "0.000002"
    assert card["modifiers"]["off_peak"]["multiplier"] == "0.7"
    assert card["modifiers"]["cache_hit"] == {"multiplier": "0.5"}
    assert no_floats(card), "every amount is a decimal string"


@pytest.mark.parametrize(
    ("at", "version"),
    [
        ("2024-01-01T00:00:00Z", "2024-01"),
        ("2025-12-31T23:59:59.999999Z", "2024-01"),
        ("2026-01-01T00:00:00Z", "2026-01"),  # the boundary belongs to the newer version
        ("2025-12-31T19:00:00-05:00", "2026-01"),  # the same instant, elsewhere
        ("2030-06-01T00:00:00Z", "2026-01"),
    ],
)
def test_the_rate_card_at_a_given_time(
    client: TestClient, key: Headers, at: str, version: str
) -> None:
    response = client.get("/v1/rate-card", params={"at": at}, headers=key)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == version


@pytest.mark.parametrize(
    ("at", "code"),
    [
        ("2023-12-31T23:59:59Z", "no_rate_card_version"),
        ("2026-01-01T00:00:00", None),  # no time zone
        ("last week", None),
    ],
)
def test_a_time_without_a_rate_card_or_malformed_is_422(
    client: TestClient, key: Headers, at: str, code: str | None
) -> None:
    assert_problem(client.get("/v1/rate-card", params={"at": at}, headers=key), 422, code)


def test_the_rate_card_needs_a_key(client: TestClient) -> None:
    assert_problem(client.get("/v1/rate-card"), 401)
    assert_problem(client.post("/v1/estimate", json={"operation": "inference"}), 401)


# --- estimates ---------------------------------------------------------------------------------


def test_an_estimate_prices_without_recording_anything(
    client: TestClient, db: Database, org: str, key: Headers
) -> None:
    before = state_of(db, org)

    result = estimate(client, key, operation="training", quantities=H100_HOUR)

    assert result["credits"] == "6.76"
    assert result["rate_card_version"] == "2026-01"
    assert result["breakdown"] == [
        {"component": "base", "quantity": None, "rate": "1", "credits": "1"},
        {"component": "gpu_seconds:h100", "quantity": "3600", "rate": "0.0016", "credits": "5.76"},
    ]
    assert state_of(db, org) == before


def test_an_estimate_uses_the_version_in_force_at_occurred_at(
    client: TestClient, key: Headers
) -> None:
    dedicated = {"gpu_seconds": "3600", "accelerator": "h100"}
    old = estimate(
        client, key, operation="inference", quantities=dedicated, occurred_at="2025-06-01T12:00:00Z"
    )
    new = estimate(client, key, operation="inference", quantities=dedicated)
    assert (old["rate_card_version"], old["credits"]) == ("2024-01", "7.2")
    assert (new["rate_card_version"], new["credits"]) == ("2026-01", "5.76")


def test_modifiers_are_lines_of_the_breakdown(client: TestClient, key: Headers) -> None:
    cached = estimate(client, key, operation="inference", quantities=TOKENS, cache_hit=True)
    assert cached["credits"] == "0.0025"
    assert cached["breakdown"][-1] == {
        "component": "cache_hit",
        "quantity": None,
        "rate": "0.5",
        "credits": "-0.0025",
    }
    night = estimate(
        client, key, operation="training", quantities=H100_HOUR, occurred_at="2026-03-10T23:30:00Z"
    )
    assert night["credits"] == "4.732"
    assert night["breakdown"][-1]["component"] == "off_peak"
    assert night["breakdown"][-1]["credits"] == "-2.028"
    # interactive inference opts out of the off-peak discount
    assert (
        estimate(client, key, operation="inference", quantities=TOKENS,
                 occurred_at="2026-03-10T23:30:00Z")["credits"]
        == "0.005"
    )  # fmt: skip
    tiny = estimate(client, key, operation="data_processing", quantities={"cpu_seconds": "1"})
    assert tiny["credits"] == "0.001"
    assert tiny["breakdown"][-1]["component"] == "minimum_charge"


@pytest.mark.parametrize(
    ("cpu_seconds", "credits"),
    [
        ("0.025", "1"),  # 1.0000005 rounds half to even: down
        ("0.075", "1.000002"),  # 1.0000015 rounds half to even: up
        ("0.05", "1.000001"),
        ("0.000000000001", "1"),
    ],
)
def test_the_total_is_rounded_once_to_a_micro_credit_and_the_lines_still_add_up(
    client: TestClient, key: Headers, cpu_seconds: str, credits: str
) -> None:
    result = estimate(client, key, operation="training", quantities={"cpu_seconds": cpu_seconds})
    assert result["credits"] == credits


def test_breakdowns_always_add_up_exactly(client: TestClient, key: Headers) -> None:
    rng = random.Random(7)
    for _ in range(40):
        operation = rng.choice(["training", "inference", "data_processing"])
        quantities: dict[str, str] = {}
        if operation == "inference":
            quantities["input_tokens"] = str(rng.randint(0, 10**6))
            quantities["output_tokens"] = str(rng.randint(0, 10**5))
        else:
            quantities["cpu_seconds"] = f"{rng.randint(0, 10**6)}.{rng.randint(0, 999):03d}"
            quantities["data_gb"] = f"{rng.randint(0, 100)}.{rng.randint(0, 999999):06d}"
            quantities["instance_class"] = rng.choice(["standard", "highmem"])
        if operation == "training":
            quantities["gpu_seconds"] = str(rng.randint(0, 10**5))
            quantities["accelerator"] = rng.choice(["l4", "a100", "h100"])
        hour = rng.randint(0, 23)
        result = estimate(
            client,
            key,
            operation=operation,
            quantities=quantities,
            cache_hit=rng.random() < 0.3,
            occurred_at=f"2026-03-{rng.randint(1, 9):02d}T{hour:02d}:17:00Z",
        )
        assert dec(result["credits"]) >= Decimal("0.0001")
        assert "." not in result["credits"] or len(result["credits"].split(".")[1]) <= 6


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"operation": "rendering"}, "unknown_operation"),
        ({"operation": "inference", "quantities": {"tokens": "1"}}, "unknown_dimension"),
        ({"operation": "inference", "quantities": {"input_tokens": "-1"}}, "invalid_quantity"),
        ({"operation": "inference", "quantities": {"input_tokens": 0.5}}, "invalid_quantity"),
        ({"operation": "training", "quantities": {"gpu_seconds": "1"}}, "unknown_class"),
        ({"operation": "training", "quantities": {"gpu_seconds": "1", "accelerator": "v100"}},
         "unknown_class"),
        ({"operation": "training",
          "quantities": {"gpu_seconds": "1000000000000000", "accelerator": "h100"}},
         "invalid_quantity"),  # 1.6 x 10^12 credits: more than one event may cost
        ({"operation": "inference", "occurred_at": "2023-01-01T00:00:00Z"},
         "no_rate_card_version"),
        ({"operation": "inference", "occurred_at": "2026-03-10T12:00:00"}, None),
        ({"operation": "inference", "cache_hit": "true"}, "validation_failed"),
        ({"quantities": {}}, "validation_failed"),
    ],
)  # fmt: skip
def test_unpriceable_estimates_are_422(
    client: TestClient, key: Headers, body: dict[str, Any], code: str | None
) -> None:
    assert_problem(client.post("/v1/estimate", json=body, headers=key), 422, code)


def test_the_largest_quantities_are_still_priced_exactly(client: TestClient, key: Headers) -> None:
    result = estimate(
        client, key, operation="inference", quantities={"input_tokens": "1000000000000000"}
    )
    assert result["credits"] == "2000000000"
