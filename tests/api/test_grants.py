"""Grants: every allocation of credits is a lot, created by an operator, idempotent under an
Idempotency-Key, with exact decimal-string credits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.kit.idempotency import IdempotencyRecord
from creditmeter.ledger.models import Balance, JournalTransaction, Lot
from creditmeter.ledger.verify import verify
from tests.conftest import utc

Headers = dict[str, str]
ORGS = "/v1/organizations"


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    return body


def grant_body(credits: str = "100", source: str = "plan", **extra: Any) -> dict[str, Any]:
    return {"credits": credits, "source": source, "reason": "January plan credits", **extra}


def post_grant(
    client: TestClient,
    org: str,
    headers: Headers,
    body: dict[str, Any],
    key: str | None = None,
    **params: str,
) -> Any:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return client.post(
        f"{ORGS}/{org}/grants", json=body, headers={**headers, **extra}, params=params
    )


def ledger_state(db: Database, org: str) -> tuple[Any, ...]:
    """Everything a grant could change for one organization."""
    with db.read() as s:
        lots = s.execute(
            select(Lot.id, Lot.remaining_micros).where(Lot.organization_id == org).order_by(Lot.id)
        ).all()
        txns = s.scalar(select(func.count()).where(JournalTransaction.organization_id == org))
        balances = s.execute(
            select(
                Balance.environment,
                Balance.lots_micros,
                Balance.arrears_micros,
                Balance.held_micros,
            )
            .where(Balance.organization_id == org)
            .order_by(Balance.environment)
        ).all()
        records = s.scalar(select(func.count()).select_from(IdempotencyRecord))
    return (tuple(lots), txns, tuple(balances), records)


def balance(client: TestClient, org: str, headers: Headers, **params: str) -> dict[str, Any]:
    response = client.get(f"{ORGS}/{org}/balance", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- what a grant is -----------------------------------------------------------------------------


def test_a_grant_creates_a_lot(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    expires = "2036-02-01T00:00:00Z"
    response = post_grant(client, org, operator, grant_body("1000", expires_at=expires))

    assert response.status_code == 201, response.text
    lot = response.json()
    assert lot["id"].startswith("lot_")
    assert (lot["credits"], lot["remaining"], lot["source"]) == ("1000", "1000", "plan")
    assert lot["expires_at"] == expires
    assert lot["priority"] == 100
    assert lot["cost_basis"] == "0"
    assert lot["reason"] == "January plan credits"
    assert balance(client, org, operator)["available"] == "1000"


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("12.5", "12.5"),
        ("12.50", "12.5"),
        ("0.000001", "0.000001"),
        ("1000", "1000"),
        ("1000.000000", "1000"),
        ("999999.999999", "999999.999999"),
        ("1000000000000", "1000000000000"),
    ],
)
def test_credits_are_exact_decimal_strings(
    client: TestClient, operator: Headers, make_org: Callable[..., str], sent: str, shown: str
) -> None:
    org = make_org()
    lot = post_grant(client, org, operator, grant_body(sent)).json()
    assert (lot["credits"], lot["remaining"]) == (shown, shown)
    assert balance(client, org, operator)["available"] == shown


@pytest.mark.parametrize("source", ["plan", "purchase", "promo", "adjustment"])
def test_every_source_is_accepted(
    client: TestClient, operator: Headers, make_org: Callable[..., str], source: str
) -> None:
    response = post_grant(client, make_org(), operator, grant_body("5", source))
    assert response.status_code == 201
    assert response.json()["source"] == source


def test_a_purchase_records_its_cost_basis(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    lot = post_grant(
        client, make_org(), operator, grant_body("1000", "purchase", cost_basis="0.01")
    ).json()
    assert (lot["cost_basis"], lot["currency"]) == ("0.01", "USD")


def test_a_promo_with_a_zero_cost_basis_is_fine(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    response = post_grant(client, make_org(), operator, grant_body("5", "promo", cost_basis="0"))
    assert response.status_code == 201


def test_priority_and_effective_time_are_kept(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    start = (clock.now() + timedelta(days=3)).replace(microsecond=0)
    lot = post_grant(
        client,
        org,
        operator,
        grant_body("50", priority=7, effective_at=start.isoformat().replace("+00:00", "Z")),
    ).json()
    assert lot["priority"] == 7
    assert lot["effective_at"] == start.isoformat().replace("+00:00", "Z")
    view = balance(client, org, operator)
    assert view["available"] == "0"  # not effective yet
    assert [x["id"] for x in view["lots"]] == [lot["id"]]


def test_timestamps_in_other_offsets_are_stored_in_utc(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    lot = post_grant(
        client, make_org(), operator, grant_body(expires_at="2031-03-01T09:00:00+02:00")
    ).json()
    assert lot["expires_at"] == "2031-03-01T07:00:00Z"


def test_the_operator_grants_to_the_test_environment_on_request(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    assert (
        post_grant(client, org, operator, grant_body("30"), environment="test").status_code == 201
    )
    assert balance(client, org, operator)["available"] == "0"
    sandbox = balance(client, org, operator, environment="test")
    assert (sandbox["environment"], sandbox["available"]) == ("test", "30")


# --- who may grant -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "code"),
    [
        ("org:admin", "operator_only"),
        ("org:read", "insufficient_scope"),
        ("org:ingest", "insufficient_scope"),
    ],
)
@pytest.mark.parametrize("source", ["plan", "promo", "adjustment", "purchase"])
def test_only_an_operator_grants(
    client: TestClient,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
    db: Database,
    scope: str,
    code: str,
    source: str,
) -> None:
    org = make_org()
    before = ledger_state(db, org)
    response = post_grant(client, org, make_key(org, scope), grant_body("10", source), key="k1")
    assert_problem(response, 403, code)
    assert ledger_state(db, org) == before


# --- idempotency ---------------------------------------------------------------------------------


def test_a_retry_with_the_same_key_and_body_returns_the_first_result(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    first = post_grant(client, org, operator, grant_body("100"), key="plan-2026-01")
    retry = post_grant(client, org, operator, grant_body("100"), key="plan-2026-01")

    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.json() == first.json()
    lots = client.get(f"{ORGS}/{org}/grants", headers=operator).json()["data"]
    assert [lot["id"] for lot in lots] == [first.json()["id"]]
    assert balance(client, org, operator)["available"] == "100"
    with db.read() as s:
        assert s.scalar(select(func.count()).where(JournalTransaction.organization_id == org)) == 1


def test_the_same_amount_written_differently_is_the_same_request(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    first = post_grant(client, org, operator, grant_body("100"), key="k")
    retry = client.post(
        f"{ORGS}/{org}/grants",
        content='{"reason": "January plan credits", "source": "plan", "credits": "100.0"}',
        headers={**operator, "Idempotency-Key": "k", "Content-Type": "application/json"},
    )
    assert retry.status_code == 201
    assert retry.json() == first.json()


@pytest.mark.parametrize(
    "changed",
    [
        grant_body("101"),
        grant_body("100", "promo"),
        {**grant_body("100"), "reason": "another reason"},
        grant_body("100", priority=5),
        grant_body("100", expires_at="2040-01-01T00:00:00Z"),
    ],
)
def test_the_same_key_with_a_different_body_is_409_and_changes_nothing(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    db: Database,
    changed: dict[str, Any],
) -> None:
    org = make_org()
    first = post_grant(client, org, operator, grant_body("100"), key="k")
    before = ledger_state(db, org)

    response = post_grant(client, org, operator, changed, key="k")

    body = assert_problem(response, 409, "idempotency_key_reused")
    assert "new key" in body["detail"]
    assert ledger_state(db, org) == before
    assert post_grant(client, org, operator, grant_body("100"), key="k").json() == first.json()


def test_the_same_key_in_another_environment_is_409(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    post_grant(client, org, operator, grant_body("100"), key="k")
    before = ledger_state(db, org)
    response = post_grant(client, org, operator, grant_body("100"), key="k", environment="test")
    assert_problem(response, 409, "idempotency_key_reused")
    assert ledger_state(db, org) == before


def test_idempotency_keys_belong_to_one_organization(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    acme, globex = make_org("Acme"), make_org("Globex")
    a = post_grant(client, acme, operator, grant_body("100"), key="plan-2026-01")
    g = post_grant(client, globex, operator, grant_body("100"), key="plan-2026-01")
    assert (a.status_code, g.status_code) == (201, 201)
    assert a.json()["id"] != g.json()["id"]
    assert balance(client, acme, operator)["available"] == "100"
    assert balance(client, globex, operator)["available"] == "100"


def test_without_a_key_every_post_is_a_new_grant(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    for _ in range(2):
        assert post_grant(client, org, operator, grant_body("100")).status_code == 201
    assert balance(client, org, operator)["available"] == "200"


def test_a_rejected_request_does_not_burn_its_key(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    bad = post_grant(client, org, operator, grant_body("-1"), key="k")
    assert_problem(bad, 422)
    good = post_grant(client, org, operator, grant_body("1"), key="k")
    assert good.status_code == 201


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tinside"])
def test_an_unusable_idempotency_key_is_422(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database, key: str
) -> None:
    org = make_org()
    before = ledger_state(db, org)
    response = post_grant(client, org, operator, grant_body(), key=key)
    assert_problem(response, 422, "invalid_idempotency_key")
    assert ledger_state(db, org) == before


def test_concurrent_retries_with_one_key_create_one_lot(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    results: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def attempt() -> None:
        start.wait()
        response = post_grant(client, org, operator, grant_body("100"), key="once")
        with lock:
            results.append(response)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert {r.status_code for r in results} == {201}, [r.text for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    assert balance(client, org, operator)["available"] == "100"
    with db.read() as s:
        assert s.scalar(select(func.count()).where(Lot.organization_id == org)) == 1
        assert verify(s) == []


# --- listing lots --------------------------------------------------------------------------------


def test_the_grant_list_shows_every_lot_oldest_first_including_spent_ones(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    from creditmeter.ledger import service as ledger

    org = make_org()
    ids = []
    for i, when in enumerate([utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 1, 3)]):
        with clock.frozen_at(when):
            ids.append(post_grant(client, org, operator, grant_body(f"{i + 1}")).json()["id"])
    with db.write() as s:
        ledger.debit(s, org, "live", 1_000_000, "inference", "spend the first lot", utc(2026, 1, 4))

    lots = client.get(f"{ORGS}/{org}/grants", headers=operator).json()["data"]

    assert [lot["id"] for lot in lots] == ids
    assert [(lot["credits"], lot["remaining"]) for lot in lots] == [
        ("1", "0"),
        ("2", "2"),
        ("3", "3"),
    ]


def test_the_grant_list_is_cursor_paginated(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org()
    made = [post_grant(client, org, operator, grant_body("1")).json()["id"] for _ in range(5)]
    reader = make_key(org, "org:read")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get(f"{ORGS}/{org}/grants", params=params, headers=reader).json()
        seen += [lot["id"] for lot in body["data"]]
        pages += 1
        if not body["has_more"]:
            break
        cursor = body["next_cursor"]
    assert pages == 3
    assert sorted(seen) == sorted(made)
    assert len(seen) == 5
