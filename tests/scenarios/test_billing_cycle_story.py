"""January to May at two customers of the platform, through the API and the background worker.

"Credits are billed on a monthly cycle. Usage is calculated from the 1st to the last day of each
month. Invoices are generated on the 1st of the following month." "Standard plans: credits expire at
the end of the billing cycle. Professional plans: credits roll over for up to 3 months."

Northwind subscribes to Standard in mid-January and uses part of its credits; at midnight on February
1 the worker closes January: the unused credits are gone, February's 1,000 arrive, and the January
invoice (prorated) is there to read and download. Contoso is on Professional: its January credits pay
for February's work before the newer ones and last through April. Then the worker is down from March
to the middle of May: when it comes back it closes March and April, one after the other, exactly as
it would have on time. Both pay their invoices by card. The ledger proves itself at every step.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pypdf
from fastapi.testclient import TestClient

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.worker.runner import tick
from tests.conftest import utc
from tests.metering import Headers, assert_clean, event


class Customer:
    def __init__(self, client: TestClient, operator: Headers, org: str, ingest: Headers) -> None:
        self.client, self.operator, self.org, self.ingest = client, operator, org, ingest
        self.sent = 0

    def call(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        response = self.client.request(method, path, headers=self.operator, **kw)
        assert response.status_code == status, response.text
        return response.json() if "json" in response.headers["content-type"] else response

    def subscribe(self, plan: str) -> Any:
        return self.call("PUT", f"/v1/organizations/{self.org}/subscription", json={"plan": plan})

    def add_card(self) -> None:
        card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
        self.call("POST", f"/v1/organizations/{self.org}/payment-methods", 201, json={"card": card})

    def train(self, hours: int) -> None:
        """``hours`` H100 hours outside the off-peak window: 6.76 credits each."""
        for _ in range(hours):
            self.sent += 1
            body = event(f"run-{self.sent}", self.org, "training")
            response = self.client.post("/v1/usage", json=body, headers=self.ingest)
            assert response.status_code == 201, response.text

    def available(self) -> str:
        body = self.call("GET", f"/v1/organizations/{self.org}/balance")
        return str(body["available"])

    def invoices(self) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/v1/organizations/{self.org}/invoices")["data"])


def test_five_months_of_billing(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    northwind_id, contoso_id = make_org("Northwind Traders"), make_org("Contoso AI")
    northwind = Customer(client, operator, northwind_id, make_key(northwind_id, "org:ingest"))
    contoso = Customer(client, operator, contoso_id, make_key(contoso_id, "org:ingest"))

    with clock.frozen_at(utc(2026, 1, 16)):
        sub = northwind.subscribe("standard")
        assert sub["current_period_allocations"][0]["credits"] == "516.129032"
        contoso.subscribe("professional")
        for customer in (northwind, contoso):  # they pay their invoices by card (unpaid ones
            customer.add_card()  # would suspend them, and a suspended month allocates nothing)
    with clock.frozen_at(utc(2026, 1, 20, 12)):
        northwind.train(10)  # 67.6 credits
        contoso.train(100)  # 676 credits
        assert northwind.available() == "448.529032"

    with clock.frozen_at(utc(2026, 2, 1, 0, 0, 30)):
        tick(db)  # the worker's first tick after midnight closes January
        assert northwind.available() == "1000"
        assert (
            contoso.available() == "6904.645161"
        )  # January's 2,580.645161 - 676 + February's 5,000
        [invoice] = northwind.invoices()
        assert (invoice["number"], invoice["total"]["amount_minor"]) == ("INV-2026-000001", 2529)
        full = northwind.call("GET", f"/v1/invoices/{invoice['id']}")
        assert full["usage_summary"]["by_operation"][0]["credits"] == "67.6"
        pdf = northwind.call("GET", invoice["pdf_url"])
        text = pypdf.PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
        assert "Northwind Traders" in text
        assert "USD 25.29" in text
    assert_clean(db)

    with clock.frozen_at(utc(2026, 2, 10, 12)):
        contoso.train(50)  # 338 credits, paid by the January lot (it expires first)
        lots = contoso.call("GET", f"/v1/organizations/{contoso_id}/balance")["lots"]
        assert [(lot["remaining"], lot["expires_at"]) for lot in lots] == [
            ("1566.645161", "2026-05-01T00:00:00Z"),
            ("5000", "2026-06-01T00:00:00Z"),
        ]
    with clock.frozen_at(utc(2026, 3, 1, 0, 1)):
        tick(db)
    # The worker is down from March 1 until May 15: March and April are closed when it is back.
    with clock.frozen_at(utc(2026, 5, 15, 9)):
        tick(db)
        assert [i["period"]["label"] for i in contoso.invoices()] == [
            "2026-01",
            "2026-02",
            "2026-03",
            "2026-04",
        ]
        assert [i["total"]["amount_minor"] for i in contoso.invoices()] == [
            10271,
            19900,
            19900,
            19900,
        ]
        # January's unused 1,566.645161 credits expired on May 1; February's to May's are left.
        assert contoso.available() == "20000"
        assert northwind.available() == "1000"
    numbers = sorted(i["number"] for c in (northwind, contoso) for i in c.invoices())
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 9)]
    assert_clean(db)
