"""POST /v1/authorize, the gate: may this organization run this operation now? It reads the same rows
the ledger writes, so a grant, a debit or a hold is seen by the very next call; a paused organization
resumes by itself when credits arrive (DESIGN.md §2 "Gate", "Overdraft")."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.orgs import service as orgs
from tests.metering import (
    H100_HOUR,
    T0,
    Headers,
    assert_clean,
    assert_problem,
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
    project: str


@pytest.fixture
def make_tenant(
    db: Database,
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> Callable[..., Org]:
    def _make(name: str = "Acme", credits: str | None = "10") -> Org:
        org = make_org(name, f"{name.lower()}-ext")
        with db.write() as s:
            project = orgs.create_project(s, org, "Research", clock.now()).id
        if credits:
            grant(client, operator, org, credits)
        return Org(org, make_key(org, "org:ingest"), project)

    return _make


@pytest.fixture
def acme(make_tenant: Callable[..., Org]) -> Org:
    return make_tenant()


def ask(client: TestClient, headers: Headers, org: str, **body: Any) -> Any:
    return client.post(
        "/v1/authorize",
        json={"organization": org, "operation": "inference", **body},
        headers=headers,
    )


def decision(client: TestClient, headers: Headers, org: str, **body: Any) -> tuple[Any, ...]:
    response = ask(client, headers, org, **body)
    assert response.status_code == 200, response.text
    d = response.json()
    assert set(d) == {"allowed", "reason", "available", "estimated_credits"}
    return d["allowed"], d["reason"], d["available"], d["estimated_credits"]


def test_an_organization_with_credits_is_allowed(
    client: TestClient, db: Database, acme: Org
) -> None:
    before = state_of(db, acme.id)
    assert decision(client, acme.key, acme.id, credits="5") == (True, "ok", "10", "5")
    assert decision(client, acme.key, "acme-ext", credits="5") == (True, "ok", "10", "5")
    assert state_of(db, acme.id) == before  # asking changes nothing


def test_the_estimate_is_the_price_of_the_quantities_or_the_credits_given(
    client: TestClient, acme: Org
) -> None:
    assert decision(client, acme.key, acme.id, operation="training", quantities=H100_HOUR)[3] == (
        "6.76"
    )
    estimate = client.post(
        "/v1/estimate", json={"operation": "training", "quantities": H100_HOUR}, headers=acme.key
    ).json()
    assert estimate["credits"] == "6.76"
    assert decision(client, acme.key, acme.id, credits="0.000001")[3] == "0.000001"
    # with neither, the operation's base and minimum charge
    assert decision(client, acme.key, acme.id, operation="training")[3] == "1"
    assert decision(client, acme.key, acme.id)[3] == "0.0001"


def test_an_estimate_equal_to_the_balance_is_allowed_one_micro_credit_more_is_not(
    client: TestClient, make_tenant: Callable[..., Org]
) -> None:
    acme = make_tenant(credits="6.76")
    assert decision(client, acme.key, acme.id, operation="training", quantities=H100_HOUR) == (
        True,
        "ok",
        "6.76",
        "6.76",
    )
    assert decision(client, acme.key, acme.id, credits="6.760001") == (
        False,
        "insufficient_credits",
        "6.76",
        "6.760001",
    )


def test_an_organization_at_or_below_zero_is_refused_whatever_the_estimate(
    client: TestClient, db: Database, make_tenant: Callable[..., Org]
) -> None:
    empty = make_tenant("Empty", credits=None)
    assert decision(client, empty.key, empty.id, credits="0.000001") == (
        False,
        "insufficient_credits",
        "0",
        "0.000001",
    )
    spent = make_tenant("Spent", credits="6.76")
    client.post("/v1/usage", json=event("run", spent.id, "training"), headers=spent.key)
    assert decision(client, spent.key, spent.id, credits="0.000001")[:3] == (
        False,
        "insufficient_credits",
        "0",
    )
    overdrawn = make_tenant("Overdrawn", credits="1")
    client.post("/v1/usage", json=event("run", overdrawn.id, "training"), headers=overdrawn.key)
    assert decision(client, overdrawn.key, overdrawn.id)[:3] == (
        False,
        "insufficient_credits",
        "-5.76",
    )


def test_the_gate_sees_every_write_on_the_very_next_call(
    client: TestClient, db: Database, operator: Headers, make_tenant: Callable[..., Org]
) -> None:
    acme = make_tenant(credits=None)
    assert decision(client, acme.key, acme.id, credits="1")[:3] == (
        False,
        "insufficient_credits",
        "0",
    )
    grant(client, operator, acme.id, "3")
    assert decision(client, acme.key, acme.id, credits="1")[:3] == (True, "ok", "3")
    client.post("/v1/usage", json=event("e1", acme.id), headers=acme.key)
    assert decision(client, acme.key, acme.id, credits="1")[:3] == (True, "ok", "2.995")
    hold = client.post(
        "/v1/holds",
        json={"organization": acme.id, "operation": "training", "credits": "2.5"},
        headers=acme.key,
    )
    assert hold.status_code == 201, hold.text
    assert decision(client, acme.key, acme.id, credits="1")[:3] == (
        False,
        "insufficient_credits",
        "0.495",
    )
    client.delete(f"/v1/holds/{hold.json()['id']}", headers=acme.key)
    assert decision(client, acme.key, acme.id, credits="1")[:3] == (True, "ok", "2.995")


def test_a_paused_organization_resumes_by_itself_when_credits_arrive(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    for i in range(2):
        client.post("/v1/usage", json=event(f"run-{i}", acme.id, "training"), headers=acme.key)
    assert summary(client, acme.key, acme.id)[3] is True  # paused
    assert decision(client, acme.key, acme.id)[:3] == (False, "insufficient_credits", "-3.52")

    grant(client, operator, acme.id, "3.52")  # pays the arrears exactly: still at zero
    assert decision(client, acme.key, acme.id)[:3] == (False, "insufficient_credits", "0")

    grant(client, operator, acme.id, "1")
    assert decision(client, acme.key, acme.id)[:3] == (True, "ok", "1")
    assert summary(client, acme.key, acme.id) == ("1", "0", "0", False)
    assert_clean(db)


def test_expired_lots_and_lots_not_yet_effective_do_not_count(
    client: TestClient, db: Database, operator: Headers, make_tenant: Callable[..., Org]
) -> None:
    acme = make_tenant(credits=None)
    grant(client, operator, acme.id, "5", expires_at=(T0 + timedelta(hours=1)).isoformat())
    grant(client, operator, acme.id, "7", effective_at=(T0 + timedelta(days=1)).isoformat())
    assert decision(client, acme.key, acme.id)[2] == "5"
    with clock.frozen_at(T0 + timedelta(hours=2)):  # the first expired, not yet swept
        assert decision(client, acme.key, acme.id)[:3] == (False, "insufficient_credits", "0")
    with clock.frozen_at(T0 + timedelta(days=1)):
        assert decision(client, acme.key, acme.id)[:3] == (True, "ok", "7")


def test_a_suspended_organization_is_refused_and_resumes_when_reinstated(
    client: TestClient, db: Database, acme: Org
) -> None:
    def set_status(status: str) -> None:
        with db.write() as s:
            s.execute(
                text("UPDATE organizations SET status = :status WHERE id = :id"),
                {"status": status, "id": acme.id},
            )

    set_status("suspended")
    assert decision(client, acme.key, acme.id, credits="1") == (
        False,
        "organization_suspended",
        "10",
        "1",
    )
    hold = client.post(
        "/v1/holds",
        json={"organization": acme.id, "operation": "training", "credits": "1"},
        headers=acme.key,
    )
    assert_problem(hold, 402, "organization_suspended")
    # usage already performed is still recorded
    assert client.post("/v1/usage", json=event("e1", acme.id), headers=acme.key).status_code == 201
    set_status("active")
    assert decision(client, acme.key, acme.id, credits="1") == (True, "ok", "9.995", "1")


def test_a_test_key_asks_about_the_test_balance(
    client: TestClient, operator: Headers, make_key: Callable[..., Headers], acme: Org
) -> None:
    sandbox = make_key(acme.id, "org:ingest", environment="test")
    assert decision(client, sandbox, acme.id)[:3] == (False, "insufficient_credits", "0")
    grant(client, operator, acme.id, "2", environment="test")
    assert decision(client, sandbox, acme.id)[:3] == (True, "ok", "2")
    assert decision(client, acme.key, acme.id)[:3] == (True, "ok", "10")


def test_a_project_over_its_budget_is_refused_while_the_organization_runs(
    client: TestClient, operator: Headers, acme: Org
) -> None:
    put = client.put(
        f"/v1/organizations/{acme.id}/projects/{acme.project}/budget",
        json={"monthly_credits": "1"},
        headers=operator,
    )
    assert put.status_code == 200, put.text
    assert decision(client, acme.key, acme.id, project="Research", credits="1")[:2] == (True, "ok")
    assert decision(client, acme.key, acme.id, project=acme.project, credits="1.000001")[:2] == (
        False,
        "project_budget_exceeded",
    )
    assert decision(client, acme.key, acme.id, credits="5")[:2] == (True, "ok")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"organization": "org_01HZZZZZZZZZZZZZZZZZZZZZZZ"}, 404, "unknown_organization"),
        ({"project": "Nope"}, 422, "unknown_project"),
        ({"operation": "rendering"}, 422, "unknown_operation"),
        ({"quantities": {"input_tokens": "-1"}}, 422, "invalid_quantity"),
        ({"quantities": {"input_tokens": 2.5}}, 422, "invalid_quantity"),
        ({"quantities": {"gpu_hours": "1"}}, 422, "unknown_dimension"),
        ({"credits": "0"}, 422, None),
        ({"credits": "-1"}, 422, None),
        ({"credits": 1.5}, 422, None),
        ({"credits": "1.0000001"}, 422, None),
        ({"credits": "lots"}, 422, None),
        ({"operation": None}, 422, "validation_failed"),
        ({"surprise": True}, 422, "validation_failed"),
    ],
)
def test_bad_questions_are_clear_4xx_problems(
    client: TestClient, acme: Org, body: dict[str, Any], status: int, code: str | None
) -> None:
    payload = {"organization": acme.id, "operation": "inference", **body}
    payload = {k: v for k, v in payload.items() if v is not None}
    response = client.post("/v1/authorize", json=payload, headers=acme.key)
    assert_problem(response, status, code)


def test_only_ingest_admin_and_operator_keys_may_ask(
    client: TestClient, operator: Headers, make_key: Callable[..., Headers], acme: Org
) -> None:
    assert_problem(ask(client, make_key(acme.id, "org:read"), acme.id), 403, "insufficient_scope")
    assert decision(client, make_key(acme.id, "org:admin"), acme.id)[0] is True
    assert decision(client, operator, acme.id)[0] is True
    assert_problem(ask(client, {}, acme.id), 401)
