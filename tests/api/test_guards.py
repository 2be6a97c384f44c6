"""Two guards at the edges: bodies too large are refused before they are read, and journal
transactions that belong to other records (usage events, holds) are corrected only through them."""

from __future__ import annotations

from fastapi.testclient import TestClient

from creditmeter.kit.db import Database
from creditmeter.ledger.verify import verify
from tests.metering import event


def test_a_body_over_the_limit_is_413_and_changes_nothing(
    client: TestClient, operator: dict[str, str], db: Database
) -> None:
    huge = b'{"events": [' + b" " * (33 * 1024 * 1024) + b"]}"
    response = client.post(
        "/v1/usage/batch", content=huge, headers={**operator, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "payload_too_large"


def test_usage_and_hold_transactions_are_corrected_through_their_records(
    client: TestClient, operator: dict[str, str], make_org, db: Database
) -> None:
    org = make_org()
    grant = {"credits": "100", "source": "plan", "reason": "March allocation"}
    assert client.post(f"/v1/organizations/{org}/grants", json=grant, headers=operator).is_success
    assert client.post("/v1/usage", json=event("e-1", org), headers=operator).status_code == 201
    hold = client.post(
        "/v1/holds",
        json={"organization": org, "operation": "training", "credits": "10"},
        headers=operator,
    )
    assert hold.status_code == 201
    ledger = client.get(f"/v1/organizations/{org}/ledger", headers=operator).json()["data"]
    kinds = {t["kind"]: t["id"] for t in ledger}
    for kind in ("usage", "hold"):
        refused = client.post(
            f"/v1/organizations/{org}/ledger/{kinds[kind]}/reverse",
            json={"reason": "try the back door"},
            headers=operator,
        )
        assert refused.status_code == 409
        assert refused.json()["code"] == "not_reversible"
    after = client.get(f"/v1/organizations/{org}/ledger", headers=operator).json()["data"]
    assert len(after) == len(ledger)
    with db.read() as s:
        assert verify(s) == []
