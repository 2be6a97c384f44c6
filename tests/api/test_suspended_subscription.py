"""A suspended organization's subscription over HTTP with the worker, on SQLite and PostgreSQL: the
month that begins while it is suspended shows its plan credits withheld (no lot, no fee); it may not
upgrade (409 organization_suspended, nothing changed) but may keep or cancel its plan; paying the
past-due invoice releases the rest of the month at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.worker.runner import tick
from tests.api.test_bad_input import assert_problem, everything
from tests.conftest import utc
from tests.metering import Headers, assert_clean

DECLINED = "4000000000000002"
VISA = "4242424242424242"


def test_a_suspended_organizations_month_is_withheld_and_released_when_it_pays(
    client: TestClient,
    db: Database,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org("Late Payer")
    admin = make_key(org, "org:admin")
    base = f"/v1/organizations/{org}"

    def call(method: str, path: str, status: int = 200, **kw: Any) -> Any:
        response = client.request(method, f"{base}{path}", headers=admin, **kw)
        assert response.status_code == status, response.text
        return response.json()

    def add_card(number: str) -> str:
        card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
        return str(
            call("POST", "/payment-methods", 201, json={"card": card, "default": True})["id"]
        )

    with clock.frozen_at(utc(2026, 1, 1)):
        call("PUT", "/subscription", json={"plan": "standard"})
        add_card(DECLINED)
    for moment in (utc(2026, 2, 1, 0, 1), *(utc(2026, 2, day, 0, 2) for day in (2, 4, 6))):
        with clock.frozen_at(moment):
            tick(db)  # January closed and declined, retried, past due on 6 February
    with clock.frozen_at(utc(2026, 3, 1, 0, 1)):
        tick(db)  # March begins while suspended
        assert call("GET", "")["status"] == "suspended"
        sub = call("GET", "/subscription")
        assert sub["current_period"]["label"] == "2026-03"
        assert sub["current_period_allocations"] == []
        assert sub["allocation_withheld"] == {
            "credits": "1000",
            "fee": {"amount_minor": 4900, "currency": "USD"},
            "withheld_at": "2026-03-01T00:00:00Z",
            "reason": "suspended_for_nonpayment",
        }
        assert call("GET", "/balance")["lots"] == []  # February's credits expired, none for March

    with clock.frozen_at(utc(2026, 3, 5)):
        before = everything(db)
        upgrade = client.put(f"{base}/subscription", json={"plan": "professional"}, headers=admin)
        assert_problem(upgrade, 409, "organization_suspended")
        assert everything(db) == before
        assert call("PUT", "/subscription", json={"plan": "standard"})["plan"] == "standard"

    with clock.frozen_at(utc(2026, 3, 11)):
        good = add_card(VISA)
        [january] = [
            i for i in call("GET", "/invoices")["data"] if i["period"]["label"] == "2026-01"
        ]
        paid = client.post(
            f"/v1/invoices/{january['id']}/pay", json={"payment_method": good}, headers=admin
        )
        assert (paid.status_code, paid.json()["status"]) == (200, "paid")
        assert call("GET", "")["status"] == "active"
        sub = call("GET", "/subscription")
        assert sub["allocation_withheld"] is None
        [march] = sub["current_period_allocations"]
        assert (march["credits"], march["fee"]["amount_minor"], march["prorated"]) == (
            "677.419355",
            3319,
            True,
        )
        assert call("GET", "/balance")["available"] == "677.419355"
    assert_clean(db)
