"""Guarded auto top-up: one purchase when available credits fall below the threshold, never two in
flight, a cooldown, the monthly cap, and a decline that turns it off with the reason. Also sandbox
refunds (idempotent, never more than was charged)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from creditmeter.billing.payments.models import Purchase
from creditmeter.billing.payments.provider import CardSource, PaymentError
from creditmeter.billing.payments.sandbox import SandboxProvider
from creditmeter.billing.plans import load_catalog
from creditmeter.kit import clock
from creditmeter.kit.credits import parse_credits
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.verify import verify
from creditmeter.worker import runner
from tests.api.test_bad_input import assert_problem
from tests.api.test_payments import JAN_16, add_card, available, url

Headers = dict[str, str]


@pytest.fixture(autouse=True)
def january() -> Iterator[None]:
    with clock.frozen_at(JAN_16):
        yield


@pytest.fixture
def org(client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]) -> str:
    org_id = make_org()
    admin = make_key(org_id, "org:admin")
    assert client.put(
        url(org_id, "subscription"), json={"plan": "standard"}, headers=admin
    ).is_success
    return org_id


@pytest.fixture
def admin(org: str, make_key: Callable[..., Headers]) -> Headers:
    return make_key(org, "org:admin")


SETTING = {"enabled": True, "threshold_credits": "100", "package": "standard",
           "monthly_limit_money": 12000}  # fmt: skip


def spend_down_to(db: Database, client: TestClient, org: str, admin: Headers, left: str) -> None:
    excess = parse_credits(available(client, org, admin)) - parse_credits(left)
    with db.write() as s:
        ledger.debit(s, org, "live", excess, "inference", "usage", clock.now())


def run(db: Database) -> list[Any]:
    """The worker's outbox step: every due job; the purchases the auto top-up jobs made."""
    outcomes = runner.run_jobs(db, SandboxProvider(db), load_catalog(), clock.now())
    assert [o.error for o in outcomes if o.error] == []
    return [o.result for o in outcomes if isinstance(o.result, Purchase)]


def test_auto_top_up_buys_once_below_the_threshold_and_respects_cooldown_and_cap(
    client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    add_card(client, org, admin)
    response = client.put(url(org, "auto-top-up"), json=SETTING, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["spent_this_cycle"] == {"amount_minor": 0, "currency": "USD"}
    assert run(db) == []  # above the threshold: nothing to do

    spend_down_to(db, client, org, admin, "50")
    [bought] = run(db)
    assert (bought.status, bought.purpose, bought.amount_minor) == (
        "succeeded",
        "auto_top_up",
        6000,
    )
    assert available(client, org, admin) == "1050"
    assert run(db) == []  # above the threshold again

    spend_down_to(db, client, org, admin, "10")
    assert run(db) == []  # the cooldown
    with clock.frozen_at(JAN_16 + timedelta(minutes=11)):
        [second] = run(db)
        assert second.status == "succeeded"
        spend_down_to(db, client, org, admin, "10")
    with clock.frozen_at(JAN_16 + timedelta(minutes=30)):
        assert run(db) == []  # a third would pass the monthly cap of USD 120.00
        shown = client.get(url(org, "auto-top-up"), headers=admin).json()
    assert shown["spent_this_cycle"] == {"amount_minor": 12000, "currency": "USD"}
    assert shown["enabled"]
    payments = client.get(url(org, "payments"), headers=admin).json()["data"]
    assert [p["purpose"] for p in payments] == ["auto_top_up", "auto_top_up"]
    with db.read() as s:
        assert verify(s) == []


def test_a_decline_turns_auto_top_up_off_and_records_why(
    client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    add_card(client, org, admin, "4000000000009995")
    assert client.put(url(org, "auto-top-up"), json=SETTING, headers=admin).status_code == 200
    spend_down_to(db, client, org, admin, "0")
    [failed] = run(db)
    assert (failed.status, failed.failure_code) == ("failed", "insufficient_funds")
    shown = client.get(url(org, "auto-top-up"), headers=admin).json()
    assert not shown["enabled"]
    assert "insufficient_funds" in shown["disabled_reason"]
    with clock.frozen_at(JAN_16 + timedelta(hours=1)):
        assert run(db) == []  # no retry loop
    assert available(client, org, admin) == "0"
    again = client.put(url(org, "auto-top-up"), json=SETTING, headers=admin).json()
    assert (again["enabled"], again["disabled_reason"]) == (True, None)


def test_bad_auto_top_up_settings_are_422(client: TestClient, org: str, admin: Headers) -> None:
    no_card = client.put(url(org, "auto-top-up"), json=SETTING, headers=admin)
    assert_problem(no_card, 422, "payment_method_required")
    add_card(client, org, admin)
    low = client.put(url(org, "auto-top-up"), json={**SETTING, "monthly_limit_money": 100},
                     headers=admin)  # fmt: skip
    assert_problem(low, 422, "monthly_limit_too_low")
    custom = client.put(url(org, "auto-top-up"), json={**SETTING, "package": None, "credits": "150"},
                        headers=admin)  # fmt: skip
    assert_problem(custom, 422, "invalid_credits")
    assert_problem(client.get(url(org, "auto-top-up"), headers=admin), 404, "auto_top_up_not_found")


def test_a_sandbox_refund_is_idempotent_and_never_more_than_the_charge(db: Database) -> None:
    sandbox = SandboxProvider(db)
    customer = sandbox.create_customer("org_x", "X", "customer:org_x:live")
    assert sandbox.create_customer("org_x", "X", "customer:org_x:live") == customer
    token = sandbox.tokenize("4242424242424242", 12, 2030)
    method = sandbox.attach(customer, CardSource(token=token))
    charge = sandbox.charge(5000, "USD", customer, method.token, "c-1", "test")
    assert charge.succeeded
    assert sandbox.charge(5000, "USD", customer, method.token, "c-1", "test") == charge
    first = sandbox.refund(str(charge.provider_id), 2000, "r-1")
    assert sandbox.refund(str(charge.provider_id), 2000, "r-1") == first
    with pytest.raises(PaymentError):
        sandbox.refund(str(charge.provider_id), 3001, "r-2")
    assert sandbox.refund(str(charge.provider_id), 3000, "r-3").amount_minor == 3000
