"""Every timestamp the API accepts is checked when the body is validated: one whose conversion to UTC
would overflow (``0001-01-01T00:00:00+01:00`` is before year 1 in UTC, ``9999-12-31T23:00:00-23:00``
after year 9999) or that lies outside 1970-01-01T00:00:00Z to 9999-12-30T00:00:00Z is a 422
``validation_failed`` whose field error has the type ``timestamp_out_of_range`` — per event in
batches, where the other events apply — and changes nothing. Never an OverflowError and a 500."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from creditmeter.api.schemas import EventTime, Timestamp
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from tests.api.test_bad_input import everything
from tests.metering import H100_HOUR, T0, TOKENS, Headers, assert_clean, balance, grant

#: Valid RFC 3339 text whose UTC conversion overflows, and values outside the accepted range.
OUT_OF_RANGE = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:00:00-23:00",
    "9999-12-31T23:59:59Z",
    "1969-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
]


@pytest.fixture(autouse=True)
def _noon(db: Database) -> Iterator[None]:
    with clock.frozen_at(T0):
        yield
    assert_clean(db)


@pytest.fixture
def org(client: TestClient, operator: Headers, make_org: Callable[..., str]) -> str:
    org_id = make_org("Acme AI", "acme")
    grant(client, operator, org_id, "100")
    return org_id


def out_of_range(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "validation_failed", body
    assert {"field": field, "type": "timestamp_out_of_range"} in [
        {"field": e["field"], "type": e["type"]} for e in body["errors"]
    ], body


def usage(org: str, event_id: str, **extra: Any) -> dict[str, Any]:
    body = {"id": event_id, "organization": org, "operation": "inference", "quantities": TOKENS}
    return {**body, **extra}


@pytest.mark.parametrize("at", OUT_OF_RANGE)
def test_a_single_event_out_of_range_is_422_and_changes_nothing(
    db: Database, client: TestClient, operator: Headers, org: str, at: str
) -> None:
    before = everything(db)
    out_of_range(
        client.post("/v1/usage", json=usage(org, "e1", occurred_at=at), headers=operator),
        "occurred_at",
    )
    assert everything(db) == before


@pytest.mark.parametrize("at", OUT_OF_RANGE)
def test_a_batch_rejects_only_the_event_out_of_range(
    client: TestClient, operator: Headers, org: str, at: str
) -> None:
    events = [usage(org, "a"), usage(org, "b", occurred_at=at), usage(org, "c")]
    response = client.post("/v1/usage/batch", json={"events": events}, headers=operator)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["applied", "rejected", "applied"]
    assert results[1]["id"] == "b"
    assert results[1]["error"]["errors"][0]["type"] == "timestamp_out_of_range"
    assert balance(client, operator, org)["available"] == "99.99"


def _cloud(org: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "/ai-engine",
        "type": "inference",
        "subject": org,
        "data": {"quantities": TOKENS},
        **extra,
    }


@pytest.mark.parametrize("at", OUT_OF_RANGE)
def test_cloudevents_time_out_of_range_is_refused_alone(
    db: Database, client: TestClient, operator: Headers, org: str, at: str
) -> None:
    def post(body: Any, content_type: str, **headers: str) -> Any:
        return client.post(
            "/v1/events",
            content=json.dumps(body),
            headers={**operator, "Content-Type": content_type, **headers},
        )

    before = everything(db)
    out_of_range(post(_cloud(org, "s", time=at), "application/cloudevents+json"), "time")
    binary = {
        "ce-specversion": "1.0",
        "ce-id": "bin",
        "ce-source": "/x",
        "ce-type": "inference",
        "ce-subject": org,
        "ce-time": at,
    }
    out_of_range(post({"quantities": TOKENS}, "application/json", **binary), "time")
    assert everything(db) == before

    batch = [_cloud(org, "a"), _cloud(org, "b", time=at), _cloud(org, "c")]
    response = post(batch, "application/cloudevents-batch+json")
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["applied", "rejected", "applied"]
    assert results[1]["error"]["errors"][0] == {
        "field": "time",
        "message": results[1]["error"]["errors"][0]["message"],
        "type": "timestamp_out_of_range",
    }
    assert balance(client, operator, org)["available"] == "99.99"


@pytest.mark.parametrize("at", OUT_OF_RANGE)
def test_settling_a_hold_out_of_range_is_422_and_keeps_the_hold(
    db: Database, client: TestClient, operator: Headers, org: str, at: str
) -> None:
    hold = client.post(
        "/v1/holds",
        json={"organization": org, "operation": "training", "quantities": H100_HOUR},
        headers=operator,
    )
    assert hold.status_code == 201, hold.text
    before = everything(db)
    response = client.post(
        f"/v1/holds/{hold.json()['id']}/settle",
        json={"id": "run-1", "quantities": H100_HOUR, "occurred_at": at},
        headers=operator,
    )
    out_of_range(response, "occurred_at")
    assert everything(db) == before


@pytest.mark.parametrize("at", OUT_OF_RANGE)
def test_every_other_timestamp_the_api_takes_is_checked(
    db: Database, client: TestClient, operator: Headers, org: str, at: str
) -> None:
    before = everything(db)
    out_of_range(
        client.post(
            "/v1/estimate",
            json={"operation": "inference", "quantities": TOKENS, "occurred_at": at},
            headers=operator,
        ),
        "occurred_at",
    )
    out_of_range(client.get("/v1/rate-card", params={"at": at}, headers=operator), "at")
    for field in ("expires_at", "effective_at"):
        grant_body = {"credits": "5", "source": "promo", "reason": "r", field: at}
        out_of_range(
            client.post(f"/v1/organizations/{org}/grants", json=grant_body, headers=operator),
            field,
        )
    out_of_range(
        client.post("/v1/test-clocks", json={"frozen_time": at}, headers=operator),
        "frozen_time",
    )
    out_of_range(
        client.post("/v1/test-clocks/clock_x/advance", json={"to": at}, headers=operator), "to"
    )
    assert everything(db) == before


def test_an_event_keeps_the_offset_it_was_sent_with_so_a_retry_is_a_duplicate(
    client: TestClient, operator: Headers, org: str
) -> None:
    event = usage(org, "e1", occurred_at="2026-03-10T12:30:00+01:00")
    first = client.post("/v1/usage", json=event, headers=operator)
    assert first.status_code == 201, first.text
    again = client.post("/v1/usage", json=event, headers=operator)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "duplicate"


def test_the_two_timestamp_types_accept_the_edges_and_refuse_beyond_them() -> None:
    from pydantic import TypeAdapter, ValidationError

    utc, kept = TypeAdapter(Timestamp), TypeAdapter(EventTime)
    assert utc.validate_python("1970-01-01T01:00:00+01:00") == datetime.fromisoformat(
        "1970-01-01T00:00:00+00:00"
    )
    sent = kept.validate_python("9999-12-30T01:00:00+01:00")
    assert sent.isoformat() == "9999-12-30T01:00:00+01:00"
    for adapter in (utc, kept):
        for at in OUT_OF_RANGE:
            with pytest.raises(ValidationError) as raised:
                adapter.validate_python(at)
            assert raised.value.errors()[0]["type"] == "timestamp_out_of_range"
