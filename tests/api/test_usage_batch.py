"""POST /v1/usage/batch: up to 10,000 events, each standing alone. Results come back in request order
as applied, duplicate or rejected (with a problem-style error); a rejected event changes nothing and
the others apply; a body over the limits is refused whole and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.metering.models import UsageEvent
from creditmeter.orgs import service as orgs
from tests.metering import (
    T0,
    Headers,
    assert_clean,
    assert_problem,
    authorize,
    dec,
    event,
    grant,
    state_of,
    summary,
)


@pytest.fixture(autouse=True)
def _noon(db: Database) -> Iterator[None]:
    """Every test runs at noon on 10 March 2026, and the ledger proves itself afterwards."""
    with clock.frozen_at(T0):
        yield
    assert_clean(db)


@dataclass
class Org:
    id: str
    key: Headers


@pytest.fixture
def make_tenant(
    db: Database,
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> Callable[..., Org]:
    def _make(name: str = "Acme AI", credits: str = "10") -> Org:
        org = make_org(name, f"{name.lower()}-ext")
        with db.write() as s:
            orgs.create_project(s, org, "Research", clock.now())
        grant(client, operator, org, credits)
        return Org(org, make_key(org, "org:ingest"))

    return _make


@pytest.fixture
def acme(make_tenant: Callable[..., Org]) -> Org:
    return make_tenant("Acme")


def send(client: TestClient, headers: Headers, events: list[Any]) -> list[dict[str, Any]]:
    response = client.post("/v1/usage/batch", json={"events": events}, headers=headers)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert len(results) == len(events)
    return results


def event_ids(db: Database, org: str) -> list[str]:
    with db.read() as s:
        return list(
            s.scalars(
                select(UsageEvent.event_id)
                .where(UsageEvent.organization_id == org)
                .order_by(UsageEvent.event_id)
            )
        )


def count_events(db: Database) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(UsageEvent)) or 0)


def test_results_come_back_in_request_order_and_each_event_stands_alone(
    client: TestClient, db: Database, acme: Org
) -> None:
    assert client.post("/v1/usage", json=event("old", acme.id), headers=acme.key).status_code == 201
    events: list[Any] = [
        event("a", acme.id, "training"),  # applied: 6.76
        event("old", acme.id),  # duplicate of an earlier request
        event("b", acme.id, "rendering"),  # unknown operation
        event("c", acme.id, project="Research"),  # applied: 0.005
        event("a", acme.id, "training"),  # duplicate inside this batch
        event("d", acme.id, quantities={"input_tokens": "-5"}),  # negative quantity
        {"id": "e", "organization": acme.id},  # no operation
        event("f", acme.id, project="Nope"),  # unknown project
        event("c", acme.id, quantities={"input_tokens": "1"}),  # id of c, another body
        "not an event",
        event("g", acme.id, occurred_at="2020-01-01T00:00:00Z"),  # too old
        event("h", acme.id, "data_processing", quantities={"cpu_seconds": "500"}),  # 0.01
    ]

    results = send(client, acme.key, events)

    assert [(r["id"], r["status"]) for r in results] == [
        ("a", "applied"),
        ("old", "duplicate"),
        ("b", "rejected"),
        ("c", "applied"),
        ("a", "duplicate"),
        ("d", "rejected"),
        ("e", "rejected"),
        ("f", "rejected"),
        ("c", "rejected"),
        (None, "rejected"),
        ("g", "rejected"),
        ("h", "applied"),
    ]
    assert [r.get("credits") for r in results] == [
        "6.76", "0.005", None, "0.005", "6.76", None, None, None, None, None, None, "0.01",
    ]  # fmt: skip
    codes = [r["error"]["code"] for r in results if r["status"] == "rejected"]
    assert codes == [
        "unknown_operation",
        "invalid_quantity",
        "validation_failed",
        "unknown_project",
        "event_id_conflict",
        "validation_failed",
        "event_too_old",
    ]
    for r in results:
        if r["status"] == "rejected":
            error = r["error"]
            assert {"type", "title", "status", "detail", "code"} <= error.keys()
            assert error["status"] in {409, 404, 422}
            assert "credits" not in r
        else:
            assert "error" not in r
    # only the applied events were recorded and debited: 10 - 0.005 - 6.76 - 0.005 - 0.01
    assert event_ids(db, acme.id) == ["a", "c", "h", "old"]
    assert summary(client, acme.key, acme.id) == ("3.22", "0", "0", False)
    assert_clean(db)


def test_a_rejected_events_id_is_not_used_up(client: TestClient, db: Database, acme: Org) -> None:
    [rejected] = send(client, acme.key, [event("a", acme.id, project="Nope")])
    assert rejected["status"] == "rejected"
    [applied] = send(client, acme.key, [event("a", acme.id)])
    assert (applied["status"], applied["credits"]) == ("applied", "0.005")


def test_a_batch_of_only_rejected_events_changes_nothing(
    client: TestClient, db: Database, acme: Org
) -> None:
    before = state_of(db, acme.id)
    results = send(
        client,
        acme.key,
        [
            event("a", acme.id, "rendering"),
            event("b", acme.id, quantities={"input_tokens": 1.5}),
            event("c", acme.id, member="nobody@acme.example"),
        ],
    )
    assert {r["status"] for r in results} == {"rejected"}
    assert state_of(db, acme.id) == before


def test_a_resent_batch_applies_nothing_twice(client: TestClient, db: Database, acme: Org) -> None:
    events = [event(f"e{i}", acme.id) for i in range(50)] + [event("run", acme.id, "training")]
    first = send(client, acme.key, events)
    assert {r["status"] for r in first} == {"applied"}
    available = summary(client, acme.key, acme.id)[0]
    assert available == "2.99"  # 10 - 50 x 0.005 - 6.76

    again = send(client, acme.key, events)

    assert {r["status"] for r in again} == {"duplicate"}
    assert [r["credits"] for r in again] == [r["credits"] for r in first]
    assert summary(client, acme.key, acme.id)[0] == available
    assert count_events(db) == 51
    assert_clean(db)


def test_events_of_several_organizations_in_one_batch(
    client: TestClient, db: Database, operator: Headers, make_tenant: Callable[..., Org]
) -> None:
    acme, globex, initech = (make_tenant(n) for n in ("Acme", "Globex", "Initech"))
    events = [
        event("x", globex.id, "training"),
        event("x", acme.id),
        event("y", "initech-ext"),
        event("x", "org_01HZZZZZZZZZZZZZZZZZZZZZZZ"),
        event("y", acme.id, "training"),
        event("z", globex.id),
        event("x", acme.id),  # duplicate of acme's x
    ]

    results = send(client, operator, events)

    assert [(r["id"], r["status"]) for r in results] == [
        ("x", "applied"),
        ("x", "applied"),
        ("y", "applied"),
        ("x", "rejected"),
        ("y", "applied"),
        ("z", "applied"),
        ("x", "duplicate"),
    ]
    assert results[3]["error"]["code"] == "unknown_organization"
    assert summary(client, operator, acme.id)[0] == "3.235"
    assert summary(client, operator, globex.id)[0] == "3.235"
    assert summary(client, operator, initech.id)[0] == "9.995"
    assert_clean(db)


def test_an_ingest_keys_batch_cannot_reach_another_organization(
    client: TestClient, db: Database, make_tenant: Callable[..., Org]
) -> None:
    acme, globex = make_tenant("Acme"), make_tenant("Globex")
    before = state_of(db, globex.id)

    results = send(
        client,
        acme.key,
        [event("a", acme.id), event("b", globex.id), event("c", "globex-ext"), event("d", acme.id)],
    )

    assert [r["status"] for r in results] == ["applied", "rejected", "rejected", "applied"]
    assert {results[1]["error"]["code"], results[2]["error"]["code"]} == {"unknown_organization"}
    assert results[1]["error"]["status"] == 404
    assert state_of(db, globex.id) == before
    assert summary(client, acme.key, acme.id)[0] == "9.99"


def test_a_batch_may_overdraw_and_each_event_sees_what_the_previous_left(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    results = send(client, acme.key, [event(f"run-{i}", acme.id, "training") for i in range(3)])
    assert [r["status"] for r in results] == ["applied"] * 3
    # 3 x 6.76 = 20.28 against 10
    assert summary(client, acme.key, acme.id) == ("-10.28", "10.28", "0", True)
    assert authorize(client, acme.key, acme.id)["reason"] == "insufficient_credits"
    grant(client, operator, acme.id, "20")
    assert summary(client, acme.key, acme.id) == ("9.72", "0", "0", False)
    assert_clean(db)


def test_a_test_keys_batch_touches_only_the_test_balance(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_key: Callable[..., Headers],
    acme: Org,
) -> None:
    sandbox = make_key(acme.id, "org:ingest", environment="test")
    grant(client, operator, acme.id, "1", environment="test")
    live = summary(client, operator, acme.id, "live")
    results = send(client, sandbox, [event(f"t{i}", acme.id) for i in range(10)])
    assert {r["status"] for r in results} == {"applied"}
    assert summary(client, sandbox, acme.id) == ("0.95", "0", "0", False)
    assert summary(client, operator, acme.id, "live") == live


def test_a_read_only_key_cannot_send_a_batch(
    client: TestClient, db: Database, make_key: Callable[..., Headers], acme: Org
) -> None:
    reader = make_key(acme.id, "org:read")
    before = state_of(db, acme.id)
    response = client.post(
        "/v1/usage/batch", json={"events": [event("a", acme.id)]}, headers=reader
    )
    assert_problem(response, 403, "insufficient_scope")
    assert state_of(db, acme.id) == before


# --- limits ------------------------------------------------------------------------------------


def test_ten_thousand_events_are_accepted(client: TestClient, db: Database, acme: Org) -> None:
    events = [event(f"e{i:05d}", acme.id, quantities={"input_tokens": "10"}) for i in range(10_000)]
    results = send(client, acme.key, events)
    assert {r["status"] for r in results} == {"applied"}
    assert [r["id"] for r in results] == [e["id"] for e in events]
    # each costs the 0.0001 minimum: 10,000 x 0.0001 = 1
    assert summary(client, acme.key, acme.id)[0] == "9"
    assert count_events(db) == 10_000
    assert_clean(db)


@pytest.mark.parametrize(
    "body",
    [
        {"events": [event(f"e{i}", "{org}") for i in range(10_001)]},
        {"events": []},
        {"events": {"id": "e1"}},
        {"events": "e1"},
        {},
        {"events": [event("e1", "{org}")], "extra": True},
        [event("e1", "{org}")],
    ],
    ids=["10,001 events", "none", "an object", "a string", "no events", "an extra field", "a list"],
)
def test_a_batch_over_the_limits_or_malformed_is_refused_whole_and_changes_nothing(
    client: TestClient, db: Database, acme: Org, body: Any
) -> None:
    raw = json.dumps(body).replace("{org}", acme.id)
    before = state_of(db, acme.id)
    response = client.post(
        "/v1/usage/batch", content=raw, headers={**acme.key, "Content-Type": "application/json"}
    )
    assert_problem(response, 422)
    assert state_of(db, acme.id) == before


def test_a_large_body_over_the_event_limit_is_refused_not_a_500(
    client: TestClient, db: Database, acme: Org
) -> None:
    padding = {"note": "x" * 2000}
    events = [event(f"e{i}", acme.id, metadata=padding) for i in range(10_001)]  # ~21 MB
    before = state_of(db, acme.id)
    response = client.post("/v1/usage/batch", json={"events": events}, headers=acme.key)
    assert response.status_code in {413, 422}, response.text[:500]
    assert response.headers["content-type"].startswith("application/problem+json")
    assert state_of(db, acme.id) == before


def test_oversized_parts_of_one_event_reject_only_that_event(
    client: TestClient, db: Database, acme: Org
) -> None:
    results = send(
        client,
        acme.key,
        [
            event("big-metadata", acme.id, metadata={"blob": "x" * 9000}),
            event("deep-metadata", acme.id, metadata=_nested(100)),
            event("many-quantities", acme.id, quantities={f"d{i}": "1" for i in range(51)}),
            event("x" * 256, acme.id),
            event("ok", acme.id, metadata=_nested(10)),
        ],
    )
    assert [r["status"] for r in results] == ["rejected"] * 4 + ["applied"]
    assert {r["error"]["code"] for r in results[:4]} == {"validation_failed"}
    assert event_ids(db, acme.id) == ["ok"]


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_settling_one_hold_twice_in_a_batch_applies_the_first_only(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = client.post(
        "/v1/holds",
        json={"organization": acme.id, "operation": "training", "credits": "5"},
        headers=acme.key,
    ).json()
    results = send(
        client,
        acme.key,
        [
            event("run-1", acme.id, "training", hold=hold["id"]),
            event("run-2", acme.id, "training", hold=hold["id"]),
            event("run-3", acme.id, "training", hold="hold_01HZZZZZZZZZZZZZZZZZZZZZZZ"),
        ],
    )
    assert [r["status"] for r in results] == ["applied", "rejected", "rejected"]
    assert results[1]["error"]["code"] == "hold_already_settled"
    assert results[2]["error"]["code"] == "unknown_hold"
    assert summary(client, acme.key, acme.id) == ("3.24", "0", "0", False)
    assert_clean(db)


def test_the_credits_of_a_batch_add_up_to_the_debit(
    client: TestClient, db: Database, acme: Org
) -> None:
    events = [
        event(
            f"e{i}", acme.id, quantities={"input_tokens": str(7 * i + 1), "output_tokens": str(i)}
        )
        for i in range(200)
    ]
    results = send(client, acme.key, events)
    spent = sum(Decimal(r["credits"]) for r in results)
    assert dec(summary(client, acme.key, acme.id)[0]) == Decimal(10) - spent
    assert_clean(db)
