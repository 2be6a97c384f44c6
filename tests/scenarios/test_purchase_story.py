"""Credits bought on January 30 last twelve months, through the API and the background worker.

"Additional credits can be purchased at any time." Fabrikam is on Standard: its plan credits expire
at the end of each month, but the 5,000 credits it buys on 30 January 2026 at 10:15 with the test
card stay through twelve monthly closes, pay for work only after the month's plan credits are gone
(soonest expiry first), and expire on 30 January 2027 at 10:15, to the minute; a declined card buys
nothing. The ledger proves itself at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from fastapi.testclient import TestClient

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.worker.runner import tick
from tests.conftest import utc
from tests.metering import Headers, assert_clean, event

BOUGHT = utc(2026, 1, 30, 10, 15)
EXPIRES = utc(2027, 1, 30, 10, 15)


def test_credits_bought_on_january_30_last_twelve_months(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org("Fabrikam")
    ingest = make_key(org, "org:ingest")
    base = f"/v1/organizations/{org}"

    def available() -> str:
        return str(client.get(f"{base}/balance", headers=operator).json()["available"])

    with clock.frozen_at(utc(2026, 1, 1)):
        assert client.put(f"{base}/subscription", json={"plan": "standard"}, headers=operator)
        cards = {}
        for number in ("4000000000000002", "4242424242424242"):
            card = {"number": number, "exp_month": 12, "exp_year": 2031}
            added = client.post(
                f"{base}/payment-methods", json={"card": card, "default": True}, headers=operator
            )
            assert added.status_code == 201, added.text
            cards[number] = added.json()["id"]
    declined_card, visa = cards["4000000000000002"], cards["4242424242424242"]
    with clock.frozen_at(BOUGHT):
        declined = client.post(
            f"{base}/purchases",
            json={"package": "professional", "payment_method": declined_card},
            headers={**operator, "Idempotency-Key": "declined"},
        )
        assert (declined.status_code, declined.json()["code"]) == (402, "card_declined")
        assert available() == "1000"
        bought = client.post(
            f"{base}/purchases",
            json={"package": "professional", "payment_method": visa},
            headers={**operator, "Idempotency-Key": "jan-30"},
        )
        assert bought.status_code == 201, bought.text
        assert bought.json()["expires_at"] == "2027-01-30T10:15:00Z"
        assert bought.json()["amount"] == {"amount_minor": 30000, "currency": "USD"}
        assert available() == "6000"

    # Twelve month boundaries: each close expires the month's plan credits and allocates the next;
    # the purchased credits stay. Work in June beyond the month's plan credits is paid by the plan
    # lot first (it expires on July 1, sooner), then by the purchased credits.
    expected = "6000"
    for month in range(2, 14):
        boundary = utc(2026 + (month - 1) // 12, (month - 1) % 12 + 1, 1)
        with clock.frozen_at(boundary + timedelta(seconds=30)):
            tick(db)
            assert available() == expected, boundary
        if month == 6:
            with clock.frozen_at(utc(2026, 6, 20, 12)):
                for n in range(200):  # 200 H100 hours at 6.76 credits: 1,352 credits
                    body = event(f"run-{n}", org, "training")
                    sent = client.post("/v1/usage", json=body, headers=ingest)
                    assert sent.status_code == 201, sent.text
                lots = client.get(f"{base}/balance", headers=operator).json()["lots"]
                # The June plan lot is used up (and no longer listed); 4,648 bought credits left.
                assert [(lot["source"], lot["remaining"]) for lot in lots] == [("purchase", "4648")]
            expected = "5648"
    assert_clean(db)

    with clock.frozen_at(EXPIRES - timedelta(microseconds=1)):
        assert available() == "5648"
    with clock.frozen_at(EXPIRES):  # expired to the minute; the worker books the rest as breakage
        assert available() == "1000"
        tick(db)
        lots = client.get(f"{base}/grants", headers=operator).json()["data"]
        purchase = next(lot for lot in lots if lot["source"] == "purchase")
        assert purchase["remaining"] == "0"
    assert_clean(db)
