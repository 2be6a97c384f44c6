"""Webhook endpoints over the API: an organization's admin creates, lists, changes, rotates and
deletes its endpoints; the secret is shown on creation and rotation only; an operator manages
operator-wide endpoints and reaches every organization's; no organization ever sees another's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.notify.models import WebhookEndpoint
from tests.api.test_bad_input import assert_problem, field_errors
from tests.notify_webhooks.conftest import Headers, Receiver

PUBLIC = "http://93.184.215.14/hooks"  # an address literal: no DNS needed, and public


def endpoints(org: str) -> str:
    return f"/v1/organizations/{org}/webhook-endpoints"


def assert_no_secret(response: Any) -> None:
    """No secret in an answer: no ``whsec_`` value, no ``secret`` field."""
    assert "whsec_" not in response.text
    body = response.json()
    for item in body.get("data", [body]):
        assert "secret" not in item, item


def create(client: TestClient, org: str, headers: Headers, **body: Any) -> dict[str, Any]:
    response = client.post(endpoints(org), json={"url": PUBLIC, **body}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_an_admin_creates_an_endpoint_and_sees_its_secret_once(
    client: TestClient, org_admin: Callable[..., Any], db: Database
) -> None:
    org, admin = org_admin()
    created = create(
        client, org, admin, description="billing", event_types=["invoice.*", "alert.triggered"]
    )
    assert created["id"].startswith("we_")
    assert created["secret"].startswith("whsec_")
    assert created["organization_id"] == org
    assert created["environment"] == "live"
    assert created["status"] == "enabled"
    assert created["event_types"] == ["invoice.*", "alert.triggered"]
    assert created["failing_since"] is None

    one = client.get(f"{endpoints(org)}/{created['id']}", headers=admin)
    listed = client.get(endpoints(org), headers=admin)
    assert one.status_code == 200
    assert listed.status_code == 200
    for answer in (one, listed):
        assert_no_secret(answer)
    assert listed.json()["data"] == [one.json()]
    assert one.json() == {k: v for k, v in created.items() if k != "secret"}
    with db.read() as s:  # stored, to sign with
        assert s.scalar(select(WebhookEndpoint.secret)) == created["secret"]


def test_an_idempotency_key_creates_one_endpoint(
    client: TestClient, org_admin: Callable[..., Any]
) -> None:
    org, admin = org_admin()
    keyed = {**admin, "Idempotency-Key": "hook-1"}
    first = client.post(endpoints(org), json={"url": PUBLIC}, headers=keyed)
    again = client.post(endpoints(org), json={"url": PUBLIC}, headers=keyed)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = client.post(endpoints(org), json={"url": PUBLIC + "/2"}, headers=keyed)
    assert_problem(other, 409, "idempotency_key_reused")
    assert len(client.get(endpoints(org), headers=admin).json()["data"]) == 1


def test_patch_changes_fields_and_re_enabling_forgets_the_failures(
    client: TestClient, org_admin: Callable[..., Any], db: Database
) -> None:
    org, admin = org_admin()
    endpoint = create(client, org, admin)
    path = f"{endpoints(org)}/{endpoint['id']}"
    changed = client.patch(
        path, json={"description": "new", "event_types": ["credits.*"]}, headers=admin
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["description"] == "new"
    assert changed.json()["event_types"] == ["credits.*"]
    assert changed.json()["url"] == PUBLIC

    disabled = client.patch(path, json={"status": "disabled"}, headers=admin).json()
    assert disabled["status"] == "disabled"
    assert disabled["disabled_reason"] == "disabled through the API"
    with db.write() as s:  # as if it had been failing
        row = s.get(WebhookEndpoint, endpoint["id"])
        assert row is not None
        row.failing_since = clock.now() - timedelta(days=6)
    enabled = client.patch(path, json={"status": "enabled"}, headers=admin).json()
    assert enabled["status"] == "enabled"
    assert enabled["failing_since"] is None
    assert enabled["disabled_reason"] is None
    assert enabled["disabled_at"] is None


def test_rotating_the_secret_shows_the_new_one_and_keeps_the_old_for_the_overlap(
    client: TestClient, org_admin: Callable[..., Any], db: Database
) -> None:
    org, admin = org_admin()
    endpoint = create(client, org, admin)
    path = f"{endpoints(org)}/{endpoint['id']}/rotate-secret"
    rotated = client.post(path, json={"overlap_hours": 2}, headers=admin)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] not in {endpoint["secret"], None}
    expires = rotated.json()["previous_secret_expires_at"]
    assert expires is not None
    with db.read() as s:
        row = s.get(WebhookEndpoint, endpoint["id"])
        assert row is not None
        assert row.secret == rotated.json()["secret"]
        assert row.previous_secret == endpoint["secret"]
        assert row.previous_secret_until is not None
        assert timedelta(hours=1, minutes=59) < row.previous_secret_until - clock.now()
    shown = client.get(f"{endpoints(org)}/{endpoint['id']}", headers=admin)
    assert 'secret"' not in shown.text.replace("previous_secret_expires_at", "")
    assert rotated.json()["secret"] not in shown.text

    # no body: 24 hours; 0: the old secret stops at once
    assert client.post(path, headers=admin).status_code == 200
    none = client.post(path, json={"overlap_hours": 0}, headers=admin).json()
    assert none["previous_secret_expires_at"] is None
    for hours in (-1, 169, "a day"):
        assert_problem(
            client.post(path, json={"overlap_hours": hours}, headers=admin),
            422,
            "validation_failed",
        )


def test_a_rotation_with_an_idempotency_key_rotates_once(
    client: TestClient, org_admin: Callable[..., Any], db: Database
) -> None:
    org, admin = org_admin()
    endpoint = create(client, org, admin)
    path = f"{endpoints(org)}/{endpoint['id']}/rotate-secret"
    keyed = {**admin, "Idempotency-Key": "rotate-1"}
    first, again = (client.post(path, json={}, headers=keyed) for _ in range(2))
    assert first.json() == again.json()
    with db.read() as s:
        row = s.get(WebhookEndpoint, endpoint["id"])
        assert row is not None
        assert row.previous_secret == endpoint["secret"]  # not rotated twice


def test_delete_removes_the_endpoint(client: TestClient, org_admin: Callable[..., Any]) -> None:
    org, admin = org_admin()
    endpoint = create(client, org, admin)
    path = f"{endpoints(org)}/{endpoint['id']}"
    deleted = client.delete(path, headers=admin)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["id"] == endpoint["id"]
    assert 'secret"' not in deleted.text.replace("previous_secret_expires_at", "")
    assert_problem(client.get(path, headers=admin), 404, "webhook_endpoint_not_found")
    assert_problem(client.delete(path, headers=admin), 404, "webhook_endpoint_not_found")
    assert client.get(endpoints(org), headers=admin).json()["data"] == []


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"url": PUBLIC, "event_types": ["invoice.payd"]}, "unknown_event_type", "event_types.0"),
        ({"url": PUBLIC, "event_types": ["nothing.*"]}, "unknown_event_type", "event_types.0"),
        ({"url": PUBLIC, "event_types": ["*"]}, "unknown_event_type", "event_types.0"),
        ({"url": "ftp://93.184.215.14/x"}, "webhook_url_invalid", "url"),
        ({"url": "not a url"}, "webhook_url_invalid", "url"),
        ({"url": "https://user:pw@93.184.215.14/"}, "webhook_url_invalid", "url"),
        ({"url": "https://no-such-host.invalid/hook"}, "webhook_url_unresolvable", "url"),
        ({"url": ""}, "validation_failed", "url"),
        ({"url": "https://" + "a" * 2000 + ".example"}, "validation_failed", "url"),
        ({"url": PUBLIC, "event_types": "invoice.paid"}, "validation_failed", "event_types"),
        ({"url": PUBLIC, "description": "x" * 501}, "validation_failed", "description"),
        ({"url": PUBLIC, "colour": "blue"}, "validation_failed", "colour"),
        ({"url": PUBLIC + "\u0000"}, "validation_failed", "url"),
        ({}, "validation_failed", "url"),
    ],
)
def test_bad_endpoints_are_4xx_naming_the_field(
    client: TestClient,
    org_admin: Callable[..., Any],
    body: dict[str, Any],
    code: str,
    field: str,
) -> None:
    org, admin = org_admin()
    answer = assert_problem(client.post(endpoints(org), json=body, headers=admin), 422, code)
    assert field in field_errors(answer)
    assert client.get(endpoints(org), headers=admin).json()["data"] == []


PRIVATE = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.0.0.7/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]/hook",
    "http://[::ffff:10.0.0.1]/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://100.64.0.1/hook",
]


def test_private_addresses_are_refused_unless_the_operator_allows_them(
    strict_client: TestClient, client: TestClient, org_admin: Callable[..., Any]
) -> None:
    org, admin = org_admin()
    created = create(client, org, admin)  # an endpoint to PATCH
    for url in PRIVATE:
        refused = strict_client.post(endpoints(org), json={"url": url}, headers=admin)
        body = assert_problem(refused, 422, "webhook_url_not_allowed")
        assert "CREDITMETER_WEBHOOK_ALLOW_PRIVATE" in body["detail"], url
        assert field_errors(body)["url"]
        patch = strict_client.patch(
            f"{endpoints(org)}/{created['id']}", json={"url": url}, headers=admin
        )
        assert_problem(patch, 422, "webhook_url_not_allowed")
        # allowed with webhook_allow_private (one-box setups and tests)
        assert client.post(endpoints(org), json={"url": url}, headers=admin).status_code == 201
    assert (
        strict_client.get(f"{endpoints(org)}/{created['id']}", headers=admin).json()["url"]
        == PUBLIC
    )


def test_an_organization_key_never_reaches_another_organizations_endpoints(
    client: TestClient,
    org_admin: Callable[..., Any],
    operator: Headers,
    receiver: Receiver,
) -> None:
    acme, acme_key = org_admin("Acme")
    globex, globex_key = org_admin("Globex")
    theirs = create(client, globex, globex_key)
    operator_wide = client.post("/v1/webhook-endpoints", json={"url": PUBLIC}, headers=operator)
    assert operator_wide.status_code == 201

    for endpoint_id in (theirs["id"], operator_wide.json()["id"], "we_nothing"):
        own_path = f"{endpoints(acme)}/{endpoint_id}"
        for method, path, body in [
            ("GET", own_path, None),
            ("PATCH", own_path, {"status": "disabled"}),
            ("DELETE", own_path, None),
            ("POST", own_path + "/rotate-secret", {}),
            ("POST", own_path + "/test", {}),
            ("GET", own_path + "/deliveries", None),
            ("POST", own_path + "/deliveries/wd_x/redeliver", None),
        ]:
            answer = client.request(method, path, json=body, headers=acme_key)
            assert_problem(answer, 404, "webhook_endpoint_not_found")
    # through the other organization's path: the organization itself is not found
    for method in ("GET", "POST"):
        answer = client.request(method, endpoints(globex), json={"url": PUBLIC}, headers=acme_key)
        assert_problem(answer, 404, "not_found")
    # the operator paths are the operator's
    for method, path in [
        ("GET", "/v1/webhook-endpoints"),
        ("POST", "/v1/webhook-endpoints"),
        ("GET", f"/v1/webhook-endpoints/{theirs['id']}"),
        ("GET", "/v1/notification-events"),
    ]:
        answer = client.request(method, path, json={"url": PUBLIC}, headers=acme_key)
        assert_problem(answer, 403, "operator_only")
    assert client.get(endpoints(acme), headers=acme_key).json()["data"] == []
    assert client.get(endpoints(globex), headers=globex_key).json()["data"][0]["id"] == theirs["id"]


def test_read_and_ingest_keys_cannot_manage_endpoints(
    client: TestClient, org_admin: Callable[..., Any], make_key: Callable[..., Headers]
) -> None:
    org, _ = org_admin()
    for scope in ("org:read", "org:ingest"):
        key = make_key(org, scope)
        assert_problem(client.get(endpoints(org), headers=key), 403, "insufficient_scope")
        answer = client.post(endpoints(org), json={"url": PUBLIC}, headers=key)
        assert_problem(answer, 403, "insufficient_scope")


def test_an_endpoint_lives_in_the_keys_environment(
    client: TestClient, org_admin: Callable[..., Any], make_key: Callable[..., Headers]
) -> None:
    org, live = org_admin()
    test = make_key(org, "org:admin", environment="test")
    in_test = create(client, org, test)
    assert in_test["environment"] == "test"
    assert client.get(endpoints(org), headers=live).json()["data"] == []
    assert_problem(
        client.get(f"{endpoints(org)}/{in_test['id']}", headers=live),
        404,
        "webhook_endpoint_not_found",
    )
    assert_problem(
        client.get(endpoints(org) + "?environment=test", headers=live), 403, "environment_mismatch"
    )


def test_the_operator_manages_operator_wide_and_every_organizations_endpoints(
    client: TestClient, org_admin: Callable[..., Any], operator: Headers
) -> None:
    acme, acme_key = org_admin("Acme")
    globex, globex_key = org_admin("Globex")
    a = create(client, acme, acme_key)
    g = create(client, globex, globex_key)
    wide = client.post(
        "/v1/webhook-endpoints", json={"url": PUBLIC, "event_types": ["alert.*"]}, headers=operator
    )
    assert wide.status_code == 201, wide.text
    assert wide.json()["organization_id"] is None
    assert wide.json()["secret"].startswith("whsec_")

    listed = client.get("/v1/webhook-endpoints", headers=operator).json()["data"]
    assert [e["id"] for e in listed] == [a["id"], g["id"], wide.json()["id"]]
    only_acme = client.get(f"/v1/webhook-endpoints?organization_id={acme}", headers=operator)
    assert [e["id"] for e in only_acme.json()["data"]] == [a["id"]]
    assert client.get(f"/v1/webhook-endpoints/{g['id']}", headers=operator).status_code == 200
    # through an organization's path, the operator sees that organization's only
    via_org = client.get(endpoints(acme), headers=operator).json()["data"]
    assert [e["id"] for e in via_org] == [a["id"]]
    assert_problem(
        client.get(f"{endpoints(acme)}/{wide.json()['id']}", headers=operator),
        404,
        "webhook_endpoint_not_found",
    )
    patched = client.patch(
        f"/v1/webhook-endpoints/{g['id']}", json={"status": "disabled"}, headers=operator
    )
    assert patched.json()["status"] == "disabled"
    assert (
        client.delete(f"/v1/webhook-endpoints/{wide.json()['id']}", headers=operator).status_code
        == 200
    )
    # the operator's test-environment endpoints are apart
    assert (
        client.get("/v1/webhook-endpoints?environment=test", headers=operator).json()["data"] == []
    )


def test_lists_page_with_a_cursor(client: TestClient, org_admin: Callable[..., Any]) -> None:
    org, admin = org_admin()
    made = [create(client, org, admin)["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = client.get(endpoints(org) + query, headers=admin).json()
        seen += [e["id"] for e in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == made
    assert_problem(
        client.get(endpoints(org) + "?cursor=bogus!", headers=admin), 422, "invalid_cursor"
    )
    assert_problem(client.get(endpoints(org) + "?limit=0", headers=admin), 422)


def test_text_that_is_not_unicode_is_refused_in_every_field(
    client: TestClient, org_admin: Callable[..., Any], db: Database
) -> None:
    import json

    from tests.api.test_bad_input import everything

    org, admin = org_admin()
    endpoint = create(client, org, admin)
    before = everything(db)
    raw_headers = {**admin, "Content-Type": "application/json"}
    for lone in ("\udc00", "\u0000"):
        for method, path, body in [
            ("POST", endpoints(org), {"url": PUBLIC + lone}),
            ("POST", endpoints(org), {"url": PUBLIC, "description": lone}),
            ("POST", endpoints(org), {"url": PUBLIC, "event_types": [lone]}),
            ("PATCH", f"{endpoints(org)}/{endpoint['id']}", {"description": lone}),
            ("POST", f"{endpoints(org)}/{endpoint['id']}/test", {"message": lone}),
        ]:
            answer = client.request(
                method, path, content=json.dumps(body).encode("ascii"), headers=raw_headers
            )
            assert_problem(answer, 422, "validation_failed")
    assert everything(db) == before
