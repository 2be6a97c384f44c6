"""Hypothesis property of usage ingest against the real databases (SQLite and PostgreSQL), through the
API: random grants and random batches of usage events (every operation, random quantities, events in
the late window across both rate-card versions, repeats, reused ids with other bodies and invalid
events) leave each organization's balance exactly where an independent calculation puts it.

The model knows nothing of pricing beyond what the API says: each applied event's credits are taken
from the batch result AND recomputed with POST /v1/estimate, and must agree. Then available = granted -
consumed, arrears = max(0, consumed - granted) (new credits pay arrears first), paused = available <= 0,
every event id is applied at most once and the ledger verifies. Each example gets a fresh organization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.metering.models import UsageEvent
from creditmeter.orgs import service as orgs
from tests.conftest import utc
from tests.metering import Headers, assert_clean

#: Mid-January 2026: the late window reaches back into December 2025, priced by version 2024-01.
NOW = utc(2026, 1, 20, 12)

DB_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _frozen() -> Iterator[None]:
    with clock.frozen_at(NOW):
        yield


# --- strategies ----------------------------------------------------------------------------------


def number(max_whole: int, decimals: int = 0) -> st.SearchStrategy[Any]:
    """A quantity as an integer or a decimal string."""
    whole = st.integers(min_value=0, max_value=max_whole)
    if not decimals:
        return st.one_of(whole, whole.map(str))
    frac = st.integers(min_value=0, max_value=10**decimals - 1)
    return st.one_of(
        whole, st.tuples(whole, frac).map(lambda t: f"{t[0]}.{t[1]:0{decimals}d}".rstrip("."))
    )


inference = st.fixed_dictionaries(
    {},
    optional={
        "input_tokens": number(2_000_000),
        "output_tokens": number(200_000),
        "gpu_seconds": number(3_600, 3),
        "accelerator": st.sampled_from(["l4", "a100", "h100"]),
    },
)
training = st.fixed_dictionaries(
    {"gpu_seconds": number(3_600, 2), "accelerator": st.sampled_from(["l4", "a100", "h100"])},
    optional={
        "cpu_seconds": number(100_000, 3),
        "data_gb": number(500, 6),
        "instance_class": st.sampled_from(["standard", "highmem", "gpu-large"]),
    },
)
data_processing = st.fixed_dictionaries(
    {},
    optional={
        "cpu_seconds": number(100_000, 3),
        "data_gb": number(100, 6),
        "instance_class": st.sampled_from(["standard", "highmem"]),
    },
)
valid_usage = st.one_of(
    st.tuples(st.just("inference"), inference),
    st.tuples(st.just("training"), training),
    st.tuples(st.just("data_processing"), data_processing),
)
INVALID = [
    ("rendering", {"input_tokens": "10"}, {}),  # unknown operation
    ("inference", {"input_tokens": "-10"}, {}),  # negative
    ("inference", {"input_tokens": 2.5}, {}),  # a float
    ("inference", {"input_tokens": "ten"}, {}),  # not a number
    ("inference", {"cpu_seconds": "10"}, {}),  # not a dimension of inference
    ("training", {"gpu_seconds": "10"}, {}),  # no accelerator
    ("inference", {"input_tokens": "10"}, {"project": "Nope"}),
    ("inference", {"input_tokens": "10"}, {"member": "nobody@acme.example"}),
    ("inference", {"input_tokens": "10"}, {"occurred_at": "2025-12-01T00:00:00Z"}),  # too old
    ("inference", {"input_tokens": "10"}, {"occurred_at": "2026-01-20T12:06:00Z"}),  # future
]

grant_amounts = st.tuples(
    st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=999_999)
).map(lambda t: str(Decimal(t[0] * 1_000_000 + t[1] + 1) / 1_000_000))


# --- the model -----------------------------------------------------------------------------------


@dataclass
class Model:
    granted: int = 0
    #: event id -> (body, credits in micros) of every applied event
    applied: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)

    @property
    def consumed(self) -> int:
        return sum(c for _, c in self.applied.values())


def micros(text: str) -> int:
    return int(Decimal(text) * 1_000_000)


def credits_text(value: int) -> str:
    text = format(Decimal(value) / 1_000_000, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def draw_event(data: st.DataObject, org: str, model: Model, serial: int, batch: list[Any]) -> Any:
    """One event: fresh and valid most of the time, else a repeat, a reused id with another body, or
    an invalid event."""
    sent = list(model.applied.values()) + [e for e in batch if isinstance(e, dict)]
    kind = data.draw(
        st.sampled_from(["fresh"] * 6 + ["repeat", "conflict", "invalid"]), label="kind"
    )
    if kind == "repeat" and sent:
        previous = data.draw(st.sampled_from(sent), label="repeat of")
        return dict(previous[0] if isinstance(previous, tuple) else previous)
    operation, quantities = data.draw(valid_usage, label="usage")
    body: dict[str, Any] = {
        "id": f"ev-{serial}",
        "organization": org,
        "operation": operation,
        "quantities": quantities,
    }
    if kind == "conflict" and sent:
        previous = data.draw(st.sampled_from(sent), label="id of")
        body["id"] = (previous[0] if isinstance(previous, tuple) else previous)["id"]
        body["metadata"] = {"attempt": "another body"}
    if kind == "invalid":
        operation, quantities, extra = data.draw(st.sampled_from(INVALID), label="invalid")
        body.update(operation=operation, quantities=quantities, **extra)
        return body
    minutes = data.draw(st.integers(min_value=0, max_value=34 * 24 * 60), label="minutes ago")
    if minutes:
        body["occurred_at"] = (NOW - timedelta(minutes=minutes)).isoformat()
    if data.draw(st.booleans(), label="cache hit"):
        body["cache_hit"] = True
    if data.draw(st.booleans(), label="project"):
        body["project"] = "Research"
    return body


def expected_status(body: dict[str, Any], model: Model, seen: dict[str, dict[str, Any]]) -> str:
    """What the batch should answer for ``body``, given what was applied before it."""
    original = model.applied.get(body["id"], (None,))[0] or seen.get(body["id"])
    is_invalid = any(
        (body["operation"], body["quantities"]) == (op, q)
        and all(body.get(k) == v for k, v in extra.items())
        for op, q, extra in INVALID
    )
    if is_invalid:
        return "rejected"
    if original is not None:
        return "duplicate" if original == body else "rejected"
    return "applied"


def estimate(client: TestClient, headers: Headers, body: dict[str, Any]) -> str:
    request: dict[str, Any] = {
        k: body[k] for k in ("operation", "quantities", "cache_hit") if k in body
    }
    request["occurred_at"] = body.get("occurred_at", NOW.isoformat())
    response = client.post("/v1/estimate", json=request, headers=headers)
    assert response.status_code == 200, response.text
    result: str = response.json()["credits"]
    return result


# --- the property --------------------------------------------------------------------------------


@DB_SETTINGS
@given(data=st.data())
def test_random_ingest_leaves_the_balance_where_an_independent_calculation_puts_it(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
    data: st.DataObject,
) -> None:
    org = make_org("Acme")
    with db.write() as s:
        orgs.create_project(s, org, "Research", clock.now())
    key = make_key(org, "org:ingest")
    model = Model()
    serial = 0

    for _step in range(data.draw(st.integers(min_value=1, max_value=4), label="steps")):
        if data.draw(st.booleans(), label="grant first"):
            amount = data.draw(grant_amounts, label="grant")
            response = client.post(
                f"/v1/organizations/{org}/grants",
                json={"credits": amount, "source": "plan", "reason": "property"},
                headers=operator,
            )
            assert response.status_code == 201, response.text
            model.granted += micros(amount)

        batch: list[dict[str, Any]] = []
        for _ in range(data.draw(st.integers(min_value=1, max_value=12), label="batch size")):
            serial += 1
            batch.append(draw_event(data, org, model, serial, batch))
        response = client.post("/v1/usage/batch", json={"events": batch}, headers=key)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["id"] for r in results] == [b["id"] for b in batch]

        seen: dict[str, dict[str, Any]] = {}
        for body, result in zip(batch, results, strict=True):
            status = expected_status(body, model, seen)
            event(f"an event is {status}")
            assert result["status"] == status, (body, result)
            if status == "applied":
                assert result["credits"] == estimate(client, key, body), body
                model.applied[body["id"]] = (body, micros(result["credits"]))
                seen[body["id"]] = body
            elif status == "duplicate":
                assert micros(result["credits"]) == model.applied[body["id"]][1]
            else:
                assert "credits" not in result
                assert result["error"]["status"] in {404, 409, 422}

        view = client.get(f"/v1/organizations/{org}/balance", headers=key).json()
        available = model.granted - model.consumed
        event("overdrawn" if available < 0 else "in credit")
        assert view["available"] == credits_text(available)
        assert view["arrears"] == credits_text(max(0, -available))
        assert view["held"] == "0"
        assert view["paused"] is (available <= 0)

    with db.read() as s:
        stored = s.scalar(
            select(func.count()).select_from(UsageEvent).where(UsageEvent.organization_id == org)
        )
        debited = s.scalar(
            select(func.coalesce(func.sum(UsageEvent.credits_micros), 0)).where(
                UsageEvent.organization_id == org
            )
        )
    assert stored == len(model.applied)
    assert debited == model.consumed
    assert_clean(db)
