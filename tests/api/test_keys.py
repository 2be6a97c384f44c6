"""API keys: created with a secret shown once, stored as a hash, prefixed by environment, scoped,
revocable, with their last use recorded; and authentication itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.kit.db import Database
from creditmeter.orgs.models import ApiKey

Headers = dict[str, str]
ORGS = "/v1/organizations"
KEY_FIELDS = {
    "id",
    "name",
    "prefix",
    "scopes",
    "environment",
    "created_at",
    "revoked_at",
    "last_used_at",
}


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    return body


def bearer(secret: str) -> Headers:
    return {"Authorization": f"Bearer {secret}"}


def create_key(
    client: TestClient, org: str, headers: Headers, *scopes: str, environment: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "engine", "scopes": list(scopes or ("org:admin",))}
    if environment is not None:
        body["environment"] = environment
    response = client.post(f"{ORGS}/{org}/api-keys", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def listed_keys(client: TestClient, org: str, headers: Headers) -> list[dict[str, Any]]:
    response = client.get(f"{ORGS}/{org}/api-keys", headers=headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


# --- creation ------------------------------------------------------------------------------------


def test_a_live_key_is_shown_once_with_its_cm_live_prefix(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    created = create_key(client, org, operator, "org:ingest")

    assert created.keys() == KEY_FIELDS | {"key"}
    assert created["id"].startswith("key_")
    assert created["key"].startswith("cm_live_")
    assert len(created["key"]) > 40
    assert created["prefix"] == created["key"][:12]
    assert created["scopes"] == ["org:ingest"]
    assert created["environment"] == "live"
    assert created["revoked_at"] is None
    assert created["last_used_at"] is None


def test_a_test_key_has_the_cm_test_prefix(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    created = create_key(client, make_org(), operator, "org:read", environment="test")
    assert created["key"].startswith("cm_test_")
    assert created["environment"] == "test"


def test_every_key_is_different(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    secrets = {create_key(client, org, operator)["key"] for _ in range(3)}
    assert len(secrets) == 3


def test_a_key_may_carry_several_scopes(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    created = create_key(client, make_org(), operator, "org:read", "org:ingest", "org:read")
    assert created["scopes"] == ["org:ingest", "org:read"]


def test_the_new_key_works_at_once(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    created = create_key(client, org, operator, "org:read")
    response = client.get(f"{ORGS}/{org}/balance", headers=bearer(created["key"]))
    assert response.status_code == 200


def test_an_org_admin_creates_keys_for_its_own_organization(
    client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    org = make_org()
    created = create_key(client, org, make_key(org, "org:admin"), "org:ingest")
    assert created["key"].startswith("cm_live_")


def test_a_test_environment_key_cannot_mint_a_live_key(
    client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    org = make_org()
    sandbox_admin = make_key(org, "org:admin", environment="test")
    response = client.post(
        f"{ORGS}/{org}/api-keys",
        json={"name": "escape", "scopes": ["org:admin"], "environment": "live"},
        headers=sandbox_admin,
    )
    assert_problem(response, 403, "environment_mismatch")
    assert create_key(client, org, sandbox_admin, environment="test")["key"].startswith("cm_test_")


def test_the_operator_scope_is_refused_for_an_organization_key(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    for scopes in (["operator"], ["org:admin", "operator"]):
        response = client.post(
            f"{ORGS}/{org}/api-keys", json={"name": "root", "scopes": scopes}, headers=operator
        )
        body = assert_problem(response, 422, "invalid_scopes")
        assert "org:admin" in body["detail"]  # says what to ask for instead
    assert listed_keys(client, org, operator) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "k", "scopes": []}, "scopes"),
        ({"name": "k", "scopes": ["admin"]}, "scopes.0"),
        ({"name": "k", "scopes": "org:admin"}, "scopes"),
        ({"name": "k"}, "scopes"),
        ({"scopes": ["org:read"]}, "name"),
        ({"name": "", "scopes": ["org:read"]}, "name"),
        ({"name": "k", "scopes": ["org:read"], "environment": "prod"}, "environment"),
        ({"name": "k", "scopes": ["org:read"], "expires": "never"}, "expires"),
    ],
)
def test_a_bad_key_request_is_422_naming_the_field(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    body: dict[str, Any],
    field: str,
) -> None:
    org = make_org()
    response = client.post(f"{ORGS}/{org}/api-keys", json=body, headers=operator)
    problem = assert_problem(response, 422, "validation_failed")
    assert field in {e["field"] for e in problem["errors"]}, problem
    assert listed_keys(client, org, operator) == []


# --- the secret is never shown again -------------------------------------------------------------


def test_the_list_never_shows_the_secret(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    created = create_key(client, org, operator, "org:admin")
    admin = bearer(created["key"])

    for headers in (operator, admin):
        response = client.get(f"{ORGS}/{org}/api-keys", headers=headers)
        assert created["key"] not in response.text
        (item,) = response.json()["data"]
        assert item.keys() == KEY_FIELDS
        assert item["id"] == created["id"]
        assert item["prefix"] == created["prefix"]


def test_the_secret_is_stored_only_as_a_hash(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    created = create_key(client, make_org(), operator)
    with db.read() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.id == created["id"])).one()
    stored = " ".join(str(v) for v in vars(row).values())
    assert created["key"] not in stored
    assert len(row.key_hash) == 64


def test_keys_are_cursor_paginated(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    made = {create_key(client, org, operator)["id"] for _ in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get(f"{ORGS}/{org}/api-keys", params=params, headers=operator).json()
        seen += [k["id"] for k in body["data"]]
        if not body["has_more"]:
            break
        cursor = body["next_cursor"]
    assert sorted(seen) == sorted(made)
    assert len(seen) == len(made)


# --- revocation and last use ---------------------------------------------------------------------


def test_a_revoked_key_gets_401_from_then_on(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    created = create_key(client, org, operator, "org:read")
    key = bearer(created["key"])
    assert client.get(f"{ORGS}/{org}/balance", headers=key).status_code == 200

    response = client.delete(f"{ORGS}/{org}/api-keys/{created['id']}", headers=operator)

    assert response.status_code == 200, response.text
    revoked = response.json()
    assert revoked["id"] == created["id"]
    assert revoked["revoked_at"] is not None
    assert "key" not in revoked
    assert_problem(client.get(f"{ORGS}/{org}/balance", headers=key), 401, "invalid_api_key")
    assert_problem(client.get(ORGS, headers=key), 401, "invalid_api_key")
    (listed,) = listed_keys(client, org, operator)
    assert listed["revoked_at"] == revoked["revoked_at"]


def test_revoking_twice_keeps_the_first_revocation(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    created = create_key(client, org, operator)
    url = f"{ORGS}/{org}/api-keys/{created['id']}"
    first = client.delete(url, headers=operator).json()
    second = client.delete(url, headers=operator)
    assert second.status_code == 200
    assert second.json()["revoked_at"] == first["revoked_at"]


def test_an_org_admin_revokes_a_key_of_its_own_organization(
    client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    org = make_org()
    admin = make_key(org, "org:admin")
    engine = create_key(client, org, admin, "org:ingest")
    assert client.delete(f"{ORGS}/{org}/api-keys/{engine['id']}", headers=admin).status_code == 200
    assert_problem(client.get(f"{ORGS}/{org}/balance", headers=bearer(engine["key"])), 401)


def test_a_key_can_revoke_itself(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    created = create_key(client, org, operator, "org:admin")
    me = bearer(created["key"])
    assert client.delete(f"{ORGS}/{org}/api-keys/{created['id']}", headers=me).status_code == 200
    assert_problem(client.get(f"{ORGS}/{org}/api-keys", headers=me), 401, "invalid_api_key")


def test_revoking_an_unknown_key_is_404(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    assert_problem(client.delete(f"{ORGS}/{org}/api-keys/key_NOPE", headers=operator), 404)


def test_the_operator_key_cannot_be_revoked_through_an_organization(
    client: TestClient, operator: Headers, make_org: Callable[..., str], db: Database
) -> None:
    org = make_org()
    with db.read() as session:
        operator_id = session.scalars(
            select(ApiKey.id).where(ApiKey.organization_id.is_(None))
        ).one()
    assert_problem(client.delete(f"{ORGS}/{org}/api-keys/{operator_id}", headers=operator), 404)
    assert client.get(ORGS, headers=operator).status_code == 200


def test_last_used_at_is_recorded(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    used = create_key(client, org, operator, "org:read")
    unused = create_key(client, org, operator, "org:read")

    assert client.get(f"{ORGS}/{org}/balance", headers=bearer(used["key"])).status_code == 200

    by_id = {k["id"]: k for k in listed_keys(client, org, operator)}
    assert by_id[used["id"]]["last_used_at"] is not None
    assert by_id[used["id"]]["last_used_at"] >= used["created_at"]
    assert by_id[unused["id"]]["last_used_at"] is None


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": ""}, "missing_api_key"),
        ({"Authorization": "Bearer"}, "missing_api_key"),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, "missing_api_key"),
        ({"Authorization": "cm_live_abc"}, "missing_api_key"),
        ({"Authorization": "Bearer cm_live_not-a-real-key"}, "invalid_api_key"),
        ({"Authorization": "Bearer " + "x" * 5000}, "invalid_api_key"),
    ],
)
def test_requests_without_a_valid_key_are_401(
    client: TestClient, make_org: Callable[..., str], headers: Headers, code: str
) -> None:
    org = make_org()
    for method, url in [
        ("GET", ORGS),
        ("GET", f"{ORGS}/{org}/balance"),
        ("POST", f"{ORGS}/{org}/projects"),
    ]:
        response = client.request(method, url, headers=headers, json={"name": "x"})
        body = assert_problem(response, 401, code)
        assert "Bearer" in body["detail"]  # says how to authenticate
