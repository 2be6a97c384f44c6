"""The balance (available, arrears, held, paused, lots in burn order), the journal (newest first,
zero-sum postings, paginated) and reversals, through the v1 API.

Usage is recorded with the ledger service (``debit``) until the usage endpoint exists.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from creditmeter.kit import clock
from creditmeter.kit.credits import parse_credits
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.verify import verify
from tests.conftest import utc

Headers = dict[str, str]
ORGS = "/v1/organizations"
T0 = utc(2026, 3, 1, 9)


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    return body


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def grant(
    client: TestClient, org: str, headers: Headers, credits: str, source: str = "plan", **extra: Any
) -> dict[str, Any]:
    body = {"credits": credits, "source": source, "reason": f"{source} credits", **extra}
    response = client.post(f"{ORGS}/{org}/grants", json=body, headers=headers)
    assert response.status_code == 201, response.text
    lot: dict[str, Any] = response.json()
    return lot


def debit(
    db: Database, org: str, credits: str, when: datetime, operation: str = "inference"
) -> int:
    with db.write() as s:
        return ledger.debit(
            s, org, "live", parse_credits(credits), operation, "AI Engine usage", when
        ).transaction_id


def balance(client: TestClient, org: str, headers: Headers, **params: str) -> dict[str, Any]:
    response = client.get(f"{ORGS}/{org}/balance", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def journal(client: TestClient, org: str, headers: Headers, **params: Any) -> dict[str, Any]:
    response = client.get(f"{ORGS}/{org}/ledger", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_clean(db: Database) -> None:
    with db.read() as s:
        assert verify(s) == []


# --- the balance ---------------------------------------------------------------------------------


def test_a_new_organization_has_nothing_and_is_paused(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    assert balance(client, org, operator) == {
        "organization_id": org,
        "environment": "live",
        "available": "0",
        "arrears": "0",
        "held": "0",
        "paused": True,
        "lots": [],
    }


def test_lots_are_listed_in_the_order_they_pay(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    db: Database,
) -> None:
    org = make_org()
    lots: dict[str, str] = {}
    grants = [
        # name, source, extra fields; each granted one minute after the previous one
        ("paid_old", "purchase", {}),
        ("paid_new", "purchase", {}),
        ("paid_30d", "purchase", {"expires_at": iso(T0 + timedelta(days=30))}),
        ("promo_30d", "promo", {"expires_at": iso(T0 + timedelta(days=30))}),
        ("plan_10d", "plan", {"expires_at": iso(T0 + timedelta(days=10))}),
        ("urgent", "adjustment", {"priority": 5}),
        ("later", "plan", {"effective_at": iso(T0 + timedelta(days=2))}),
        ("promo_never", "promo", {}),
    ]
    for minute, (name, source, extra) in enumerate(grants):
        with clock.frozen_at(T0 + timedelta(minutes=minute)):
            lots[name] = grant(client, org, operator, "10", source, **extra)["id"]

    with clock.frozen_at(T0 + timedelta(hours=1)):
        view = balance(client, org, operator)

    expected = [
        "urgent",  # lower priority number first, even though it never expires
        "plan_10d",  # then the soonest expiry
        "promo_30d",  # same expiry: promotional before paid
        "paid_30d",
        "promo_never",  # never-expiring last; promotional first among them
        "paid_old",  # then the oldest
        "paid_new",
        "later",  # not effective yet: listed after every lot that can pay
    ]
    assert [lot["id"] for lot in view["lots"]] == [lots[name] for name in expected]
    assert view["available"] == "70"
    assert view["paused"] is False
    first = view["lots"][0]
    assert first.keys() >= {"id", "source", "remaining", "expires_at", "priority"}
    assert (first["source"], first["remaining"], first["priority"]) == ("adjustment", "10", 5)

    # and a debit really pays in that order
    debit(db, org, "35", T0 + timedelta(hours=2))
    with clock.frozen_at(T0 + timedelta(hours=2)):
        remaining = {x["id"]: x["remaining"] for x in balance(client, org, operator)["lots"]}
    assert lots["urgent"] not in remaining
    assert lots["plan_10d"] not in remaining
    assert lots["promo_30d"] not in remaining
    assert remaining[lots["paid_30d"]] == "5"
    assert remaining[lots["promo_never"]] == "10"
    assert_clean(db)


def test_an_expired_lot_is_neither_listed_nor_available_nor_spent(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    db: Database,
) -> None:
    org = make_org()
    with clock.frozen_at(T0):
        grant(client, org, operator, "100", "promo", expires_at=iso(T0 + timedelta(days=1)))
        lasting = grant(client, org, operator, "5", "purchase")
        assert balance(client, org, operator)["available"] == "105"

    later = T0 + timedelta(days=2)
    with clock.frozen_at(later):
        view = balance(client, org, operator)
    assert [lot["id"] for lot in view["lots"]] == [lasting["id"]]
    assert view["available"] == "5"

    debit(db, org, "8", later)
    with clock.frozen_at(later):
        view = balance(client, org, operator)
    assert (view["available"], view["arrears"], view["paused"]) == ("-3", "3", True)
    assert view["lots"] == []
    assert_clean(db)


def test_usage_beyond_the_balance_goes_to_arrears_and_pauses(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    grant(client, org, operator, "10")

    debit(db, org, "15.25", clock.now())

    view = balance(client, org, operator)
    assert (view["available"], view["arrears"], view["held"]) == ("-5.25", "5.25", "0")
    assert view["paused"] is True
    assert view["lots"] == []
    assert_clean(db)


def test_the_next_credits_pay_the_arrears_first_then_the_organization_resumes(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    grant(client, org, operator, "10")
    debit(db, org, "15", clock.now())

    small = grant(client, org, operator, "3", "purchase")
    view = balance(client, org, operator)
    assert (view["available"], view["arrears"], view["paused"]) == ("-2", "2", True)
    lots = client.get(f"{ORGS}/{org}/grants", headers=operator).json()["data"]
    assert {lot["id"]: lot["remaining"] for lot in lots}[small["id"]] == "0"

    big = grant(client, org, operator, "10", "purchase")
    view = balance(client, org, operator)
    assert (view["available"], view["arrears"], view["paused"]) == ("8", "0", False)
    assert [(lot["id"], lot["remaining"]) for lot in view["lots"]] == [(big["id"], "8")]

    newest = journal(client, org, operator)["data"][0]
    assert newest["kind"] == "arrears_settlement"
    assert sorted((p["account"], p["credits"]) for p in newest["postings"]) == [
        ("arrears", "2"),
        ("lot", "-2"),
    ]
    assert_clean(db)


def test_exactly_zero_is_paused(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    grant(client, org, operator, "1.5")
    debit(db, org, "1.5", clock.now())
    view = balance(client, org, operator)
    assert (view["available"], view["arrears"], view["paused"]) == ("0", "0", True)


def test_an_ingest_key_reads_the_balance_but_not_the_journal(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org()
    grant(client, org, operator, "42")
    engine = make_key(org, "org:ingest")
    assert balance(client, org, engine)["available"] == "42"
    assert_problem(client.get(f"{ORGS}/{org}/ledger", headers=engine), 403, "insufficient_scope")


def test_test_keys_see_the_sandbox_balance_and_live_keys_the_live_one(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org()
    grant(client, org, operator, "1000")
    response = client.post(
        f"{ORGS}/{org}/grants",
        params={"environment": "test"},
        headers=operator,
        json={"credits": "25", "source": "promo", "reason": "sandbox"},
    )
    assert response.status_code == 201

    live, sandbox = make_key(org, "org:read"), make_key(org, "org:read", environment="test")
    assert (
        balance(client, org, live)["available"],
        balance(client, org, sandbox)["available"],
    ) == ("1000", "25")
    assert balance(client, org, sandbox)["environment"] == "test"
    assert [t["environment"] for t in journal(client, org, sandbox)["data"]] == ["test"]
    assert_problem(
        client.get(f"{ORGS}/{org}/balance", params={"environment": "live"}, headers=sandbox),
        403,
        "environment_mismatch",
    )
    assert_problem(
        client.get(f"{ORGS}/{org}/ledger", params={"environment": "test"}, headers=live),
        403,
        "environment_mismatch",
    )


# --- the journal ---------------------------------------------------------------------------------


def test_the_journal_is_newest_first_and_every_transaction_sums_to_zero(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    grant(client, org, operator, "10")
    debit(db, org, "4", clock.now(), "training")
    grant(client, org, operator, "2.5", "promo")
    debit(db, org, "10", clock.now())  # runs 1.5 into arrears
    grant(client, org, operator, "5", "purchase")  # pays them

    txns = journal(client, org, operator)["data"]

    assert [t["kind"] for t in txns] == [
        "arrears_settlement",
        "grant",
        "debit",
        "grant",
        "debit",
        "grant",
    ]
    numbers = [int(t["id"].removeprefix("txn_")) for t in txns]
    assert numbers == sorted(numbers, reverse=True)
    for txn in txns:
        assert txn["postings"], txn
        assert sum(Decimal(p["credits"]) for p in txn["postings"]) == 0, txn
        assert txn["environment"] == "live"
        assert txn["reverses"] is None
        assert txn["created_at"].endswith("Z")

    first_grant = txns[-1]
    assert sorted((p["account"], p["credits"]) for p in first_grant["postings"]) == [
        ("issuance:plan", "-10"),
        ("lot", "10"),
    ]
    assert all(p["lot_id"] for p in first_grant["postings"] if p["account"] == "lot")
    training = txns[-2]
    assert ("consumption:training", "4") in {
        (p["account"], p["credits"]) for p in training["postings"]
    }
    overdraft = txns[2]
    assert ("arrears", "-1.5") in {(p["account"], p["credits"]) for p in overdraft["postings"]}
    assert_clean(db)


def test_the_journal_is_cursor_paginated(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org()
    for i in range(5):
        grant(client, org, operator, str(i + 1))
    reader = make_key(org, "org:read")
    everything = [t["id"] for t in journal(client, org, reader)["data"]]

    seen: list[str] = []
    sizes = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = journal(client, org, reader, **params)
        seen += [t["id"] for t in page["data"]]
        sizes.append(len(page["data"]))
        assert page["has_more"] == (page["next_cursor"] is not None)
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]

    assert sizes == [2, 2, 1]
    assert seen == everything
    assert len(set(seen)) == 5


def test_an_empty_journal(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    body = journal(client, make_org(), operator)
    assert body == {"data": [], "has_more": False, "next_cursor": None}


# --- reversals -----------------------------------------------------------------------------------


def test_reversing_a_debit_restores_the_exact_balance(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    grant(client, org, operator, "10")
    txn = debit(db, org, "3.333333", clock.now())
    assert balance(client, org, operator)["available"] == "6.666667"

    response = client.post(
        f"{ORGS}/{org}/ledger/txn_{txn}/reverse",
        json={"reason": "engine double-counted"},
        headers=operator,
    )

    assert response.status_code == 201, response.text
    reversal = response.json()
    assert reversal["reverses"] == f"txn_{txn}"
    assert reversal["kind"] == "reversal"
    assert sum(Decimal(p["credits"]) for p in reversal["postings"]) == 0
    original = next(t for t in journal(client, org, operator)["data"] if t["id"] == f"txn_{txn}")
    assert sorted((p["account"], Decimal(p["credits"])) for p in reversal["postings"]) == sorted(
        (p["account"], -Decimal(p["credits"])) for p in original["postings"]
    )
    assert balance(client, org, operator)["available"] == "10"
    assert journal(client, org, operator)["data"][0]["id"] == reversal["id"]
    assert_clean(db)


def test_a_transaction_is_reversed_once_and_a_reversal_never(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    grant(client, org, operator, "10")
    txn = debit(db, org, "3", clock.now())
    url = f"{ORGS}/{org}/ledger/txn_{txn}/reverse"
    reversal = client.post(url, json={"reason": "refund"}, headers=operator).json()

    assert_problem(
        client.post(url, json={"reason": "again"}, headers=operator), 409, "already_reversed"
    )
    assert_problem(
        client.post(
            f"{ORGS}/{org}/ledger/{reversal['id']}/reverse",
            json={"reason": "undo"},
            headers=operator,
        ),
        409,
        "not_reversible",
    )
    assert balance(client, org, operator)["available"] == "10"
    assert_clean(db)


def test_reversing_a_grant_takes_its_credits_back(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    lot = grant(client, org, operator, "10", "adjustment")
    txn = journal(client, org, operator)["data"][0]["id"]
    response = client.post(
        f"{ORGS}/{org}/ledger/{txn}/reverse",
        json={"reason": "granted by mistake"},
        headers=operator,
    )
    assert response.status_code == 201
    assert balance(client, org, operator)["available"] == "0"
    lots = client.get(f"{ORGS}/{org}/grants", headers=operator).json()["data"]
    assert [(x["id"], x["remaining"]) for x in lots] == [(lot["id"], "0")]
    assert_clean(db)


def test_reversing_a_grant_that_was_already_spent_is_409_and_changes_nothing(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    grant(client, org, operator, "10")
    txn = journal(client, org, operator)["data"][0]["id"]
    debit(db, org, "4", clock.now())
    before = journal(client, org, operator)
    response = client.post(
        f"{ORGS}/{org}/ledger/{txn}/reverse", json={"reason": "oops"}, headers=operator
    )
    assert_problem(response, 409)
    assert journal(client, org, operator) == before
    assert balance(client, org, operator)["available"] == "6"


@pytest.mark.parametrize("scope", ["org:admin", "org:read", "org:ingest"])
def test_only_an_operator_reverses(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
    db: Database,
    scope: str,
) -> None:
    org = make_org()
    grant(client, org, operator, "10")
    txn = debit(db, org, "3", clock.now())
    response = client.post(
        f"{ORGS}/{org}/ledger/txn_{txn}/reverse",
        json={"reason": "please"},
        headers=make_key(org, scope),
    )
    assert_problem(response, 403)
    assert balance(client, org, operator)["available"] == "7"


@pytest.mark.parametrize(
    "ref", ["txn_999999", "999999", "abc", "txn_", "txn_-1", "txn_1e3", "9" * 40]
)
def test_reversing_an_unknown_transaction_is_404(
    client: TestClient, operator: Headers, make_org: Callable[..., str], ref: str
) -> None:
    org = make_org()
    response = client.post(
        f"{ORGS}/{org}/ledger/{ref}/reverse", json={"reason": "x"}, headers=operator
    )
    assert_problem(response, 404, "not_found")


def test_a_reversal_needs_a_reason(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    grant(client, org, operator, "10")
    txn = debit(db, org, "3", clock.now())
    for body in ({}, {"reason": ""}, {"reason": "x", "amount": "1"}):
        response = client.post(
            f"{ORGS}/{org}/ledger/txn_{txn}/reverse", json=body, headers=operator
        )
        problem = assert_problem(response, 422, "validation_failed")
        assert problem["errors"]
    assert balance(client, org, operator)["available"] == "7"


def test_a_transaction_of_another_organization_cannot_be_reversed_through_this_one(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    acme, globex = make_org("Acme"), make_org("Globex")
    grant(client, acme, operator, "10")
    grant(client, globex, operator, "10")
    theirs = debit(db, globex, "4", clock.now())

    response = client.post(
        f"{ORGS}/{acme}/ledger/txn_{theirs}/reverse", json={"reason": "x"}, headers=operator
    )

    assert_problem(response, 404, "not_found")
    assert balance(client, globex, operator)["available"] == "6"
    assert balance(client, acme, operator)["available"] == "10"
    assert_clean(db)
