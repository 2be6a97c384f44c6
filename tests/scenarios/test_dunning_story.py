"""A declined card goes through dunning to suspension, and back to active after payment.

"Invoices are generated on the 1st of the following month" and charged to the stored card. Orbital
Labs subscribes to Professional in mid-January with a card that is always declined
(4000000000000002). At midnight on February 1 the worker closes January: the invoice is open, the
charge failed, the next attempt is scheduled. The worker tries again on February 2, 4 and 6 (1, 3
and 5 days after the first failure); the last failure makes the invoice past due and suspends the
organization: the gate answers ``organization_suspended`` and a hold is refused. On February 8 an
admin adds a good card (4242424242424242) and pays the invoice: it is paid, the organization is
active again by itself, and every attempt is in the billing history with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.billing.payments.sandbox_models import SandboxCharge
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.worker.runner import tick
from tests.api.test_bad_input import assert_problem
from tests.conftest import utc
from tests.metering import Headers, assert_clean

DECLINED = "4000000000000002"
VISA = "4242424242424242"


class Org:
    def __init__(self, client: TestClient, org: str, admin: Headers, engine: Headers) -> None:
        self.client, self.id, self.admin, self.engine = client, org, admin, engine

    def call(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        response = self.client.request(method, path, headers=self.admin, **kw)
        assert response.status_code == status, response.text
        return response.json()

    def add_card(self, number: str, *, default: bool = False) -> str:
        card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
        body = {"card": card, "default": default}
        return str(
            self.call("POST", f"/v1/organizations/{self.id}/payment-methods", 201, json=body)["id"]
        )

    def authorize(self) -> Any:
        gate = {"organization": self.id, "operation": "inference", "credits": "1"}
        return self.client.post("/v1/authorize", json=gate, headers=self.engine).json()

    def invoice(self) -> Any:
        [summary] = self.call("GET", f"/v1/organizations/{self.id}/invoices")["data"]
        return self.call("GET", f"/v1/invoices/{summary['id']}")

    def payments(self) -> list[tuple[str, str | None]]:
        rows = self.call("GET", f"/v1/organizations/{self.id}/payments")["data"]
        return [(p["status"], p["failure_code"]) for p in reversed(rows)]  # oldest first

    def status(self) -> str:
        return str(self.call("GET", f"/v1/organizations/{self.id}")["status"])


def processor_charges(db: Database) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(SandboxCharge)) or 0)


def test_a_declined_card_goes_through_dunning_to_suspension_and_back_after_payment(
    client: TestClient,
    db: Database,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org_id = make_org("Orbital Labs")
    orbital = Org(client, org_id, make_key(org_id, "org:admin"), make_key(org_id, "org:ingest"))
    with clock.frozen_at(utc(2026, 1, 16)):
        orbital.call(
            "PUT", f"/v1/organizations/{org_id}/subscription", json={"plan": "professional"}
        )
        orbital.add_card(DECLINED)

    with clock.frozen_at(utc(2026, 2, 1, 0, 0, 30)):
        tick(db)  # closes January and charges its invoice once: declined
        invoice = orbital.invoice()
        assert (invoice["status"], invoice["payment_attempts"]) == ("open", 1)
        assert invoice["next_payment_attempt_at"] == "2026-02-02T00:00:30Z"
        assert orbital.payments() == [("failed", "card_declined")]
        assert orbital.authorize()["allowed"]  # open is not yet past due
    with clock.frozen_at(utc(2026, 2, 1, 18)):
        tick(db)  # nothing is due before February 2
        assert processor_charges(db) == 1

    retries = [
        (utc(2026, 2, 2, 0, 1), "open", "2026-02-04T00:00:30Z"),
        (utc(2026, 2, 4, 0, 1), "open", "2026-02-06T00:00:30Z"),
        (utc(2026, 2, 6, 0, 1), "past_due", None),
    ]
    for n, (moment, status, next_at) in enumerate(retries, start=2):
        with clock.frozen_at(moment):
            tick(db)
            invoice = orbital.invoice()
            assert (invoice["status"], invoice["payment_attempts"]) == (status, n)
            assert invoice["next_payment_attempt_at"] == next_at
    assert orbital.payments() == [("failed", "card_declined")] * 4

    with clock.frozen_at(utc(2026, 2, 7, 9)):
        tick(db)  # a past-due invoice is not retried by the worker
        assert processor_charges(db) == 4
        assert orbital.status() == "suspended"
        refused = orbital.authorize()
        assert (refused["allowed"], refused["reason"]) == (False, "organization_suspended")
        hold = client.post(
            "/v1/holds",
            json={"organization": org_id, "operation": "inference", "credits": "1"},
            headers=orbital.engine,
        )
        assert_problem(hold, 402, "organization_suspended")
    assert_clean(db)

    with clock.frozen_at(utc(2026, 2, 8, 10)):
        orbital.add_card(VISA, default=True)
        paid = orbital.call("POST", f"/v1/invoices/{invoice['id']}/pay", json={})
        assert (paid["status"], paid["paid_at"]) == ("paid", "2026-02-08T10:00:00Z")
        assert paid["amount_due"]["amount_minor"] == 0
        assert (paid["payment_attempts"], paid["next_payment_attempt_at"]) == (5, None)
        assert orbital.status() == "active"
        assert orbital.authorize()["allowed"]
        assert orbital.payments() == [("failed", "card_declined")] * 4 + [("succeeded", None)]
        assert_problem(
            client.post(f"/v1/invoices/{invoice['id']}/pay", json={}, headers=orbital.admin),
            409,
            "invoice_paid",
        )
    with clock.frozen_at(utc(2026, 2, 9)):
        tick(db)
    assert processor_charges(db) == 5
    assert_clean(db)
