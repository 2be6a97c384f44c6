"""Plans, packages and subscriptions over HTTP: who may call, what a subscription shows, and bad
input that is a 4xx problem and changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from creditmeter.api.app import create_app
from creditmeter.billing.plans import PlansError, clear_catalog_cache
from creditmeter.config import Settings
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger.verify import verify
from tests.api.test_bad_input import assert_problem, everything
from tests.conftest import utc

Headers = dict[str, str]
JAN_16 = utc(2026, 1, 16)


def sub_url(org: str) -> str:
    return f"/v1/organizations/{org}/subscription"


@pytest.fixture
def january() -> Iterator[None]:
    with clock.frozen_at(JAN_16):
        yield


def put(client: TestClient, org: str, headers: Headers, body: Any, **extra: str) -> Any:
    return client.put(sub_url(org), json=body, headers={**headers, **extra})


def test_any_valid_key_lists_the_plans(
    client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    org = make_org()
    assert client.get("/v1/plans").status_code == 401
    for scope in ("org:read", "org:ingest", "org:admin"):
        response = client.get("/v1/plans", headers=make_key(org, scope))
        assert response.status_code == 200, response.text
    body = response.json()
    assert body["time_zone"] == "UTC"
    standard, professional, enterprise = body["data"]
    assert standard == {
        "id": "standard",
        "name": "Standard",
        "description": standard["description"],
        "monthly_fee": {"amount_minor": 4900, "currency": "USD"},
        "allocation_credits": "1000",
        "rollover_cycles": 0,
        "custom_terms": False,
        "credit_price": {"amount": "0.06", "currency": "USD"},
        "purchase_expiry_months": 12,
        "overage_in_arrears": False,
        "packages_on_account": False,
        "cancel_after_dunning": False,
        "self_serve": True,
    }
    assert (professional["allocation_credits"], professional["rollover_cycles"]) == ("5000", 3)
    assert professional["self_serve"]
    assert not enterprise["self_serve"]  # custom terms: an operator's to give
    assert enterprise["allocation_credits"] is None
    assert enterprise["rollover_cycles"] == "never"
    assert enterprise["custom_terms"]
    assert enterprise["overage_in_arrears"]
    assert enterprise["packages_on_account"]


def test_packages_show_their_price_on_each_plan(
    client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    response = client.get("/v1/packages", headers=make_key(make_org(), "org:read"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(p["id"], p["credits"]) for p in body["data"]] == [
        ("standard", "1000"),
        ("professional", "5000"),
    ]
    assert body["data"][0]["prices"][0] == {
        "plan": "standard",
        "price": {"amount_minor": 6000, "currency": "USD"},
    }
    custom = body["custom"]
    assert (custom["min_credits"], custom["max_credits"], custom["step_credits"]) == (
        "100",
        "1000000",
        "100",
    )
    assert custom["credit_prices"][1]["price"] == {"amount_minor": 5, "currency": "USD"}


@pytest.mark.usefixtures("january")
def test_an_admin_subscribes_and_the_credits_arrive_at_once(
    client: TestClient,
    db: Database,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org()
    admin = make_key(org, "org:admin")
    response = put(client, org, admin, {"plan": "professional"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["plan"], body["status"], body["environment"]) == (
        "professional",
        "active",
        "live",
    )
    assert body["current_period"] == {
        "label": "2026-01",
        "start": "2026-01-01T00:00:00Z",
        "end": "2026-02-01T00:00:00Z",
    }
    [allocation] = body["current_period_allocations"]
    assert allocation["kind"] == "initial"
    assert allocation["credits"] == "2580.645161"  # 5,000 x 16/31
    assert allocation["fee"] == {"amount_minor": 10271, "currency": "USD"}  # 199.00 x 16/31
    assert allocation["prorated"]
    assert allocation["expires_at"] == "2026-05-01T00:00:00Z"
    assert body["next_allocation"] == {
        "at": "2026-02-01T00:00:00Z",
        "plan": "professional",
        "credits": "5000",
    }
    assert body["pending_change"] is None
    balance = client.get(f"/v1/organizations/{org}/balance", headers=admin).json()
    assert balance["available"] == "2580.645161"
    assert client.get(sub_url(org), headers=make_key(org, "org:read")).json() == body


@pytest.mark.usefixtures("january")
def test_upgrade_downgrade_and_cancel_through_the_api(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
) -> None:
    org = make_org()
    assert put(client, org, operator, {"plan": "standard"}).status_code == 200
    upgraded = put(client, org, operator, {"plan": "professional"}).json()
    assert [a["kind"] for a in upgraded["current_period_allocations"]] == ["initial", "upgrade"]
    assert upgraded["current_period_allocations"][1]["credits"] == "2064.516129"
    downgraded = put(client, org, operator, {"plan": "standard"}).json()
    assert downgraded["plan"] == "professional"
    assert downgraded["pending_change"] == {
        "action": "change",
        "effective_at": "2026-02-01T00:00:00Z",
        "plan": "standard",
        "allocation_credits": "1000",
        "rollover_cycles": 0,
    }
    assert downgraded["next_allocation"]["plan"] == "standard"
    canceled = client.delete(sub_url(org), headers=operator).json()
    assert canceled["pending_change"]["action"] == "cancel"
    assert canceled["next_allocation"] is None
    assert canceled["status"] == "active"  # until the end of the cycle
    enterprise = put(
        client,
        org,
        operator,
        {"plan": "enterprise", "allocation_credits": "20000", "rollover_cycles": "never"},
    ).json()
    assert (enterprise["plan"], enterprise["rollover_cycles"]) == ("enterprise", "never")
    assert enterprise["pending_change"] is None
    assert enterprise["current_period_allocations"][-1]["expires_at"] is None
    with db.read() as session:
        assert verify(session) == []


@pytest.mark.usefixtures("january")
def test_an_operator_may_subscribe_the_test_environment(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    response = client.put(
        sub_url(org), json={"plan": "standard"}, headers=operator, params={"environment": "test"}
    )
    assert response.json()["environment"] == "test"
    assert_problem(client.get(sub_url(org), headers=operator), 404, "subscription_not_found")
    assert client.get(sub_url(org), headers=operator, params={"environment": "test"}).is_success


@pytest.mark.usefixtures("january")
def test_who_may_change_a_subscription(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    acme, globex = make_org("Acme"), make_org("Globex")
    for scope in ("org:read", "org:ingest"):
        body = assert_problem(put(client, acme, make_key(acme, scope), {"plan": "standard"}), 403)
        assert body["code"] == "insufficient_scope"
    assert_problem(put(client, globex, make_key(acme, "org:admin"), {"plan": "standard"}), 404)
    assert_problem(put(client, "org_missing", operator, {"plan": "standard"}), 404, "not_found")


OPERATOR_TERMS = [
    {"plan": "enterprise", "allocation_credits": "1000000000000"},
    {"plan": "enterprise", "allocation_credits": "20000", "rollover_cycles": "never"},
    {"plan": "enterprise"},
    {"plan": "enterprise", "rollover_cycles": 6},
]


@pytest.mark.usefixtures("january")
@pytest.mark.parametrize("subscribed", [None, "standard", "professional"])
@pytest.mark.parametrize("body", OPERATOR_TERMS, ids=[repr(b) for b in OPERATOR_TERMS])
def test_an_organization_admin_cannot_give_itself_custom_terms(
    client: TestClient,
    db: Database,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
    subscribed: str | None,
    body: dict[str, Any],
) -> None:
    """The minting hole: an org:admin key asking for an enterprise contract of a trillion credits
    gets 403 custom_terms_operator_only, as a first subscription and as an upgrade, and nothing
    changes: no lot, no allocation, no journal transaction, the balance as it was."""
    org = make_org()
    admin = make_key(org, "org:admin")
    if subscribed:
        assert put(client, org, admin, {"plan": subscribed}).status_code == 200
    balance = client.get(f"/v1/organizations/{org}/balance", headers=admin).json()
    before = everything(db)

    problem = assert_problem(put(client, org, admin, body, **{"Idempotency-Key": "k"}), 403)

    assert problem["code"] == "custom_terms_operator_only"
    assert "operator" in problem["detail"]
    assert problem["errors"][0]["field"] == "plan"
    assert everything(db) == before
    assert client.get(f"/v1/organizations/{org}/balance", headers=admin).json() == balance


@pytest.mark.usefixtures("january")
def test_an_organization_admin_picks_published_plans_and_the_operator_gives_custom_terms(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org()
    admin = make_key(org, "org:admin")
    assert put(client, org, admin, {"plan": "standard"}).status_code == 200
    assert put(client, org, admin, {"plan": "professional"}).json()["plan"] == "professional"
    contract = {"plan": "enterprise", "allocation_credits": "20000"}
    assert put(client, org, operator, contract).json()["allocation_credits"] == "20000"
    # the customer may leave the contract for a published plan (at the next cycle), not rewrite it
    assert_problem(put(client, org, admin, {**contract, "allocation_credits": "90000"}), 403)
    pending = put(client, org, admin, {"plan": "standard"}).json()
    assert (pending["plan"], pending["pending_change"]["plan"]) == ("enterprise", "standard")
    # an unknown plan and terms a published plan does not take are 422 for every caller
    assert_problem(put(client, org, admin, {"plan": "gold"}), 422, "unknown_plan")
    problem = put(client, org, admin, {"plan": "standard", "allocation_credits": "9"})
    assert_problem(problem, 422, "invalid_terms")


BAD = [
    ({}, "plan"),
    ({"plan": 5}, "plan"),
    ({"plan": ""}, "plan"),
    ({"plan": "gold"}, "plan"),
    ({"plan": "standard", "allocation_credits": "100"}, "allocation_credits"),
    ({"plan": "professional", "rollover_cycles": 1}, "rollover_cycles"),
    ({"plan": "enterprise"}, "allocation_credits"),
    ({"plan": "enterprise", "allocation_credits": 100}, "allocation_credits"),
    ({"plan": "enterprise", "allocation_credits": "-5"}, "allocation_credits"),
    ({"plan": "enterprise", "allocation_credits": "0.0000001"}, "allocation_credits"),
    ({"plan": "enterprise", "allocation_credits": "10", "rollover_cycles": -1}, "rollover_cycles"),
    ({"plan": "enterprise", "allocation_credits": "10", "rollover_cycles": 121}, "rollover_cycles"),
    ({"plan": "enterprise", "allocation_credits": "10", "rollover_cycles": "6"}, "rollover_cycles"),
    (
        {"plan": "enterprise", "allocation_credits": "10", "rollover_cycles": True},
        "rollover_cycles",
    ),
    ({"plan": "standard", "coupon": "FREE"}, "coupon"),
]


@pytest.mark.usefixtures("january")
@pytest.mark.parametrize(("body", "field"), BAD, ids=[repr(b) for b, _ in BAD])
def test_bad_input_is_a_422_naming_the_field_and_changes_nothing(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    body: dict[str, Any],
    field: str,
) -> None:
    org = make_org()
    assert put(client, org, operator, {"plan": "standard"}).status_code == 200
    before = everything(db)
    problem = assert_problem(put(client, org, operator, body), 422)
    assert field in {e["field"] for e in problem["errors"]}, problem
    assert everything(db) == before


@pytest.mark.usefixtures("january")
def test_a_body_that_is_not_json_is_refused(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    before = everything(db)
    response = client.put(
        sub_url(org), content=b"plan=standard", headers={**operator, "Content-Type": "text/plain"}
    )
    assert_problem(response, 415, "unsupported_media_type")
    assert everything(db) == before


@pytest.mark.usefixtures("january")
def test_an_idempotency_key_applies_a_change_once(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    first = put(client, org, operator, {"plan": "standard"}, **{"Idempotency-Key": "sub-1"})
    again = put(client, org, operator, {"plan": "standard"}, **{"Idempotency-Key": "sub-1"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    before = everything(db)
    conflict = put(client, org, operator, {"plan": "professional"}, **{"Idempotency-Key": "sub-1"})
    assert_problem(conflict, 409)
    assert everything(db) == before
    lots = client.get(f"/v1/organizations/{org}/grants", headers=operator).json()["data"]
    assert len(lots) == 1


@pytest.mark.usefixtures("january")
def test_a_plan_change_after_an_unclosed_boundary_is_a_409(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    put(client, org, operator, {"plan": "standard"})
    with clock.frozen_at(utc(2026, 2, 3)):
        before = everything(db)
        assert_problem(
            put(client, org, operator, {"plan": "professional"}), 409, "cycle_close_pending"
        )
        assert everything(db) == before


def test_an_invalid_plans_file_stops_the_server_at_start(
    db: Database, tmp_path: Path, operator: Headers
) -> None:
    bad = tmp_path / "plans.toml"
    bad.write_text('[plans.standard]\nname = "Standard"\n')
    clear_catalog_cache()
    app = create_app(Settings(database_url=db.url, plans_path=str(bad)), db=db)
    try:
        with pytest.raises(PlansError, match=r"plans\.standard\.monthly_fee"), TestClient(app):
            pass  # the lifespan (server start) reads the plans file first
        # Without a start (no lifespan run), the first billing request reports it as a problem.
        response = TestClient(app, raise_server_exceptions=False).get("/v1/plans", headers=operator)
    finally:
        clear_catalog_cache()
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "invalid_plans"
    assert "plans.standard.monthly_fee" in {e["field"] for e in body["errors"]}


def test_the_billing_endpoints_are_published(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"get"} <= paths["/v1/plans"].keys()
    assert {"get"} <= paths["/v1/packages"].keys()
    assert {"get", "put", "delete"} <= paths["/v1/organizations/{org_id}/subscription"].keys()
