"""Payment methods, purchases and the billing history over HTTP with the sandbox processor: every test
card, idempotent retries, declines that grant nothing, a paused organization that resumes at once,
card numbers that are never stored or logged, and bad input that is a 422 changing nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.billing.payments.models import Purchase
from creditmeter.billing.payments.provider import ChargeResult, ProviderUnavailable
from creditmeter.billing.payments.sandbox import SandboxProvider
from creditmeter.billing.payments.sandbox_models import SandboxCharge
from creditmeter.kit import clock
from creditmeter.kit.credits import parse_credits
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import Lot
from creditmeter.ledger.verify import verify
from tests.api.test_bad_input import assert_problem, everything, field_errors
from tests.conftest import utc

Headers = dict[str, str]
JAN_16 = utc(2026, 1, 16, 10, 15)
VISA = "4242424242424242"
DECLINED = "4000000000000002"
INSUFFICIENT = "4000000000009995"
CHARGE_FAILS = "4000000000000341"
AUTH_REQUIRED = "4000002760003184"


@pytest.fixture(autouse=True)
def january() -> Iterator[None]:
    with clock.frozen_at(JAN_16):
        yield


def url(org: str, tail: str) -> str:
    return f"/v1/organizations/{org}/{tail}"


@pytest.fixture
def org(client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]) -> str:
    """An organization on the Standard plan (USD 0.06 a purchased credit)."""
    org_id = make_org()
    admin = make_key(org_id, "org:admin")
    assert client.put(
        url(org_id, "subscription"), json={"plan": "standard"}, headers=admin
    ).is_success
    return org_id


@pytest.fixture
def admin(org: str, make_key: Callable[..., Headers]) -> Headers:
    return make_key(org, "org:admin")


def add_card(
    client: TestClient, org: str, headers: Headers, number: str = VISA, **extra: Any
) -> Any:
    card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    return client.post(url(org, "payment-methods"), json={"card": card, **extra}, headers=headers)


def buy(client: TestClient, org: str, headers: Headers, key: str, **body: Any) -> Any:
    return client.post(
        url(org, "purchases"),
        json=body or {"package": "standard"},
        headers={**headers, "Idempotency-Key": key},
    )


def available(client: TestClient, org: str, headers: Headers) -> str:
    return str(client.get(url(org, "balance"), headers=headers).json()["available"])


def sandbox_charges(db: Database) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(SandboxCharge)) or 0)


def purchase_lots(db: Database, org: str) -> list[Lot]:
    with db.read() as s:
        return list(
            s.scalars(select(Lot).where(Lot.organization_id == org, Lot.source == "purchase"))
        )


# --- payment methods -------------------------------------------------------------------------


def test_a_card_is_stored_as_token_brand_last4_and_expiry_never_as_its_number(
    client: TestClient, db: Database, org: str, admin: Headers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = add_card(client, org, admin, "4242 4242 4242 4242")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("pmt_")
    assert (body["provider"], body["brand"], body["last4"]) == ("sandbox", "visa", "4242")
    assert (body["exp_month"], body["exp_year"], body["default"]) == (12, 2030, True)
    assert buy(client, org, admin, "p-1").status_code == 201
    # Nowhere: not in any table (creditmeter's, the sandbox's, idempotency records), not in the
    # logs, not in an answer.
    dump = repr(everything(db))
    assert VISA not in dump
    assert "4242 4242" not in dump
    assert VISA not in caplog.text
    assert VISA not in response.text
    assert "4242" in dump  # the last four digits are kept


@pytest.mark.parametrize(
    ("card", "fields"),
    [
        ({"number": "4242424242424241", "exp_month": 12, "exp_year": 2030}, {"card.number"}),
        ({"number": "4242", "exp_month": 12, "exp_year": 2030}, {"card.number"}),
        ({"number": "4242-4242-abcd-4242", "exp_month": 12, "exp_year": 2030}, {"card.number"}),
        ({"number": VISA, "exp_month": 13, "exp_year": 2030}, {"card.exp_month"}),
        ({"number": VISA, "exp_month": 12, "exp_year": 2025}, {"card.exp_year"}),
        ({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "12a"}, {"card.cvc"}),
        (
            {"number": "4242424242424241", "exp_month": 0, "exp_year": 2030, "cvc": "1"},
            {"card.number", "card.exp_month", "card.cvc"},
        ),
    ],
)
def test_bad_card_details_are_a_422_naming_every_field_and_change_nothing(
    client: TestClient,
    db: Database,
    org: str,
    admin: Headers,
    card: dict[str, Any],
    fields: set[str],
) -> None:
    before = everything(db)
    response = client.post(url(org, "payment-methods"), json={"card": card}, headers=admin)
    body = assert_problem(response, 422)
    assert set(field_errors(body)) == fields
    assert card["number"] not in response.text
    assert everything(db) == before


def test_a_card_that_expired_last_month_is_refused_one_expiring_this_month_is_not(
    client: TestClient, org: str, admin: Headers
) -> None:
    card = {"number": VISA, "exp_month": 12, "exp_year": 2025}
    expired = client.post(url(org, "payment-methods"), json={"card": card}, headers=admin)
    assert assert_problem(expired, 422)["code"] == "card_expired"
    card = {"number": VISA, "exp_month": 1, "exp_year": 26}
    ok = client.post(url(org, "payment-methods"), json={"card": card}, headers=admin)
    assert ok.status_code == 201, ok.text
    assert (ok.json()["exp_month"], ok.json()["exp_year"]) == (1, 2026)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"token": "tok_visa", "card": {"number": VISA, "exp_month": 1, "exp_year": 2030}},
        {"token": "not-a-token"},
        {"token": "tok_nosuchtoken"},
        {"token": "tok_visa", "default": "maybe"},
    ],
)
def test_bad_payment_method_bodies_are_4xx_and_change_nothing(
    client: TestClient, db: Database, org: str, admin: Headers, body: dict[str, Any]
) -> None:
    before = {k: v for k, v in everything(db).items() if not k.startswith("sandbox_")}
    assert_problem(client.post(url(org, "payment-methods"), json=body, headers=admin), 422)
    after = {k: v for k, v in everything(db).items() if not k.startswith("sandbox_")}
    assert after == before


def test_the_first_method_is_the_default_and_default_true_switches(
    client: TestClient, org: str, admin: Headers, make_key: Callable[..., Headers]
) -> None:
    first = add_card(client, org, admin).json()
    second = client.post(
        url(org, "payment-methods"), json={"token": "tok_mastercard"}, headers=admin
    ).json()
    assert (first["default"], second["default"]) == (True, False)
    assert second["brand"] == "mastercard"
    third = add_card(client, org, admin, DECLINED, default=True).json()
    reader = make_key(org, "org:read")
    listed = client.get(url(org, "payment-methods"), headers=reader).json()["data"]
    assert [(m["id"], m["default"]) for m in listed] == [
        (third["id"], True),
        (second["id"], False),
        (first["id"], False),
    ]
    switched = client.patch(
        url(org, f"payment-methods/{first['id']}"), json={"default": True}, headers=admin
    )
    assert switched.status_code == 200, switched.text
    assert switched.json()["default"]
    listed = client.get(url(org, "payment-methods"), headers=reader).json()["data"]
    assert [m["id"] for m in listed if m["default"]] == [first["id"]]

    gone = client.delete(url(org, f"payment-methods/{first['id']}"), headers=admin)
    assert gone.status_code == 200, gone.text
    assert gone.json()["detached_at"] is not None
    listed = client.get(url(org, "payment-methods"), headers=reader).json()["data"]
    # the newest remaining method became the default
    assert [(m["id"], m["default"]) for m in listed] == [(third["id"], True), (second["id"], False)]
    again = client.delete(url(org, f"payment-methods/{first['id']}"), headers=admin)
    assert_problem(again, 404, "payment_method_not_found")


def test_the_same_idempotency_key_adds_a_method_once(
    client: TestClient, org: str, admin: Headers
) -> None:
    headers = {**admin, "Idempotency-Key": "card-1"}
    card = {"number": VISA, "exp_month": 12, "exp_year": 2030}
    first = client.post(url(org, "payment-methods"), json={"card": card}, headers=headers)
    second = client.post(url(org, "payment-methods"), json={"card": card}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert len(client.get(url(org, "payment-methods"), headers=admin).json()["data"]) == 1
    other = {"number": "5555555555554444", "exp_month": 12, "exp_year": 2030}
    reused = client.post(url(org, "payment-methods"), json={"card": other}, headers=headers)
    assert_problem(reused, 409, "idempotency_key_reused")


# --- purchases --------------------------------------------------------------------------------


def test_a_package_bought_with_4242_grants_a_purchase_lot_and_a_receipt(
    client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    method = add_card(client, org, admin).json()
    before = available(client, org, admin)
    response = buy(client, org, admin, "buy-1")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "succeeded"
    assert (body["package"], body["credits"]) == ("standard", "1000")
    assert body["amount"] == {"amount_minor": 6000, "currency": "USD"}  # 1,000 x USD 0.06
    assert body["price_per_credit"] == {"amount": "0.06", "currency": "USD"}
    assert body["payment_method_id"] == method["id"]
    # bought 16 January 2026 10:15 UTC: the credits last 12 months, to the minute
    assert body["expires_at"] == "2027-01-16T10:15:00Z"
    assert float(available(client, org, admin)) == float(before) + 1000
    [lot] = purchase_lots(db, org)
    assert lot.id == body["lot_id"]
    assert (lot.amount_micros, lot.priority, lot.currency) == (1000_000_000, 100, "USD")
    assert lot.cost_basis_micros == 60_000  # USD 0.06 a credit
    assert lot.expires_at == utc(2027, 1, 16, 10, 15)
    [payment] = client.get(url(org, "payments"), headers=admin).json()["data"]
    assert payment["id"] == body["payment_id"]
    assert (payment["kind"], payment["purpose"], payment["status"]) == (
        "charge",
        "purchase",
        "succeeded",
    )
    assert payment["reference_id"] == body["id"]
    assert payment["amount"] == {"amount_minor": 6000, "currency": "USD"}
    assert payment["provider_id"].startswith("ch_sbx_")
    with db.read() as s:
        assert verify(s) == []


def test_a_custom_amount_costs_credits_times_the_plans_price(
    client: TestClient, org: str, admin: Headers
) -> None:
    add_card(client, org, admin)
    response = buy(client, org, admin, "custom-1", credits="2500")
    assert response.status_code == 201, response.text
    assert response.json()["amount"] == {"amount_minor": 15000, "currency": "USD"}
    assert response.json()["package"] is None


@pytest.mark.parametrize(
    ("card", "code"),
    [
        (DECLINED, "card_declined"),
        (INSUFFICIENT, "insufficient_funds"),
        (CHARGE_FAILS, "card_declined"),
        (AUTH_REQUIRED, "authentication_required"),
    ],
)
def test_a_declined_card_is_a_402_with_the_reason_and_grants_nothing(
    client: TestClient, db: Database, org: str, admin: Headers, card: str, code: str
) -> None:
    attached = add_card(client, org, admin, card)
    assert attached.status_code == 201, attached.text  # every test card attaches
    before = available(client, org, admin)

    response = buy(client, org, admin, "declined-1")

    body = assert_problem(response, 402, code)
    assert "granted no credits" in body["detail"]
    assert available(client, org, admin) == before
    assert purchase_lots(db, org) == []
    [payment] = client.get(url(org, "payments"), headers=admin).json()["data"]
    assert (payment["status"], payment["failure_code"]) == ("failed", code)
    assert payment["failure_message"]
    # the same key again: the same answer, no second charge
    again = buy(client, org, admin, "declined-1")
    assert (again.status_code, again.json()) == (402, body)
    assert sandbox_charges(db) == 1
    [purchase] = client.get(url(org, "purchases"), headers=admin).json()["data"]
    assert (purchase["status"], purchase["failure_code"], purchase["lot_id"]) == (
        "failed",
        code,
        None,
    )
    with db.read() as s:
        assert verify(s) == []


def test_a_retry_with_the_same_key_charges_once_and_grants_once(
    client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    add_card(client, org, admin)
    first = buy(client, org, admin, "same-key")
    second = buy(client, org, admin, "same-key")
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert sandbox_charges(db) == 1
    assert len(purchase_lots(db, org)) == 1
    assert len(client.get(url(org, "payments"), headers=admin).json()["data"]) == 1
    other = buy(client, org, admin, "same-key", package="professional")
    assert_problem(other, 409, "idempotency_key_reused")
    assert buy(client, org, admin, "another-key").status_code == 201
    assert sandbox_charges(db) == 2


class CrashAfterCharge:
    """The sandbox, but the connection drops after the processor charged: the answer is lost."""

    def __init__(self, inner: SandboxProvider) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def charge(self, *args: Any, **kwargs: Any) -> ChargeResult:
        self.inner.charge(*args, **kwargs)
        raise ProviderUnavailable("connection reset after the charge")


def test_a_purchase_interrupted_after_the_charge_is_finished_by_a_retry_without_a_second_charge(
    app: Any, client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    add_card(client, org, admin)
    app.state.payment_provider = CrashAfterCharge(SandboxProvider(db))
    lost = buy(client, org, admin, "flaky")
    assert (lost.status_code, lost.json()["code"]) == (502, "payment_provider_unavailable")
    assert sandbox_charges(db) == 1
    with db.read() as s:
        [pending] = s.scalars(select(Purchase)).all()
        assert (pending.status, pending.lot_id) == ("pending", None)
    assert purchase_lots(db, org) == []

    app.state.payment_provider = SandboxProvider(db)
    retried = buy(client, org, admin, "flaky")
    assert retried.status_code == 201, retried.text
    assert retried.json()["id"] == pending.id
    assert sandbox_charges(db) == 1  # the processor returned the first charge
    assert len(purchase_lots(db, org)) == 1
    with db.read() as s:
        assert verify(s) == []


def test_a_paused_organization_resumes_as_soon_as_the_purchase_succeeds(
    client: TestClient, db: Database, org: str, admin: Headers, make_key: Callable[..., Headers]
) -> None:
    engine = make_key(org, "org:ingest")
    plan_credits = parse_credits(available(client, org, admin))  # the prorated January allocation
    with db.write() as s:  # usage that ran 600 credits past the balance: paused, in arrears
        ledger.debit(s, org, "live", plan_credits + 600_000_000, "inference", "a run", clock.now())
    gate = {"organization": org, "operation": "inference", "credits": "1"}
    refused = client.post("/v1/authorize", json=gate, headers=engine).json()
    assert (refused["allowed"], refused["reason"]) == (False, "insufficient_credits")
    add_card(client, org, admin)

    assert buy(client, org, admin, "resume").status_code == 201

    allowed = client.post("/v1/authorize", json=gate, headers=engine).json()
    assert allowed["allowed"], allowed
    assert available(client, org, admin) == "400"  # 1,000 bought - 600 of arrears paid first
    with db.read() as s:
        assert verify(s) == []


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"package": "nope"}, 422, "unknown_package", "package"),
        ({"credits": "150"}, 422, "invalid_credits", "credits"),
        ({"credits": "50"}, 422, "invalid_credits", "credits"),
        ({"credits": "2000000"}, 422, "invalid_credits", "credits"),
        ({"package": "standard", "credits": "100"}, 422, "invalid_purchase", "package"),
        ({}, 422, "invalid_purchase", "package"),
        ({"credits": "1.5.0"}, 422, "validation_failed", "credits"),
        ({"package": "standard", "extra": 1}, 422, "validation_failed", "extra"),
        ({"package": "standard", "payment_method": "pmt_nope"}, 422, "unknown_payment_method",
         "payment_method"),
    ],
)  # fmt: skip
def test_bad_purchases_are_a_4xx_naming_the_field_and_change_nothing(
    client: TestClient,
    db: Database,
    org: str,
    admin: Headers,
    body: dict[str, Any],
    status: int,
    code: str,
    field: str,
) -> None:
    add_card(client, org, admin)
    before = everything(db)
    response = client.post(
        url(org, "purchases"), json=body, headers={**admin, "Idempotency-Key": "bad-1"}
    )
    problem = assert_problem(response, status, code)
    assert field in field_errors(problem)
    assert everything(db) == before


def test_a_purchase_needs_an_idempotency_key_a_plan_and_a_payment_method(
    client: TestClient,
    db: Database,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
    org: str,
    admin: Headers,
) -> None:
    before = everything(db)
    missing_key = client.post(url(org, "purchases"), json={"package": "standard"}, headers=admin)
    assert_problem(missing_key, 422, "idempotency_key_required")
    no_method = buy(client, org, admin, "k-1")
    assert_problem(no_method, 422, "payment_method_required")
    unsubscribed = make_org("Initech")
    its_admin = make_key(unsubscribed, "org:admin")
    before = everything(db)
    assert_problem(buy(client, unsubscribed, its_admin, "k-2"), 409, "subscription_required")
    assert everything(db) == before


def test_the_billing_history_lists_charges_newest_first_with_their_reasons_page_by_page(
    client: TestClient, org: str, admin: Headers, make_key: Callable[..., Headers]
) -> None:
    good = add_card(client, org, admin).json()
    bad = add_card(client, org, admin, INSUFFICIENT).json()
    outcomes = []
    for i in range(5):
        method = good if i % 2 == 0 else bad
        response = buy(
            client, org, admin, f"h-{i}", package="standard", payment_method=method["id"]
        )
        outcomes.append(response.status_code)
    assert outcomes == [201, 402, 201, 402, 201]
    reader = make_key(org, "org:read")
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(url(org, "payments"), params=params, headers=reader).json()
        seen += page["data"]
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if not cursor:
            break
    assert [(p["status"], p["failure_code"]) for p in seen] == [
        ("succeeded", None),
        ("failed", "insufficient_funds"),
        ("succeeded", None),
        ("failed", "insufficient_funds"),
        ("succeeded", None),
    ]
    assert [p["id"] for p in seen] == sorted((p["id"] for p in seen), reverse=True)
    bad_cursor = client.get(url(org, "payments"), params={"cursor": "???"}, headers=reader)
    assert_problem(bad_cursor, 422, "invalid_cursor")


def test_an_org_read_key_may_list_but_not_buy_or_add_cards(
    client: TestClient, db: Database, org: str, admin: Headers, make_key: Callable[..., Headers]
) -> None:
    add_card(client, org, admin)
    reader = make_key(org, "org:read")
    before = everything(db)
    assert_problem(buy(client, org, reader, "r-1"), 403, "insufficient_scope")
    assert_problem(add_card(client, org, reader), 403, "insufficient_scope")
    assert everything(db) == before
    assert client.get(url(org, "payments"), headers=reader).status_code == 200
    assert client.get(url(org, "purchases"), headers=reader).status_code == 200
