"""A month at Acme AI, told the way the product document tells it.

"Credits are the unit of measurement for AI Engine usage within the platform. They are tracked per
organization." An operator sets Acme AI up with projects and members, allocates its monthly plan
credits and a welcome promotion; the AI Engine consumes them; Acme runs out and is paused; the next
credits pay what was overdrawn first and Acme resumes. "Credits are specific to each organization and
cannot be transferred": Globex never sees any of it. At the end the ledger proves itself.

The AI Engine's consumption is recorded with the ledger service until the usage endpoint exists.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient

from creditmeter.kit import clock
from creditmeter.kit.credits import parse_credits
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.verify import verify
from tests.conftest import utc

Headers = dict[str, str]
JAN_1 = utc(2026, 1, 1, 9)
FEB_1 = "2026-02-01T00:00:00Z"


class Platform:
    """The platform as its three kinds of user see it, over the v1 API."""

    def __init__(self, client: TestClient, db: Database, operator: Headers) -> None:
        self.client, self.db, self.operator = client, db, operator

    def call(self, method: str, path: str, headers: Headers, **kwargs: Any) -> Any:
        response = self.client.request(
            method, f"/v1/organizations{path}", headers=headers, **kwargs
        )
        assert response.status_code < 300, response.text
        return response.json()

    def balance(self, org: str, headers: Headers) -> dict[str, Any]:
        body: dict[str, Any] = self.call("GET", f"/{org}/balance", headers)
        return body

    def grant(
        self, org: str, credits: str, source: str, reason: str, key: str, **extra: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = self.call(
            "POST",
            f"/{org}/grants",
            {**self.operator, "Idempotency-Key": key},
            json={"credits": credits, "source": source, "reason": reason, **extra},
        )
        return body

    def ai_engine_consumes(self, org: str, credits: str, operation: str, at: datetime) -> None:
        with self.db.write() as session:
            ledger.debit(
                session,
                org,
                "live",
                parse_credits(credits),
                operation,
                f"{operation} on the AI Engine",
                at,
            )


def test_a_month_at_acme_ai(
    client: TestClient, db: Database, operator: Headers, make_key: Callable[..., Headers]
) -> None:
    platform = Platform(client, db, operator)

    # -- January 1st: the operator signs Acme AI up -----------------------------------------------
    with clock.frozen_at(JAN_1):
        acme = platform.call("POST", "", operator, json={"name": "Acme AI", "external_id": "acme"})
        org = acme["id"]
        for project in ("Research", "Production"):
            platform.call("POST", f"/{org}/projects", operator, json={"name": project})
        for email, role in [
            ("ada@acme.ai", "owner"),
            ("grace@acme.ai", "admin"),
            ("linus@acme.ai", "member"),
            ("ken@acme.ai", "viewer"),
        ]:
            platform.call("POST", f"/{org}/members", operator, json={"email": email, "role": role})

        owner_key = platform.call(
            "POST",
            f"/{org}/api-keys",
            operator,
            json={"name": "Ada's admin key", "scopes": ["org:admin"]},
        )["key"]
        owner = {"Authorization": f"Bearer {owner_key}"}
        # Acme's admin issues the keys its own systems use.
        engine = {
            "Authorization": "Bearer "
            + platform.call(
                "POST",
                f"/{org}/api-keys",
                owner,
                json={"name": "AI Engine", "scopes": ["org:ingest"]},
            )["key"]
        }
        dashboard = {
            "Authorization": "Bearer "
            + platform.call(
                "POST",
                f"/{org}/api-keys",
                owner,
                json={"name": "Dashboard", "scopes": ["org:read"]},
            )["key"]
        }

        # "Each organization has its own credit balance that reflects their usage across all
        # projects and team members" — and before any credits arrive, it cannot run anything.
        assert platform.balance(org, dashboard)["paused"] is True
        projects = platform.call("GET", f"/{org}/projects", dashboard)["data"]
        assert sorted(p["name"] for p in projects) == ["Production", "Research"]
        assert len(platform.call("GET", f"/{org}/members", dashboard)["data"]) == 4

        # "Credits are allocated to your organization based on your subscription plan": the
        # Standard plan's 1,000 credits for January, expiring at the end of the billing cycle.
        plan = platform.grant(
            org,
            "1000",
            "plan",
            "Standard plan, January 2026",
            "acme/plan/2026-01",
            expires_at=FEB_1,
        )
        # The operator's job retries after a network blip: still one allocation.
        again = platform.grant(
            org,
            "1000",
            "plan",
            "Standard plan, January 2026",
            "acme/plan/2026-01",
            expires_at=FEB_1,
        )
        assert again == plan
        # A welcome promotion that runs out mid-month.
        promo = platform.grant(
            org,
            "100",
            "promo",
            "welcome offer",
            "acme/promo/welcome",
            expires_at="2026-01-15T00:00:00Z",
        )

        view = platform.balance(org, dashboard)
        assert (view["available"], view["paused"]) == ("1100", False)
        # The promotion expires first, so it pays first.
        assert [lot["id"] for lot in view["lots"]] == [promo["id"], plan["id"]]

    # -- January: "Credits are consumed whenever you use the AI Engine" ----------------------------
    platform.ai_engine_consumes(org, "250", "training", utc(2026, 1, 5, 14))
    platform.ai_engine_consumes(org, "0.75", "inference", utc(2026, 1, 6, 10))
    platform.ai_engine_consumes(org, "12.125", "data_processing", utc(2026, 1, 9, 3))

    with clock.frozen_at(utc(2026, 1, 10)):
        view = platform.balance(org, engine)  # the AI Engine may read the balance it draws on
        assert view["available"] == "837.125"  # 1100 - 250 - 0.75 - 12.125, to the micro-credit
        assert [(lot["source"], lot["remaining"]) for lot in view["lots"]] == [("plan", "837.125")]
        lots = {lot["id"]: lot for lot in platform.call("GET", f"/{org}/grants", dashboard)["data"]}
        assert lots[promo["id"]]["remaining"] == "0"  # the whole promotion was used first

    # -- January 20th: a long training run outlasts the credits ------------------------------------
    # Usage that was already performed is always recorded; what the lots cannot pay is arrears.
    platform.ai_engine_consumes(org, "900", "training", utc(2026, 1, 20, 8))
    with clock.frozen_at(utc(2026, 1, 20, 9)):
        view = platform.balance(org, dashboard)
        # "When your organization depletes its credit balance, new AI Engine operations will be
        # paused until you purchase additional credits."
        assert (view["available"], view["arrears"], view["paused"]) == ("-62.875", "62.875", True)
        assert view["lots"] == []

    # -- January 21st: Acme buys a Standard package ------------------------------------------------
    with clock.frozen_at(utc(2026, 1, 21, 11)):
        package = platform.grant(
            org,
            "1000",
            "purchase",
            "Standard package, invoice 2026-0007",
            "acme/purchase/2026-0007",
            cost_basis="0.01",
        )
        view = platform.balance(org, dashboard)
        # The new credits pay the overdraft first, and Acme runs again by itself.
        assert (view["available"], view["arrears"], view["paused"]) == ("937.125", "0", False)
        assert [(lot["id"], lot["remaining"]) for lot in view["lots"]] == [
            (package["id"], "937.125")
        ]
        journal = platform.call("GET", f"/{org}/ledger", dashboard)["data"]
        assert [t["kind"] for t in journal[:2]] == ["arrears_settlement", "grant"]

    # -- an organization can never see another's credits -----------------------------------------
    with clock.frozen_at(utc(2026, 1, 22)):
        globex = platform.call("POST", "", operator, json={"name": "Globex"})["id"]
        globex_admin = make_key(globex, "org:admin")
        for path in ("", "/balance", "/grants", "/ledger", "/members", "/projects", "/api-keys"):
            response = client.get(f"/v1/organizations/{org}{path}", headers=globex_admin)
            assert (response.status_code, response.json()["code"]) == (404, "not_found"), path
        response = client.post(
            f"/v1/organizations/{org}/grants",
            headers=globex_admin,
            json={"credits": "1", "source": "adjustment", "reason": "take some"},
        )
        assert response.status_code == 404
        assert platform.balance(globex, globex_admin)["available"] == "0"
        assert platform.call("GET", f"/{globex}/ledger", globex_admin)["data"] == []
        assert platform.balance(org, dashboard)["available"] == "937.125"

    # -- the ledger proves itself ------------------------------------------------------------------
    journal = platform.call("GET", f"/{org}/ledger", operator, params={"limit": 500})["data"]
    assert [t["kind"] for t in reversed(journal)] == [
        "grant",
        "grant",  # plan, promotion
        "debit",
        "debit",
        "debit",
        "debit",  # the AI Engine's work
        "grant",
        "arrears_settlement",  # the package, paying the overdraft first
    ]
    for txn in journal:
        assert sum(Decimal(p["credits"]) for p in txn["postings"]) == 0
    consumed = sum(
        Decimal(p["credits"])
        for t in journal
        for p in t["postings"]
        if p["account"].startswith("consumption:")
    )
    assert consumed == Decimal("1162.875")
    with db.read() as session:
        assert verify(session) == []
