"""Tenant isolation (DESIGN.md §5, invariant 8): a key scoped to one organization can neither read
nor change another. For every endpoint under ``/v1/organizations/{org_id}``, a key of Acme gets the
same 404 for Globex's resources as for an organization that does not exist, and nothing of Globex
changes. Within its own organization a key can do only what its scope allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.billing.payments import methods as payment_methods
from creditmeter.billing.payments.provider import AttachedMethod
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.verify import verify
from creditmeter.metering.domain import EventInput
from creditmeter.metering.ingest import IngestContext, ingest
from creditmeter.models import metadata
from creditmeter.notify import alert_rules, events, webhooks
from creditmeter.notify.models import Email, WebhookDelivery
from creditmeter.pricing import load_rate_card
from tests import metering

Headers = dict[str, str]
ORG_SCOPES = ["org:admin", "org:read", "org:ingest"]

GRANT = {"credits": "1000", "source": "adjustment", "reason": "take over"}
AUTO_TOP_UP = {
    "enabled": True,
    "threshold_credits": "10",
    "package": "standard",
    "monthly_limit_money": 100000,
}
DELIVERY = "/v1/organizations/{org}/webhook-endpoints/{endpoint}/deliveries/{delivery}"
#: Every endpoint of one organization: (method, path, JSON body). {org}, {key}, {txn}, {project},
#: {event} and {method} are filled with the target organization, one of its API keys, one of its
#: journal transactions, one of its projects, one of its usage events and one of its payment methods.
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/organizations/{org}", None),
    ("GET", "/v1/organizations/{org}/projects", None),
    ("POST", "/v1/organizations/{org}/projects", {"name": "Intruder"}),
    ("GET", "/v1/organizations/{org}/members", None),
    ("POST", "/v1/organizations/{org}/members", {"email": "mallory@evil.example", "role": "owner"}),
    ("GET", "/v1/organizations/{org}/api-keys", None),
    ("POST", "/v1/organizations/{org}/api-keys", {"name": "backdoor", "scopes": ["org:admin"]}),
    ("DELETE", "/v1/organizations/{org}/api-keys/{key}", None),
    ("GET", "/v1/organizations/{org}/grants", None),
    ("POST", "/v1/organizations/{org}/grants", GRANT),
    ("GET", "/v1/organizations/{org}/balance", None),
    ("GET", "/v1/organizations/{org}/ledger", None),
    ("POST", "/v1/organizations/{org}/ledger/{txn}/reverse", {"reason": "refund me"}),
    ("GET", "/v1/organizations/{org}/projects/{project}/budget", None),
    ("PUT", "/v1/organizations/{org}/projects/{project}/budget", {"monthly_credits": "1"}),
    ("POST", "/v1/organizations/{org}/usage/{event}/reverse", {"reason": "refund me"}),
    ("GET", "/v1/organizations/{org}/subscription", None),
    ("PUT", "/v1/organizations/{org}/subscription", {"plan": "standard"}),
    ("DELETE", "/v1/organizations/{org}/subscription", None),
    ("GET", "/v1/organizations/{org}/invoices", None),
    ("GET", "/v1/organizations/{org}/credit-notes", None),
    ("POST", "/v1/organizations/{org}/test-clock", {"test_clock": "clock_missing"}),
    ("GET", "/v1/organizations/{org}/test-clock", None),
    ("DELETE", "/v1/organizations/{org}/test-clock", None),
    ("GET", "/v1/organizations/{org}/payment-methods", None),
    ("POST", "/v1/organizations/{org}/payment-methods", {"token": "tok_visa"}),
    ("PATCH", "/v1/organizations/{org}/payment-methods/{method}", {"default": True}),
    ("DELETE", "/v1/organizations/{org}/payment-methods/{method}", None),
    ("GET", "/v1/organizations/{org}/payments", None),
    ("GET", "/v1/organizations/{org}/purchases", None),
    ("POST", "/v1/organizations/{org}/purchases", {"package": "standard"}),
    ("GET", "/v1/organizations/{org}/auto-top-up", None),
    ("PUT", "/v1/organizations/{org}/auto-top-up", AUTO_TOP_UP),
    ("GET", "/v1/organizations/{org}/alerts", None),
    ("POST", "/v1/organizations/{org}/alerts", {"type": "credits_below", "threshold": "5"}),
    ("GET", "/v1/organizations/{org}/alerts/{alert}", None),
    ("PATCH", "/v1/organizations/{org}/alerts/{alert}", {"enabled": False}),
    ("DELETE", "/v1/organizations/{org}/alerts/{alert}", None),
    ("GET", "/v1/organizations/{org}/webhook-endpoints", None),
    ("POST", "/v1/organizations/{org}/webhook-endpoints", {"url": "https://93.184.216.34/hook"}),
    ("GET", "/v1/organizations/{org}/webhook-endpoints/{endpoint}", None),
    ("PATCH", "/v1/organizations/{org}/webhook-endpoints/{endpoint}", {"description": "mine"}),
    ("DELETE", "/v1/organizations/{org}/webhook-endpoints/{endpoint}", None),
    ("POST", "/v1/organizations/{org}/webhook-endpoints/{endpoint}/rotate-secret", {}),
    ("POST", "/v1/organizations/{org}/webhook-endpoints/{endpoint}/test", {}),
    ("GET", "/v1/organizations/{org}/webhook-endpoints/{endpoint}/deliveries", None),
    ("POST", DELIVERY + "/redeliver", None),
    ("GET", "/v1/organizations/{org}/notification-events", None),
    ("GET", "/v1/organizations/{org}/emails", None),
    ("GET", "/v1/organizations/{org}/emails/{email}", None),
    ("GET", "/v1/organizations/{org}/members/{member}/notification-preferences", None),
    (
        "PUT",
        "/v1/organizations/{org}/members/{member}/notification-preferences",
        {"unsubscribed": True},
    ),
]


@dataclass
class Tenant:
    id: str
    key_id: str
    key: Headers
    spare_key_id: str
    txn: str
    project: str
    event: str
    method: str
    member: str
    alert: str
    endpoint: str
    delivery: str
    email: str


def ingest_context(caller_organization: str | None) -> IngestContext:
    return IngestContext(
        environment="live",
        caller_organization_id=caller_organization,
        now=clock.now(),
        rate_card=load_rate_card(),
        late_window=timedelta(days=35),
        future_skew=timedelta(minutes=5),
        currency="USD",
    )


def usage_event(org: str, project: str) -> EventInput:
    return EventInput(
        id="inference-1",
        organization=org,
        operation="inference",
        quantities={"input_tokens": "1000", "output_tokens": "500"},
        project=project,
    )


@pytest.fixture
def tenant(
    db: Database, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> Callable[[str], Tenant]:
    """An organization with a project, a member, API keys, credits and some usage (a debit and a
    usage event: 120 credits in all)."""
    from creditmeter.orgs import service as orgs
    from creditmeter.orgs.service import Environment, Role, Scope

    def _make(name: str) -> Tenant:
        org = make_org(name, f"{name.lower()}-ext")
        now = clock.now()
        with db.write() as s:
            project = orgs.create_project(s, org, "Research", now).id
            member = orgs.add_member(s, org, f"owner@{name.lower()}.example", Role.OWNER, now).id
            key, secret = orgs.create_api_key(
                s, org, "admin", [Scope.ORG_ADMIN], Environment.LIVE, now
            )
            spare, _ = orgs.create_api_key(
                s, org, "spare", [Scope.ORG_INGEST], Environment.LIVE, now
            )
            ledger.grant(
                s,
                org,
                "live",
                ledger.GrantRequest(500_000_000, LotSource.PLAN, "plan", now, None),
                now,
            )
            txn = ledger.debit(
                s, org, "live", 119_995_000, "inference", "usage", now
            ).transaction_id
            [used] = ingest(s, ingest_context(None), [usage_event(org, project)])
            assert (used.status, used.credits_micros) == ("applied", 5_000)
            card = AttachedMethod(f"pm_sbx_{name.lower()}", "visa", "4242", 12, 2030)
            method = payment_methods.record_method(s, org, "live", "sandbox", card, False, now)
            alert = alert_rules.create(
                s, org, "live", alert_rules.RuleInput("credits_below", "1"), now
            ).id
            endpoint, _ = webhooks.create_endpoint(
                s, organization_id=org, environment="live", url="https://93.184.216.34/tenant",
                description="", event_types=[], now=now,
            )  # fmt: skip
            event = events.publish(
                s, "organization.paused", organization_id=org, environment="live",
                data={"available_credits": "0", "at": now, "reason": "insufficient_credits"},
                now=now,
            )  # fmt: skip
            assert event is not None
            delivery = s.scalars(select(WebhookDelivery.id)).all()[-1]
            email = s.scalars(select(Email.id).where(Email.organization_id == org)).one()
        return Tenant(
            org,
            key.id,
            {"Authorization": f"Bearer {secret}"},
            spare.id,
            f"txn_{txn}",
            project,
            used.id,
            method.id,
            member,
            alert,
            endpoint.id,
            delivery,
            email,
        )

    return _make


def state_of(db: Database, org: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row that belongs to ``org`` (and every idempotency record), for before/after
    comparisons. An API key's last-use time is left out: using a key records it."""
    snapshot: dict[str, list[tuple[Any, ...]]] = {}
    with db.read() as s:
        for table in metadata.sorted_tables:
            columns = [
                c for c in table.c if not (table.name == "api_keys" and c.name == "last_used_at")
            ]
            query = select(*columns)
            if table.name == "organizations":
                query = query.where(table.c.id == org)
            elif "organization_id" in table.c:
                query = query.where(table.c.organization_id == org)
            elif table.name != "idempotency_keys":
                continue
            snapshot[table.name] = sorted(tuple(map(repr, row)) for row in s.execute(query))
    return snapshot


def call(
    client: TestClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: Headers,
    target: Tenant,
    org_id: str | None = None,
) -> Any:
    url = path.format(
        org=org_id or target.id,
        key=target.spare_key_id,
        txn=target.txn,
        project=target.project,
        event=target.event,
        method=target.method,
        member=target.member,
        alert=target.alert,
        endpoint=target.endpoint,
        delivery=target.delivery,
        email=target.email,
    )
    extra = {"Idempotency-Key": "isolation-1"} if method == "POST" else {}
    return client.request(method, url, json=body, headers={**headers, **extra})


def anonymized(response: Any, org_id: str) -> tuple[int, str, dict[str, Any]]:
    body = response.json()
    body["detail"] = body["detail"].replace(org_id, "{org}")
    return response.status_code, response.headers["content-type"], body


# --- another organization's resources are invisible ----------------------------------------------


@pytest.mark.parametrize("scope", ORG_SCOPES)
@pytest.mark.parametrize(
    ("method", "path", "body"), ENDPOINTS, ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_key_of_one_organization_gets_404_for_another_and_changes_nothing(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    tenant: Callable[[str], Tenant],
    scope: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    acme, globex = tenant("Acme"), tenant("Globex")
    acme_key = make_key(acme.id, scope)
    before = state_of(db, globex.id)

    response = call(client, method, path, body, acme_key, globex)

    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "not_found"
    nowhere = new_id("org")
    missing = call(client, method, path, body, acme_key, globex, org_id=nowhere)
    assert anonymized(response, globex.id) == anonymized(missing, nowhere), "existence leaks"
    assert globex.txn not in response.text
    assert globex.spare_key_id not in response.text
    assert state_of(db, globex.id) == before
    assert (
        client.get(f"/v1/organizations/{globex.id}/balance", headers=globex.key).json()["available"]
        == "380"
    )


def test_the_matrix_covers_every_endpoint_of_an_organization(client: TestClient) -> None:
    names = {
        "{org_id}": "{org}",
        "{key_id}": "{key}",
        "{transaction_id}": "{txn}",
        "{project_id}": "{project}",
        "{event_id}": "{event}",
        "{method_id}": "{method}",
        "{member_id}": "{member}",
        "{alert_id}": "{alert}",
        "{endpoint_id}": "{endpoint}",
        "{delivery_id}": "{delivery}",
        "{email_id}": "{email}",
    }
    published = set()
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        if path.startswith("/v1/organizations/{org_id}"):
            ours = path
            for theirs, mine in names.items():
                ours = ours.replace(theirs, mine)
            published |= {(method.upper(), ours) for method in operations}
    assert published == {(method, path) for method, path, _ in ENDPOINTS}
    assert published == set(ALLOWED)


def test_an_operator_sees_every_organization(
    client: TestClient, operator: Headers, tenant: Callable[[str], Tenant]
) -> None:
    acme, globex = tenant("Acme"), tenant("Globex")
    for org in (acme, globex):
        assert (
            client.get(f"/v1/organizations/{org.id}/balance", headers=operator).status_code == 200
        )
    listed = {o["id"] for o in client.get("/v1/organizations", headers=operator).json()["data"]}
    assert listed == {acme.id, globex.id}


@pytest.mark.parametrize("scope", ORG_SCOPES)
def test_the_organization_list_shows_a_key_only_its_own(
    client: TestClient,
    make_key: Callable[..., Headers],
    tenant: Callable[[str], Tenant],
    scope: str,
) -> None:
    acme, _ = tenant("Acme"), tenant("Globex")
    body = client.get("/v1/organizations", headers=make_key(acme.id, scope)).json()
    assert [o["id"] for o in body["data"]] == [acme.id]


def test_revoking_another_organizations_key_through_ones_own_path_is_404(
    client: TestClient, db: Database, tenant: Callable[[str], Tenant]
) -> None:
    acme, globex = tenant("Acme"), tenant("Globex")
    before = state_of(db, globex.id)

    for key_id in (globex.key_id, globex.spare_key_id):
        response = client.delete(f"/v1/organizations/{acme.id}/api-keys/{key_id}", headers=acme.key)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "not_found"

    assert state_of(db, globex.id) == before
    assert (
        client.get(f"/v1/organizations/{globex.id}/api-keys", headers=globex.key).status_code == 200
    )


def test_reversing_another_organizations_transaction_through_ones_own_path_is_404(
    client: TestClient, db: Database, operator: Headers, tenant: Callable[[str], Tenant]
) -> None:
    acme, globex = tenant("Acme"), tenant("Globex")
    before = state_of(db, globex.id)
    for headers in (operator, acme.key):
        response = client.post(
            f"/v1/organizations/{acme.id}/ledger/{globex.txn}/reverse",
            json={"reason": "x"},
            headers=headers,
        )
        assert response.status_code in {403, 404}, (
            response.text
        )  # an org key may not reverse at all
    assert state_of(db, globex.id) == before


def test_credits_never_move_between_organizations(
    client: TestClient, db: Database, operator: Headers, tenant: Callable[[str], Tenant]
) -> None:
    acme, globex = tenant("Acme"), tenant("Globex")
    before = state_of(db, globex.id)

    client.post(f"/v1/organizations/{acme.id}/grants", json=GRANT, headers=operator)
    with db.write() as s:
        ledger.debit(s, acme.id, "live", 2_000_000_000, "training", "overrun", clock.now())

    assert state_of(db, globex.id) == before
    acme_view = client.get(f"/v1/organizations/{acme.id}/balance", headers=acme.key).json()
    assert (acme_view["available"], acme_view["paused"]) == ("-620", True)
    globex_view = client.get(f"/v1/organizations/{globex.id}/balance", headers=globex.key).json()
    assert (globex_view["available"], globex_view["paused"]) == ("380", False)
    acme_txns = client.get(f"/v1/organizations/{acme.id}/ledger", headers=acme.key).json()["data"]
    assert globex.txn not in {t["id"] for t in acme_txns}
    with db.read() as s:
        assert verify(s) == []


# --- what each scope may do in its own organization ----------------------------------------------

ALLOWED = {  # (method, path) -> the status for org:admin, org:read, org:ingest
    ("GET", "/v1/organizations/{org}"): (200, 200, 200),
    ("GET", "/v1/organizations/{org}/projects"): (200, 200, 403),
    ("POST", "/v1/organizations/{org}/projects"): (201, 403, 403),
    ("GET", "/v1/organizations/{org}/members"): (200, 200, 403),
    ("POST", "/v1/organizations/{org}/members"): (201, 403, 403),
    ("GET", "/v1/organizations/{org}/api-keys"): (200, 403, 403),
    ("POST", "/v1/organizations/{org}/api-keys"): (201, 403, 403),
    ("DELETE", "/v1/organizations/{org}/api-keys/{key}"): (200, 403, 403),
    ("GET", "/v1/organizations/{org}/grants"): (200, 200, 403),
    ("POST", "/v1/organizations/{org}/grants"): (403, 403, 403),  # operator only
    ("GET", "/v1/organizations/{org}/balance"): (200, 200, 200),
    ("GET", "/v1/organizations/{org}/ledger"): (200, 200, 403),
    ("POST", "/v1/organizations/{org}/ledger/{txn}/reverse"): (403, 403, 403),  # operator only
    ("GET", "/v1/organizations/{org}/projects/{project}/budget"): (200, 200, 403),
    ("PUT", "/v1/organizations/{org}/projects/{project}/budget"): (200, 403, 403),
    ("POST", "/v1/organizations/{org}/usage/{event}/reverse"): (403, 403, 403),  # operator only
    ("GET", "/v1/organizations/{org}/subscription"): (404, 404, 403),  # the tenant has none yet
    ("PUT", "/v1/organizations/{org}/subscription"): (200, 403, 403),
    ("DELETE", "/v1/organizations/{org}/subscription"): (404, 403, 403),  # nothing to cancel
    ("GET", "/v1/organizations/{org}/invoices"): (200, 200, 403),
    ("GET", "/v1/organizations/{org}/credit-notes"): (200, 200, 403),
    ("POST", "/v1/organizations/{org}/test-clock"): (403, 403, 403),  # operator only
    ("GET", "/v1/organizations/{org}/test-clock"): (403, 403, 403),  # operator only
    ("DELETE", "/v1/organizations/{org}/test-clock"): (403, 403, 403),  # operator only
    ("GET", "/v1/organizations/{org}/payment-methods"): (200, 200, 403),
    ("POST", "/v1/organizations/{org}/payment-methods"): (201, 403, 403),
    ("PATCH", "/v1/organizations/{org}/payment-methods/{method}"): (200, 403, 403),
    ("DELETE", "/v1/organizations/{org}/payment-methods/{method}"): (200, 403, 403),
    ("GET", "/v1/organizations/{org}/payments"): (200, 200, 403),
    ("GET", "/v1/organizations/{org}/purchases"): (200, 200, 403),
    # the tenant has no plan yet: no price per credit
    ("POST", "/v1/organizations/{org}/purchases"): (409, 403, 403),
    ("GET", "/v1/organizations/{org}/auto-top-up"): (404, 404, 403),  # none set up
    ("PUT", "/v1/organizations/{org}/auto-top-up"): (409, 403, 403),  # no plan yet
    ("GET", "/v1/organizations/{org}/alerts"): (200, 200, 403),
    ("POST", "/v1/organizations/{org}/alerts"): (201, 403, 403),
    ("GET", "/v1/organizations/{org}/alerts/{alert}"): (200, 200, 403),
    ("PATCH", "/v1/organizations/{org}/alerts/{alert}"): (200, 403, 403),
    ("DELETE", "/v1/organizations/{org}/alerts/{alert}"): (200, 403, 403),
    # Endpoints (their URLs, their deliveries' responses) are for admins only.
    ("GET", "/v1/organizations/{org}/webhook-endpoints"): (200, 403, 403),
    ("POST", "/v1/organizations/{org}/webhook-endpoints"): (201, 403, 403),
    ("GET", "/v1/organizations/{org}/webhook-endpoints/{endpoint}"): (200, 403, 403),
    ("PATCH", "/v1/organizations/{org}/webhook-endpoints/{endpoint}"): (200, 403, 403),
    ("DELETE", "/v1/organizations/{org}/webhook-endpoints/{endpoint}"): (200, 403, 403),
    ("POST", "/v1/organizations/{org}/webhook-endpoints/{endpoint}/rotate-secret"): (
        200,
        403,
        403,
    ),
    ("POST", "/v1/organizations/{org}/webhook-endpoints/{endpoint}/test"): (202, 403, 403),
    ("GET", "/v1/organizations/{org}/webhook-endpoints/{endpoint}/deliveries"): (200, 403, 403),
    ("POST", DELIVERY + "/redeliver"): (202, 403, 403),
    ("GET", "/v1/organizations/{org}/notification-events"): (200, 200, 403),
    ("GET", "/v1/organizations/{org}/emails"): (200, 200, 403),
    ("GET", "/v1/organizations/{org}/emails/{email}"): (200, 200, 403),
    ("GET", "/v1/organizations/{org}/members/{member}/notification-preferences"): (200, 403, 403),
    ("PUT", "/v1/organizations/{org}/members/{member}/notification-preferences"): (200, 403, 403),
}


@pytest.mark.parametrize(("scope_index", "scope"), list(enumerate(ORG_SCOPES)))
@pytest.mark.parametrize(
    ("method", "path", "body"), ENDPOINTS, ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_key_does_only_what_its_scope_allows_in_its_own_organization(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    tenant: Callable[[str], Tenant],
    scope_index: int,
    scope: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    acme = tenant("Acme")
    key = make_key(acme.id, scope)
    expected = ALLOWED[(method, path)][scope_index]
    before = state_of(db, acme.id)

    response = call(client, method, path, body, key, acme)

    assert response.status_code == expected, response.text
    if expected == 403:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] in {"insufficient_scope", "operator_only"}
        assert state_of(db, acme.id) == before


def test_an_org_read_key_cannot_create_projects_members_or_keys(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    tenant: Callable[[str], Tenant],
) -> None:
    acme = tenant("Acme")
    reader = make_key(acme.id, "org:read")
    before = state_of(db, acme.id)
    for path, body in [
        ("projects", {"name": "Mine"}),
        ("members", {"email": "me@acme.example", "role": "owner"}),
        ("api-keys", {"name": "upgrade", "scopes": ["org:admin"]}),
    ]:
        response = client.post(f"/v1/organizations/{acme.id}/{path}", json=body, headers=reader)
        assert response.status_code == 403, path
        assert "org:admin" in response.json()["detail"]  # names the scope that is needed
    assert state_of(db, acme.id) == before


# --- the hot path: endpoints that name the organization in the body or reach it through a hold ----

HOT_PATH: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/usage", {"id": "intrusion-1", "operation": "inference",
                           "quantities": {"input_tokens": "1000"}}),
    ("POST", "/v1/authorize", {"operation": "training", "credits": "1"}),
    ("POST", "/v1/holds", {"operation": "training", "credits": "1"}),
]  # fmt: skip


def anonymized_as(response: Any, secret: str, placeholder: str) -> tuple[int, dict[str, Any]]:
    body = response.json()
    body["detail"] = body["detail"].replace(secret, placeholder)
    return response.status_code, body


@pytest.mark.parametrize("scope", ["org:ingest", "org:admin"])
@pytest.mark.parametrize(
    ("method", "path", "body"), HOT_PATH, ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize("by", ["id", "external id"])
def test_an_ingest_key_cannot_meter_gate_or_hold_for_another_organization(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    tenant: Callable[[str], Tenant],
    scope: str,
    method: str,
    path: str,
    body: dict[str, Any],
    by: str,
) -> None:
    acme, globex = tenant("Acme"), tenant("Globex")
    key = make_key(acme.id, scope)
    target = globex.id if by == "id" else "globex-ext"
    before = metering.state_of(db, globex.id)

    response = client.request(method, path, json={**body, "organization": target}, headers=key)

    metering.assert_problem(response, 404, "unknown_organization")
    nowhere = new_id("org")
    missing = client.request(method, path, json={**body, "organization": nowhere}, headers=key)
    assert anonymized_as(response, target, "{org}") == anonymized_as(missing, nowhere, "{org}")
    assert "Globex" not in response.text
    assert metering.state_of(db, globex.id) == before
    # its own organization works with the same key
    own = client.request(method, path, json={**body, "organization": acme.id}, headers=key)
    assert own.status_code in {200, 201}, own.text


def test_a_batch_from_an_ingest_key_rejects_another_organizations_events_only(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    tenant: Callable[[str], Tenant],
) -> None:
    acme, globex = tenant("Acme"), tenant("Globex")
    key = make_key(acme.id, "org:ingest")
    before = metering.state_of(db, globex.id)
    events = [
        metering.event("mine", acme.id),
        metering.event("theirs", globex.id),
        metering.event("theirs-too", "globex-ext"),
        # an id Globex already used: still nothing to see
        metering.event("inference-1", globex.id, project="Research"),
    ]
    results = client.post("/v1/usage/batch", json={"events": events}, headers=key).json()["results"]
    assert [r["status"] for r in results] == ["applied", "rejected", "rejected", "rejected"]
    assert {r["error"]["code"] for r in results[1:]} == {"unknown_organization"}
    assert "credits" not in results[3]
    assert metering.state_of(db, globex.id) == before


HOLD_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/holds/{hold}", None),
    ("POST", "/v1/holds/{hold}/extend", {"credits": "1", "ttl_seconds": 60}),
    ("POST", "/v1/holds/{hold}/settle", {"id": "stolen-1", "quantities": {"cpu_seconds": "1"}}),
    ("DELETE", "/v1/holds/{hold}", None),
]


@pytest.mark.parametrize("scope", ["org:ingest", "org:admin"])
@pytest.mark.parametrize(
    ("method", "path", "body"), HOLD_CALLS, ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_key_cannot_see_or_touch_another_organizations_hold(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    tenant: Callable[[str], Tenant],
    scope: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    acme, globex = tenant("Acme"), tenant("Globex")
    hold = client.post(
        "/v1/holds",
        json={"organization": globex.id, "operation": "training", "credits": "5"},
        headers=globex.key,
    ).json()
    key = make_key(acme.id, scope)
    before = metering.state_of(db, globex.id)

    response = client.request(method, path.format(hold=hold["id"]), json=body, headers=key)

    metering.assert_problem(response, 404, "not_found")
    nowhere = new_id("hold")
    missing = client.request(method, path.format(hold=nowhere), json=body, headers=key)
    assert anonymized_as(response, hold["id"], "{hold}") == anonymized_as(
        missing, nowhere, "{hold}"
    )
    assert globex.id not in response.text
    assert metering.state_of(db, globex.id) == before
    # Globex's own key still sees it as it was
    assert client.get(f"/v1/holds/{hold['id']}", headers=globex.key).json() == hold


def test_a_usage_event_cannot_settle_another_organizations_hold(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    tenant: Callable[[str], Tenant],
) -> None:
    acme, globex = tenant("Acme"), tenant("Globex")
    hold = client.post(
        "/v1/holds",
        json={"organization": globex.id, "operation": "training", "credits": "5"},
        headers=globex.key,
    ).json()
    key = make_key(acme.id, "org:ingest")
    before = metering.state_of(db, globex.id)
    response = client.post(
        "/v1/usage",
        json=metering.event("run-1", acme.id, "training", hold=hold["id"]),
        headers=key,
    )
    metering.assert_problem(response, 422, "unknown_hold")
    assert metering.state_of(db, globex.id) == before


@pytest.mark.parametrize(
    ("method", "path", "body"), HOT_PATH, ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_read_only_key_cannot_use_the_hot_path(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    tenant: Callable[[str], Tenant],
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    acme = tenant("Acme")
    reader = make_key(acme.id, "org:read")
    before = metering.state_of(db, acme.id)
    response = client.request(method, path, json={**body, "organization": acme.id}, headers=reader)
    metering.assert_problem(response, 403, "insufficient_scope")
    assert metering.state_of(db, acme.id) == before


# --- operator-only actions: every way credits could rise or money owed could fall ----------------

#: Every endpoint through which a key could raise an organization's credits or lower what it owes
#: without paying for it (docs/api.md, "Operator-only actions"): (method, path, body, the operator's
#: own status on the billed tenant below, which shows the action is real). {invoice} is the tenant's
#: open invoice of this month, {payment} its succeeded card charge, {clock} a test clock. An
#: organization key of any scope gets 403 for each, and nothing anywhere changes.
OPERATOR_ONLY: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("POST", "/v1/organizations/{org}/grants", GRANT, 201),
    ("POST", "/v1/organizations/{org}/ledger/{txn}/reverse", {"reason": "refund me"}, 201),
    ("POST", "/v1/organizations/{org}/usage/{event}/reverse", {"reason": "refund me"}, 200),
    ("PUT", "/v1/organizations/{org}/subscription",
     {"plan": "enterprise", "allocation_credits": "1000000000000"}, 200),
    ("PUT", "/v1/organizations/{org}/subscription",
     {"plan": "enterprise", "allocation_credits": "1000", "rollover_cycles": "never"}, 200),
    ("POST", "/v1/organizations/{org}/purchases", {"credits": "1000000", "billing": "on_account"},
     201),
    ("POST", "/v1/invoices/{invoice}/void", {"reason": "forgive me"}, 200),
    ("POST", "/v1/payments/{payment}/refunds", {"reason": "give it back"}, 201),
    ("POST", "/v1/test-clocks", {"frozen_time": "2030-01-01T00:00:00Z"}, 201),
    ("POST", "/v1/test-clocks/{clock}/advance", {"to": "2031-01-01T00:00:00Z"}, 200),
    ("POST", "/v1/organizations/{org}/test-clock", {"test_clock": "{clock}"}, 409),  # live org
    ("DELETE", "/v1/organizations/{org}/test-clock", None, 404),  # on no clock
]  # fmt: skip


@dataclass
class Billed:
    tenant: Tenant
    invoice: str
    payment: str
    clock: str


@pytest.fixture
def billed(
    client: TestClient, db: Database, operator: Headers, tenant: Callable[[str], Tenant]
) -> Billed:
    """The tenant on an Enterprise contract (1,000 credits a month, packages on account) given by
    the operator this month, with a card, a package bought with it (a succeeded charge), the
    month closed (an open invoice, not charged yet) and a test clock."""
    from creditmeter.billing import cycle, domain
    from creditmeter.billing.plans import load_catalog

    acme = tenant("Acme")
    catalog = load_catalog()
    org_url = f"/v1/organizations/{acme.id}"
    contract = {"plan": "enterprise", "allocation_credits": "1000"}
    assert client.put(f"{org_url}/subscription", json=contract, headers=operator).is_success
    card = {"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2060}}
    added = client.post(
        f"{org_url}/payment-methods", json={**card, "default": True}, headers=operator
    )
    assert added.status_code == 201, added.text
    bought = client.post(
        f"{org_url}/purchases",
        json={"package": "standard"},
        headers={**operator, "Idempotency-Key": "bought-1"},
    )
    assert bought.status_code == 201, bought.text
    boundary = domain.period_of(clock.now(), catalog.zone).end
    [closed] = cycle.run_due(
        db, boundary, acme.id, catalog=catalog, charge=lambda db, invoice_id, now: None
    )
    assert closed.ok, closed
    assert closed.invoice_number, closed
    with db.read() as s:
        from creditmeter.billing.models import Invoice

        invoice = s.scalars(select(Invoice.id).where(Invoice.organization_id == acme.id)).one()
    made = client.post(
        "/v1/test-clocks", json={"frozen_time": "2029-01-01T00:00:00Z"}, headers=operator
    )
    assert made.status_code == 201, made.text
    return Billed(acme, invoice, bought.json()["payment_id"], made.json()["id"])


def operator_only_call(
    client: TestClient, billed: Billed, method: str, path: str, body: Any, headers: Headers
) -> Any:
    target = billed.tenant
    fill = {
        "org": target.id,
        "txn": target.txn,
        "event": target.event,
        "invoice": billed.invoice,
        "payment": billed.payment,
        "clock": billed.clock,
    }
    if body is not None:
        body = {k: v.format(**fill) if isinstance(v, str) else v for k, v in body.items()}
    extra = {"Idempotency-Key": "operator-only-1"} if method in {"POST", "PUT"} else {}
    return client.request(method, path.format(**fill), json=body, headers={**headers, **extra})


@pytest.mark.parametrize("scope", ORG_SCOPES)
@pytest.mark.parametrize(
    ("method", "path", "body", "operator_status"),
    OPERATOR_ONLY,
    ids=[f"{m} {p} {sorted((b or {}).items())!s:.60}" for m, p, b, _ in OPERATOR_ONLY],
)
def test_no_organization_key_can_raise_its_credits_or_lower_what_it_owes(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    billed: Billed,
    scope: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    operator_status: int,
) -> None:
    from tests.api.test_bad_input import everything

    acme = billed.tenant
    own = make_key(acme.id, scope)
    balance_url = f"/v1/organizations/{acme.id}/balance"
    ledger_url = f"/v1/organizations/{acme.id}/ledger?limit=500"
    balance = client.get(balance_url, headers=acme.key).json()
    journal = client.get(ledger_url, headers=acme.key).json()
    before = everything(db)

    call_twice = [operator_only_call(client, billed, method, path, body, own) for _ in range(2)]

    for response in call_twice:
        assert response.status_code == 403, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        code = response.json()["code"]
        if scope == "org:admin":
            expected = "custom_terms_operator_only" if method == "PUT" else "operator_only"
            assert code == expected, response.text
        else:
            assert code in {"insufficient_scope", "operator_only"}, response.text
    assert everything(db) == before
    assert client.get(balance_url, headers=acme.key).json() == balance
    assert client.get(ledger_url, headers=acme.key).json() == journal


@pytest.mark.parametrize(
    ("method", "path", "body", "operator_status"),
    OPERATOR_ONLY,
    ids=[f"{m} {p} {sorted((b or {}).items())!s:.60}" for m, p, b, _ in OPERATOR_ONLY],
)
def test_each_operator_only_action_is_real_for_an_operator(
    client: TestClient,
    db: Database,
    operator: Headers,
    billed: Billed,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    operator_status: int,
) -> None:
    """The control: the same request with an operator key does what it says (or is refused for a
    reason of its own), so the 403s above are what stands between a customer and the money."""
    response = operator_only_call(client, billed, method, path, body, operator)
    assert response.status_code == operator_status, response.text
    with db.read() as s:
        assert verify(s) == []
