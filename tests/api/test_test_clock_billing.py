"""Every billing action of a clocked organization happens at its clock's time, on SQLite and
PostgreSQL, with a clock behind real time and one ahead of it: paying an invoice by hand (paid_at on
the invoice, its PDF and the billing history), a declined payment by hand (the dunning schedule
decides when an invoice is past due, never the decline itself), voiding, refunds, payment methods,
operator grants and reversals, usage reversals and their credit notes."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pypdf
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.billing.payments.models import Payment, PaymentMethod, Refund
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger.models import JournalTransaction, Lot
from creditmeter.ledger.verify import verify
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Environment, Scope
from tests.api.test_bad_input import assert_problem
from tests.api.test_test_clocks import add_card, new_clock
from tests.conftest import utc
from tests.metering import event

Headers = dict[str, str]
DECLINED = "4000000000000002"


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


class Rehearsal:
    """A test organization on a clock that starts on 1 January of ``year``, subscribed to Standard
    in the test environment with a card that declines."""

    def __init__(
        self, client: TestClient, operator: Headers, make_org: Callable[..., str], year: int
    ) -> None:
        self.client, self.operator, self.year = client, operator, year
        self.org = make_org(f"Rehearsal {year}")
        self.clock = new_clock(client, operator, iso(utc(year, 1, 1)))
        attached = client.post(
            self.url("test-clock"), json={"test_clock": self.clock}, headers=operator
        )
        assert attached.status_code == 200, attached.text
        subscribed = client.put(
            self.url("subscription?environment=test"), json={"plan": "standard"}, headers=operator
        )
        assert subscribed.status_code == 200, subscribed.text
        self.declining = add_card(client, operator, self.org, DECLINED)

    def url(self, tail: str) -> str:
        return f"/v1/organizations/{self.org}/{tail}"

    def at(self, month: int, day: int, hour: int = 0) -> datetime:
        return utc(self.year, month, day, hour)

    def advance(self, to: datetime) -> None:
        response = self.client.post(
            f"/v1/test-clocks/{self.clock}/advance", json={"to": iso(to)}, headers=self.operator
        )
        assert response.status_code == 200, response.text
        assert all(c["error"] is None for c in response.json()["closes"]), response.text

    def invoice(self, month: int) -> dict[str, Any]:
        listed = self.client.get(
            self.url("invoices?environment=test"), headers=self.operator
        ).json()["data"]
        [found] = [i for i in listed if i["period"]["label"] == f"{self.year}-{month:02d}"]
        return dict(self.client.get(f"/v1/invoices/{found['id']}", headers=self.operator).json())

    def pay(self, invoice_id: str, **body: Any) -> Any:
        return self.client.post(f"/v1/invoices/{invoice_id}/pay", json=body, headers=self.operator)

    def status(self) -> str:
        return str(self.client.get(self.url(""), headers=self.operator).json()["status"])


@pytest.fixture(params=[2026, 2027], ids=["clock behind real time", "clock ahead of real time"])
def rehearsal(
    request: pytest.FixtureRequest,
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
) -> Rehearsal:
    year = request.param
    assert (utc(year, 3, 1) < clock.now()) == (year == 2026), "the clock side of real time"
    assert (utc(year, 1, 1) > clock.now()) == (year == 2027), "the clock side of real time"
    return Rehearsal(client, operator, make_org, year)


def attempts_of(db: Database, invoice_id: str) -> list[tuple[datetime, str]]:
    with db.read() as s:
        rows = s.execute(
            select(Payment.created_at, Payment.status)
            .where(Payment.reference_id == invoice_id, Payment.kind == "charge")
            .order_by(Payment.created_at, Payment.id)
        ).all()
    return [(at, status) for at, status in rows]


def test_paying_by_hand_happens_at_the_clocks_time_and_a_decline_waits_for_the_schedule(
    client: TestClient, db: Database, rehearsal: Rehearsal
) -> None:
    r = rehearsal
    r.advance(r.at(2, 1, 12))  # January is closed; its charge was declined at the boundary
    january = r.invoice(1)
    assert (january["status"], january["issued_at"]) == ("open", iso(r.at(2, 1)))

    # A declined payment by hand is one more attempt, at the clock's time; the invoice stays open
    # and the organization active: past due comes only at the end of the dunning schedule.
    declined = r.pay(january["id"])
    assert_problem(declined, 402, "card_declined")
    assert r.invoice(1)["status"] == "open"
    assert r.status() == "active"
    assert attempts_of(db, january["id"]) == [(r.at(2, 1), "failed"), (r.at(2, 1, 12), "failed")]
    # ... and it never moves the schedule: the retry of 2 February still runs.
    assert r.invoice(1)["next_payment_attempt_at"] == iso(r.at(2, 2))
    r.advance(r.at(2, 2, 1))
    assert attempts_of(db, january["id"])[-1] == (r.at(2, 2), "failed")
    assert r.status() == "active"

    # Paid by hand with a good card: paid_at is the clock's time, after the invoice was issued.
    good = add_card(client, r.operator, r.org)
    paid = r.pay(january["id"], payment_method=good["id"])
    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["paid_at"]) == ("paid", iso(r.at(2, 2, 1)))
    assert paid.json()["paid_at"] >= paid.json()["issued_at"]
    assert attempts_of(db, january["id"])[-1] == (r.at(2, 2, 1), "succeeded")
    pdf = client.get(january["pdf_url"], headers=r.operator)
    text = "".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Paid on" in text
    assert f"2 February {r.year}" in text
    with db.read() as s:
        assert verify(s) == []


def test_the_dunning_schedule_not_a_decline_by_hand_makes_an_invoice_past_due(
    client: TestClient, db: Database, rehearsal: Rehearsal
) -> None:
    """The documented rule, on the clock: a failed attempt at or after the last retry's time (first
    failure + 5 days) makes the invoice past due and suspends the organization; a decline by hand
    before it never does."""
    r = rehearsal
    r.advance(r.at(2, 5, 23))  # the close's attempt and the retries of 2 and 4 February failed
    january = r.invoice(1)
    assert_problem(r.pay(january["id"]), 402, "card_declined")
    assert (r.invoice(1)["status"], r.status()) == ("open", "active")  # 5 Feb 23:00: not yet
    assert r.invoice(1)["next_payment_attempt_at"] == iso(r.at(2, 6))

    r.advance(r.at(2, 6))  # the last retry, at its time, fails: past due, suspended
    assert attempts_of(db, january["id"])[-1] == (r.at(2, 6), "failed")
    assert (r.invoice(1)["status"], r.status()) == ("past_due", "suspended")

    r.advance(r.at(2, 9))
    good = add_card(client, r.operator, r.org)
    paid = r.pay(january["id"], payment_method=good["id"])
    assert (paid.json()["status"], paid.json()["paid_at"]) == ("paid", iso(r.at(2, 9)))
    assert r.status() == "active"


def test_voiding_refunds_and_payment_methods_are_dated_by_the_clock(
    client: TestClient, db: Database, rehearsal: Rehearsal
) -> None:
    r = rehearsal
    good = add_card(client, r.operator, r.org)
    r.advance(r.at(2, 1, 6))
    january = r.invoice(1)
    paid = r.pay(january["id"], payment_method=good["id"])
    assert paid.status_code == 200, paid.text
    made = client.patch(
        r.url(f"payment-methods/{r.declining['id']}?environment=test"),
        json={"default": True},
        headers=r.operator,
    )
    assert made.status_code == 200, made.text

    # February's invoice is declined at its close; the operator voids it on 3 March (clock time).
    r.advance(r.at(3, 3))
    february = r.invoice(2)
    voided = client.post(
        f"/v1/invoices/{february['id']}/void", json={"reason": "goodwill"}, headers=r.operator
    )
    assert voided.status_code == 200, voided.text
    assert voided.json()["voided_at"] == iso(r.at(3, 3))

    # January's payment is refunded at the clock's time, in full.
    [charge] = [
        p
        for p in client.get(r.url("payments?environment=test"), headers=r.operator).json()["data"]
        if p["status"] == "succeeded" and p["kind"] == "charge"
    ]
    refunded = client.post(
        f"/v1/payments/{charge['id']}/refunds",
        json={"reason": "duplicate"},
        headers={**r.operator, "Idempotency-Key": "refund-1"},
    )
    assert refunded.status_code == 201, refunded.text
    assert refunded.json()["created_at"] == iso(r.at(3, 3))
    assert refunded.json()["completed_at"] == iso(r.at(3, 3))

    # A card added and one detached on the clock.
    r.advance(r.at(3, 4))
    another = add_card(client, r.operator, r.org)
    assert another["created_at"] == iso(r.at(3, 4))
    detached = client.delete(
        r.url(f"payment-methods/{good['id']}?environment=test"), headers=r.operator
    )
    assert detached.json()["detached_at"] == iso(r.at(3, 4))
    with db.read() as s:
        refund = s.scalars(select(Refund)).one()
        history = s.scalars(select(Payment.created_at).where(Payment.kind == "refund")).all()
        method = s.get(PaymentMethod, good["id"])
        assert method is not None
        assert verify(s) == []
    assert (refund.created_at, list(history)) == (r.at(3, 3), [r.at(3, 3)])


def test_operator_grants_and_reversals_are_dated_by_the_clock(
    client: TestClient, db: Database, rehearsal: Rehearsal
) -> None:
    """A grant on the clock is effective at once on the clock (a clock behind real time would not
    see a grant made at real time), and its reversal is dated by the clock too."""
    r = rehearsal
    r.advance(r.at(1, 20))
    granted = client.post(
        r.url("grants?environment=test"),
        json={"credits": "50", "source": "promo", "reason": "rehearsal credits"},
        headers=r.operator,
    )
    assert granted.status_code == 201, granted.text
    assert granted.json()["effective_at"] == iso(r.at(1, 20))
    balance = client.get(r.url("balance?environment=test"), headers=r.operator).json()
    assert granted.json()["id"] in {lot["id"] for lot in balance["lots"]}
    with db.read() as s:
        txn = s.scalars(
            select(JournalTransaction.id)
            .join(Lot, Lot.organization_id == JournalTransaction.organization_id)
            .where(Lot.id == granted.json()["id"], JournalTransaction.kind == "grant")
            .order_by(JournalTransaction.id.desc())
        ).first()
    r.advance(r.at(1, 21))
    reversed_ = client.post(
        r.url(f"ledger/txn_{txn}/reverse"), json={"reason": "oops"}, headers=r.operator
    )
    assert reversed_.status_code == 201, reversed_.text
    assert reversed_.json()["created_at"] == iso(r.at(1, 21))


def test_a_usage_reversal_and_its_credit_note_are_dated_by_the_clock(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    rehearsal: Rehearsal,
) -> None:
    """A January event reversed on 3 February (clock time), after January was invoiced: the
    reversal and the credit note against January's invoice are dated 3 February on the clock."""
    r = rehearsal
    r.advance(r.at(1, 10))
    ingest = make_key(r.org, "org:ingest", environment="test")
    used = client.post("/v1/usage", json=event("jan-run", r.org, "training"), headers=ingest)
    assert used.status_code == 201, used.text
    r.advance(r.at(2, 3))
    with db.write() as s:  # usage is reversed in the operator key's environment: a test one
        _, secret = orgs.create_api_key(
            s, None, "test operator", [Scope.OPERATOR], Environment.TEST, clock.now()
        )
    reversed_ = client.post(
        r.url("usage/jan-run/reverse"),
        json={"reason": "duplicate run"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert reversed_.status_code == 200, reversed_.text
    assert reversed_.json()["credit_note"]
    [note] = client.get(r.url("credit-notes?environment=test"), headers=r.operator).json()["data"]
    assert (note["number"], note["created_at"]) == (
        reversed_.json()["credit_note"],
        iso(r.at(2, 3)),
    )
    txn = int(reversed_.json()["transaction_id"].removeprefix("txn_"))
    with db.read() as s:
        reversal = s.get(JournalTransaction, txn)
        assert reversal is not None
        assert reversal.created_at == r.at(2, 3)
        assert verify(s) == []
