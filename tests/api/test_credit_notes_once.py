"""Each credit comes back once, in the form it was paid (DESIGN.md §2, "Corrections after a cycle
closed"), on SQLite and PostgreSQL: reversing usage of an Enterprise month that was billed as
overage refunds that part as money on the credit note and takes the credits the ledger's correction
gave back for it off again; what prepaid lots paid comes back as credits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import Balance, JournalTransaction
from tests.api.test_credit_notes import C, assert_clean, available, close, subscribe, use
from tests.conftest import utc

Headers = dict[str, str]
FEB_3 = utc(2026, 2, 3)


def enterprise(db: Database, make_org: Callable[..., str], name: str) -> str:
    """An Enterprise organization with 1,000 credits a month (USD 0.04 per overage credit)."""
    org = make_org(name)
    subscribe(db, org, "enterprise", utc(2026, 1, 1), allocation_micros=1000 * C)
    return org


def reverse(client: TestClient, operator: Headers, org: str, event: str) -> dict[str, Any]:
    """Reverse a usage event on 3 February; returns its credit note."""
    with clock.frozen_at(FEB_3):
        response = client.post(
            f"/v1/organizations/{org}/usage/{event}/reverse",
            json={"reason": "runaway job"},
            headers=operator,
        )
        assert response.status_code == 200, response.text
        notes = client.get(f"/v1/organizations/{org}/credit-notes", headers=operator).json()
    found = [n for n in notes["data"] if n["reference"] == f"usage event {event}"]
    assert len(found) == 1
    answer = response.json()
    assert (answer["credit_note"], answer["credits"], answer["credits_returned"]) == (
        found[0]["number"],
        found[0]["credits"],
        found[0]["credits_returned"],
    )
    return found[0]


def kinds(db: Database, org: str) -> list[str]:
    with db.read() as session:
        return list(
            session.scalars(
                select(JournalTransaction.kind)
                .where(JournalTransaction.organization_id == org)
                .order_by(JournalTransaction.id)
            )
        )


def test_reversed_overage_usage_comes_back_as_money_only(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = enterprise(db, make_org, "Overage Co")
    use(db, org, "jan-big", 1250, utc(2026, 1, 20))  # 1,000 prepaid, 250 overage (USD 10.00)
    close(db, utc(2026, 2, 1))
    before = available(db, org, FEB_3)

    note = reverse(client, operator, org, "jan-big")

    # The 1,000 prepaid credits are back as credits; the 250 overage credits as USD 10.00 only.
    assert available(db, org, FEB_3) == before + 1000 * C
    assert (note["credits"], note["credits_returned"], note["credits_billed"]) == (
        "1250",
        "1000",
        "250",
    )
    assert note["amount"] == {"amount_minor": 1000, "currency": "USD"}
    assert note["clawback_transaction_id"] is not None
    assert kinds(db, org)[-1] == "credit_note"
    # The ledger explains it: the clawback names the note and takes 250 credits off.
    entries = client.get(f"/v1/organizations/{org}/ledger", headers=operator).json()["data"]
    clawback = next(e for e in entries if e["id"] == note["clawback_transaction_id"])
    assert clawback["kind"] == "credit_note"
    assert note["number"] in clawback["description"]
    assert sorted(p["credits"] for p in clawback["postings"]) == ["-250", "250"]
    assert {p["account"] for p in clawback["postings"]} == {"lot", "issuance:adjustment"}
    # A clawback is never undone through the ledger (that would refund the credits twice).
    with clock.frozen_at(FEB_3):
        again = client.post(
            f"/v1/organizations/{org}/ledger/{note['clawback_transaction_id']}/reverse",
            json={"reason": "x"},
            headers=operator,
        )
    assert (again.status_code, again.json()["code"]) == (409, "not_reversible")
    assert_clean(db)


def test_reversed_prepaid_usage_comes_back_as_credits_and_no_money(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = enterprise(db, make_org, "Prepaid Co")
    use(db, org, "jan-small", 300, utc(2026, 1, 20))
    close(db, utc(2026, 2, 1))
    before = available(db, org, FEB_3)

    note = reverse(client, operator, org, "jan-small")

    assert available(db, org, FEB_3) == before + 300 * C
    assert (note["credits_returned"], note["credits_billed"]) == ("300", "0")
    assert note["amount"] == {"amount_minor": 0, "currency": "USD"}
    assert note["clawback_transaction_id"] is None
    assert "credit_note" not in kinds(db, org)
    assert_clean(db)


def test_mixed_usage_each_part_comes_back_once(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = enterprise(db, make_org, "Mixed Co")
    use(db, org, "a", 800, utc(2026, 1, 10))  # prepaid
    use(db, org, "b", 450, utc(2026, 1, 20))  # 200 prepaid, 250 overage
    close(db, utc(2026, 2, 1))
    start = available(db, org, FEB_3)

    b = reverse(client, operator, org, "b")
    assert available(db, org, FEB_3) == start + 200 * C
    assert (b["credits_returned"], b["credits_billed"], b["amount"]["amount_minor"]) == (
        "200",
        "250",
        1000,
    )
    a = reverse(client, operator, org, "a")
    assert available(db, org, FEB_3) == start + 1000 * C
    assert (a["credits_returned"], a["credits_billed"], a["amount"]["amount_minor"]) == (
        "800",
        "0",
        0,
    )
    assert_clean(db)


def test_a_reversal_that_pays_down_current_arrears_restores_them_for_the_billed_part(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = enterprise(db, make_org, "Deep Co")
    use(db, org, "jan-big", 1250, utc(2026, 1, 20))  # 250 overage
    close(db, utc(2026, 2, 1))
    use(db, org, "feb-big", 1100, utc(2026, 2, 2))  # 100 credits of February arrears
    with db.read() as session:
        arrears_before = session.scalar(
            select(Balance.arrears_micros).where(
                Balance.organization_id == org, Balance.environment == "live"
            )
        )
    assert arrears_before == 100 * C
    before = available(db, org, FEB_3)

    note = reverse(client, operator, org, "jan-big")

    # The 1,000 prepaid credits come back (and pay the 100 of arrears); the 250 billed do not.
    assert available(db, org, FEB_3) == before + 1000 * C
    assert note["amount"]["amount_minor"] == 1000
    assert_clean(db)


def test_an_operator_reversal_of_a_debit_billed_as_overage_is_refunded_once(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = enterprise(db, make_org, "Debited Co")
    with db.write() as session:
        txn = ledger.debit(
            session, org, "live", 1250 * C, "inference", "manual", utc(2026, 1, 25)
        ).transaction_id
    close(db, utc(2026, 2, 1))
    before = available(db, org, FEB_3)
    with clock.frozen_at(FEB_3):
        response = client.post(
            f"/v1/organizations/{org}/ledger/txn_{txn}/reverse",
            json={"reason": "charged by mistake"},
            headers=operator,
        )
        assert response.status_code == 201, response.text
        [note] = client.get(f"/v1/organizations/{org}/credit-notes", headers=operator).json()[
            "data"
        ]
    assert available(db, org, FEB_3) == before + 1000 * C
    assert (note["credits_returned"], note["credits_billed"]) == ("1000", "250")
    assert note["amount"]["amount_minor"] == 1000
    assert_clean(db)
