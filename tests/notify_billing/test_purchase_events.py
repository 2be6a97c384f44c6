"""Purchases and auto top-up publish their events once, on SQLite and PostgreSQL: a package bought
with a good card is ``purchase.succeeded`` (and its lot ``credits.granted``), a declined card
``payment.failed`` and ``purchase.failed``; a retry with the same key and a pending purchase
finished by the worker publish nothing twice; on account says so; a declined auto top-up is
``auto_top_up.failed`` with the purchase, and so is one that cannot buy at all."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from creditmeter.billing import purchases
from creditmeter.billing.payments.sandbox import SandboxProvider
from creditmeter.billing.plans import load_catalog
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.worker import runner
from tests.conftest import utc
from tests.notify_billing.events import data, one, published

Headers = dict[str, str]
CATALOG = load_catalog()
JAN_16 = utc(2026, 1, 16, 10, 15)
VISA, DECLINED, INSUFFICIENT = "4242424242424242", "4000000000000002", "4000000000009995"


@pytest.fixture(autouse=True)
def january() -> Iterator[None]:
    with clock.frozen_at(JAN_16):
        yield


def url(org: str, tail: str) -> str:
    return f"/v1/organizations/{org}/{tail}"


@pytest.fixture
def org(client: TestClient, make_org: Callable[..., str], operator: Headers) -> str:
    org_id = make_org("Buyer Co")
    response = client.put(url(org_id, "subscription"), json={"plan": "standard"}, headers=operator)
    assert response.status_code == 200, response.text
    return org_id


def add_card(client: TestClient, org: str, headers: Headers, number: str) -> str:
    card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    response = client.post(url(org, "payment-methods"), json={"card": card}, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def buy(client: TestClient, org: str, headers: Headers, key: str, **body: Any) -> Any:
    return client.post(
        url(org, "purchases"),
        json=body or {"package": "standard"},
        headers={**headers, "Idempotency-Key": key},
    )


def test_a_purchase_publishes_its_outcome_once(
    client: TestClient, db: Database, org: str, operator: Headers
) -> None:
    add_card(client, org, operator, VISA)
    first = buy(client, org, operator, "p-1")
    assert first.status_code == 201, first.text
    assert buy(client, org, operator, "p-1").json() == first.json()  # a retry: the same purchase
    bought = first.json()
    event = one(db, "purchase.succeeded", org)
    assert (event.environment, event.occurred_at) == ("live", JAN_16)
    assert event.source_key == f"purchase.succeeded:{bought['id']}"
    assert event.data == {
        "purchase_id": bought["id"],
        "package": "standard",
        "credits": "1000",
        "amount": "60.00",
        "currency": "USD",
        "status": "succeeded",
        "failure_code": None,
        "auto_top_up": False,
        "billing": "charge",
    }
    [granted] = [d for d in data(db, "credits.granted", org) if d["source"] == "purchase"]
    assert (granted["lot_id"], granted["credits"]) == (bought["lot_id"], "1000")
    assert granted["expires_at"] == "2027-01-16T10:15:00Z"

    custom = buy(client, org, operator, "p-2", credits="2500").json()
    [_, second] = data(db, "purchase.succeeded", org)
    assert (second["purchase_id"], second["package"], second["amount"]) == (
        custom["id"],
        None,
        "150.00",
    )

    card = add_card(client, org, operator, DECLINED)
    declined = buy(client, org, operator, "p-3", package="standard", payment_method=card)
    assert declined.status_code == 402
    assert (
        buy(client, org, operator, "p-3", package="standard", payment_method=card).status_code
        == 402
    )
    failed = one(db, "purchase.failed", org)
    assert (failed.data["status"], failed.data["failure_code"]) == ("failed", "card_declined")
    payment = one(db, "payment.failed", org)
    assert payment.data["purchase_id"] == failed.data["purchase_id"]
    assert payment.data["invoice_id"] is None
    assert (payment.data["amount"], payment.data["attempt"]) == ("60.00", None)
    assert payment.data["failure_code"] == "card_declined"
    assert payment.occurred_at == JAN_16
    assert len(published(db, "purchase.succeeded", org)) == 2


def test_a_pending_purchase_finished_by_the_worker_publishes_once(
    client: TestClient,
    db: Database,
    org: str,
    operator: Headers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_card(client, org, operator, VISA)
    provider = SandboxProvider(db)
    complete = purchases.complete

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the connection dropped after the charge")

    monkeypatch.setattr(purchases, "complete", crash)
    with pytest.raises(RuntimeError):
        purchases.purchase(
            db, provider, CATALOG, org, "live", purchases.PurchaseRequest("standard"), "k-1"
        )
    assert published(db, "purchase.succeeded", org) == []
    monkeypatch.setattr(purchases, "complete", complete)
    [done] = purchases.resume_pending(db, provider, CATALOG, timedelta(0))
    assert done.status == "succeeded"
    assert purchases.resume_pending(db, provider, CATALOG, timedelta(0)) == []
    again = purchases.purchase(
        db, provider, CATALOG, org, "live", purchases.PurchaseRequest("standard"), "k-1"
    )
    assert again.id == done.id
    assert one(db, "purchase.succeeded", org).data["purchase_id"] == done.id
    assert len([d for d in data(db, "credits.granted", org) if d["source"] == "purchase"]) == 1


def test_a_purchase_on_account_is_published_with_its_billing(
    client: TestClient, db: Database, make_org: Callable[..., str], operator: Headers
) -> None:
    big = make_org("Big Co")
    body = {"plan": "enterprise", "allocation_credits": "20000"}
    assert client.put(url(big, "subscription"), json=body, headers=operator).status_code == 200
    on_account = {"package": "professional", "billing": "on_account"}
    made = buy(client, big, operator, "acct-1", **on_account)
    assert made.status_code == 201, made.text
    assert buy(client, big, operator, "acct-1", **on_account).json() == made.json()
    event = one(db, "purchase.succeeded", big)
    assert (event.data["billing"], event.data["amount"], event.data["credits"]) == (
        "on_account",
        "200.00",
        "5000",
    )
    assert published(db, "payment.failed", big) == []


SETTING = {"enabled": True, "threshold_credits": "100", "package": "standard",
           "monthly_limit_money": 12000}  # fmt: skip


def run_jobs(db: Database, catalog: Any = CATALOG) -> None:
    runner.run_jobs(db, SandboxProvider(db), catalog, clock.now())


def spend_all(db: Database, org: str) -> None:
    with db.write() as session:
        left = ledger.get_balance(session, org, "live", clock.now()).available_micros
        amount = max(left, 10_000_000)  # at least 10 credits: more usage once it is all gone
        ledger.debit(session, org, "live", amount, "inference", "usage", clock.now())


def test_a_declined_auto_top_up_publishes_auto_top_up_failed_once(
    client: TestClient, db: Database, org: str, operator: Headers
) -> None:
    add_card(client, org, operator, INSUFFICIENT)
    assert client.put(url(org, "auto-top-up"), json=SETTING, headers=operator).status_code == 200
    spend_all(db, org)
    run_jobs(db)
    with clock.frozen_at(JAN_16 + timedelta(hours=1)):
        spend_all(db, org)
        run_jobs(db)  # no retry: it is off

    event = one(db, "auto_top_up.failed", org)
    [purchase] = data(db, "purchase.failed", org)
    assert purchase["auto_top_up"] is True
    assert purchase["failure_code"] == "insufficient_funds"
    assert event.source_key == f"auto_top_up.failed:purchase:{purchase['purchase_id']}"
    assert event.occurred_at == JAN_16
    reason = event.data.pop("reason")
    assert "insufficient_funds" in reason
    assert event.data == {
        "purchase_id": purchase["purchase_id"],
        "package": "standard",
        "failure_code": "insufficient_funds",
        "disabled": True,
    }
    assert data(db, "payment.failed", org)[0]["purchase_id"] == purchase["purchase_id"]


def test_an_auto_top_up_that_cannot_buy_at_all_publishes_why(
    client: TestClient, db: Database, org: str, operator: Headers
) -> None:
    add_card(client, org, operator, VISA)
    assert client.put(url(org, "auto-top-up"), json=SETTING, headers=operator).status_code == 200
    spend_all(db, org)
    run_jobs(db, replace(CATALOG, packages={}))  # the operator removed the package it buys
    run_jobs(db, replace(CATALOG, packages={}))
    event = one(db, "auto_top_up.failed", org)
    assert event.source_key is not None
    assert event.source_key.startswith("auto_top_up.failed:job:")
    assert (event.data["purchase_id"], event.data["package"]) == (None, "standard")
    assert (event.data["failure_code"], event.data["disabled"]) == ("unknown_package", True)
    assert event.data["reason"].startswith("cannot top up:")
