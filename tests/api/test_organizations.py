"""Organizations, projects and members through the v1 API, and the service's own endpoints
(health, readiness, OpenAPI, docs)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from creditmeter.api.app import create_app
from creditmeter.config import Settings
from creditmeter.kit.db import Database

Headers = dict[str, str]
ORGS = "/v1/organizations"


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    return body


def is_utc_rfc3339(value: str) -> bool:
    return value.endswith("Z") and datetime.fromisoformat(value).utcoffset() is not None


def walk(client: TestClient, url: str, headers: Headers, limit: int) -> list[list[dict[str, Any]]]:
    """Every page of a cursor-paginated list, following next_cursor to the end."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = client.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["data"])
        assert body["has_more"] == (body["next_cursor"] is not None)
        if not body["has_more"]:
            return pages
        cursor = body["next_cursor"]


# --- organizations -------------------------------------------------------------------------------


def test_an_operator_creates_an_organization(client: TestClient, operator: Headers) -> None:
    response = client.post(
        ORGS, json={"name": "Acme AI", "external_id": "crm-42"}, headers=operator
    )

    assert response.status_code == 201, response.text
    org = response.json()
    assert org["id"].startswith("org_")
    assert org["name"] == "Acme AI"
    assert org["external_id"] == "crm-42"
    assert org["status"] == "active"
    assert is_utc_rfc3339(org["created_at"])
    assert client.get(f"{ORGS}/{org['id']}", headers=operator).json() == org


def test_external_id_is_optional(client: TestClient, operator: Headers) -> None:
    response = client.post(ORGS, json={"name": "Solo"}, headers=operator)
    assert response.status_code == 201
    assert response.json()["external_id"] is None


def test_a_duplicate_external_id_is_a_conflict_and_creates_nothing(
    client: TestClient, operator: Headers
) -> None:
    assert (
        client.post(ORGS, json={"name": "Acme", "external_id": "x1"}, headers=operator).status_code
        == 201
    )

    response = client.post(ORGS, json={"name": "Acme again", "external_id": "x1"}, headers=operator)

    body = assert_problem(response, 409, "external_id_taken")
    assert "x1" in body["detail"]
    names = [o["name"] for o in client.get(ORGS, headers=operator).json()["data"]]
    assert names == ["Acme"]


def test_organizations_without_external_id_do_not_collide(
    client: TestClient, operator: Headers
) -> None:
    for _ in range(2):
        assert client.post(ORGS, json={"name": "Twin"}, headers=operator).status_code == 201
    assert len(client.get(ORGS, headers=operator).json()["data"]) == 2


def test_only_an_operator_creates_organizations(
    client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    admin = make_key(make_org(), "org:admin")
    assert_problem(client.post(ORGS, json={"name": "Mine"}, headers=admin), 403, "operator_only")


def test_the_organization_list_is_cursor_paginated(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    created = {make_org(f"Org {i}") for i in range(7)}

    pages = walk(client, ORGS, operator, limit=3)

    assert [len(page) for page in pages] == [3, 3, 1]
    ids = [org["id"] for page in pages for org in page]
    assert len(ids) == len(set(ids)) == 7
    assert set(ids) == created
    assert ids == sorted(ids)


def test_a_page_exactly_as_long_as_the_list_has_no_next_page(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    for i in range(3):
        make_org(f"Org {i}")
    body = client.get(ORGS, params={"limit": 3}, headers=operator).json()
    assert (len(body["data"]), body["has_more"], body["next_cursor"]) == (3, False, None)


def test_an_organization_key_lists_only_its_own_organization(
    client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    mine = make_org("Mine")
    make_org("Theirs")
    for scope in ("org:admin", "org:read"):
        body = client.get(ORGS, headers=make_key(mine, scope)).json()
        assert [o["id"] for o in body["data"]] == [mine]
        assert body["has_more"] is False


def test_an_unknown_organization_is_404(client: TestClient, operator: Headers) -> None:
    body = assert_problem(client.get(f"{ORGS}/org_NOPE", headers=operator), 404, "not_found")
    assert "org_NOPE" in body["detail"]


# --- projects ------------------------------------------------------------------------------------


def test_projects_are_created_and_listed(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    response = client.post(f"{ORGS}/{org}/projects", json={"name": "Research"}, headers=operator)

    assert response.status_code == 201, response.text
    project = response.json()
    assert project["id"].startswith("proj_")
    assert project["name"] == "Research"
    assert is_utc_rfc3339(project["created_at"])
    listed = client.get(f"{ORGS}/{org}/projects", headers=operator).json()
    assert listed == {"data": [project], "has_more": False, "next_cursor": None}


def test_an_org_admin_creates_projects_in_its_own_organization(
    client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    org = make_org()
    admin = make_key(org, "org:admin")
    response = client.post(f"{ORGS}/{org}/projects", json={"name": "Production"}, headers=admin)
    assert response.status_code == 201
    reader = make_key(org, "org:read")
    names = [p["name"] for p in client.get(f"{ORGS}/{org}/projects", headers=reader).json()["data"]]
    assert names == ["Production"]


def test_a_duplicate_project_name_is_a_conflict(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    url = f"{ORGS}/{org}/projects"
    assert client.post(url, json={"name": "Research"}, headers=operator).status_code == 201

    assert_problem(
        client.post(url, json={"name": "Research"}, headers=operator), 409, "project_exists"
    )
    assert len(client.get(url, headers=operator).json()["data"]) == 1


def test_two_organizations_may_have_projects_of_the_same_name(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    for org in (make_org("A"), make_org("B")):
        response = client.post(
            f"{ORGS}/{org}/projects", json={"name": "Research"}, headers=operator
        )
        assert response.status_code == 201


def test_projects_are_cursor_paginated(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    for i in range(5):
        client.post(f"{ORGS}/{org}/projects", json={"name": f"P{i}"}, headers=operator)

    pages = walk(client, f"{ORGS}/{org}/projects", operator, limit=2)

    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(p["name"] for page in pages for p in page) == [f"P{i}" for i in range(5)]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 201},
        {"name": 7},
        {"name": "P", "team": "x"},
    ],
)
def test_a_bad_project_is_422(
    client: TestClient, operator: Headers, make_org: Callable[..., str], body: dict[str, Any]
) -> None:
    org = make_org()
    problem = assert_problem(
        client.post(f"{ORGS}/{org}/projects", json=body, headers=operator), 422, "validation_failed"
    )
    assert problem["errors"]
    assert client.get(f"{ORGS}/{org}/projects", headers=operator).json()["data"] == []


# --- members -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "member", "viewer"])
def test_members_are_added_with_each_role(
    client: TestClient, operator: Headers, make_org: Callable[..., str], role: str
) -> None:
    org = make_org()
    response = client.post(
        f"{ORGS}/{org}/members", json={"email": "ada@acme.ai", "role": role}, headers=operator
    )

    assert response.status_code == 201, response.text
    member = response.json()
    assert member["id"].startswith("mem_")
    assert (member["email"], member["role"]) == ("ada@acme.ai", role)
    listed = client.get(f"{ORGS}/{org}/members", headers=operator).json()["data"]
    assert listed == [member]


def test_member_emails_are_stored_lower_case(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    response = client.post(
        f"{ORGS}/{org}/members",
        json={"email": "Ada.Lovelace@Acme.AI", "role": "owner"},
        headers=operator,
    )
    assert response.json()["email"] == "ada.lovelace@acme.ai"


@pytest.mark.parametrize("email", ["ADA@acme.ai", "ada@acme.ai", " ada@ACME.ai"])
def test_a_duplicate_member_is_a_conflict_whatever_its_case(
    client: TestClient, operator: Headers, make_org: Callable[..., str], email: str
) -> None:
    org = make_org()
    url = f"{ORGS}/{org}/members"
    assert (
        client.post(
            url, json={"email": "ada@acme.ai", "role": "owner"}, headers=operator
        ).status_code
        == 201
    )

    response = client.post(url, json={"email": email, "role": "viewer"}, headers=operator)

    assert_problem(response, 409, "member_exists")
    members = client.get(url, headers=operator).json()["data"]
    assert [(m["email"], m["role"]) for m in members] == [("ada@acme.ai", "owner")]


@pytest.mark.parametrize(
    ("body", "field", "hint"),
    [
        ({"email": "not-an-email", "role": "owner"}, "email", "email"),
        ({"email": "ada@", "role": "owner"}, "email", "email"),
        ({"email": "ada@acme.ai", "role": "superuser"}, "role", "viewer"),
        ({"email": "ada@acme.ai", "role": "Owner"}, "role", "owner"),
        ({"email": "ada@acme.ai"}, "role", "required"),
        ({"role": "owner"}, "email", "required"),
        ({"email": "ada@acme.ai", "role": "owner", "admin": True}, "admin", "unknown field"),
    ],
)
def test_a_bad_member_is_422_naming_the_field(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    body: dict[str, Any],
    field: str,
    hint: str,
) -> None:
    org = make_org()
    response = client.post(f"{ORGS}/{org}/members", json=body, headers=operator)

    problem = assert_problem(response, 422, "validation_failed")
    messages = {e["field"]: e["message"] for e in problem["errors"]}
    assert field in messages, problem
    assert hint in messages[field]
    assert client.get(f"{ORGS}/{org}/members", headers=operator).json()["data"] == []


def test_members_are_cursor_paginated(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org()
    for i in range(5):
        client.post(
            f"{ORGS}/{org}/members",
            json={"email": f"m{i}@acme.ai", "role": "member"},
            headers=operator,
        )
    pages = walk(client, f"{ORGS}/{org}/members", operator, limit=4)
    assert [len(p) for p in pages] == [4, 1]
    assert sorted(m["email"] for page in pages for m in page) == [f"m{i}@acme.ai" for i in range(5)]


# --- the service itself --------------------------------------------------------------------------


def test_healthz_answers_without_a_key(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_reports_the_database(client: TestClient, db: Database) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": db.dialect}


def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"  # nothing listens on port 1
    database = Database(url)
    app = create_app(Settings(database_url=url), db=database)
    with TestClient(app, raise_server_exceptions=False) as unready:
        body = assert_problem(unready.get("/readyz"), 503, "database_unavailable")
        assert unready.get("/healthz").status_code == 200
    assert "database" in body["detail"]
    database.dispose()


CONTRACT_PATHS = {
    "/v1/organizations": {"get", "post"},
    "/v1/organizations/{org_id}": {"get"},
    "/v1/organizations/{org_id}/projects": {"get", "post"},
    "/v1/organizations/{org_id}/members": {"get", "post"},
    "/v1/organizations/{org_id}/api-keys": {"get", "post"},
    "/v1/organizations/{org_id}/api-keys/{key_id}": {"delete"},
    "/v1/organizations/{org_id}/grants": {"get", "post"},
    "/v1/organizations/{org_id}/balance": {"get"},
    "/v1/organizations/{org_id}/ledger": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
}


def test_the_openapi_document_publishes_the_contract(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    for path, methods in CONTRACT_PATHS.items():
        assert path in spec["paths"], path
        assert methods <= spec["paths"][path].keys(), path
    grant = spec["components"]["schemas"]["GrantCreate"]
    assert grant["properties"]["credits"]["type"] == "string"
    assert set(grant["required"]) == {"credits", "source", "reason"}
    post_grant = spec["paths"]["/v1/organizations/{org_id}/grants"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in post_grant["parameters"]}


def test_the_docs_page_is_served(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "/openapi.json" in response.text
