"""Bad input is always a 4xx ``application/problem+json`` with ``type, title, status, detail, code``
(and field-level ``errors`` when a field is wrong), says what to send instead, never a 500, and
changes nothing: the whole database is compared before and after every rejected request."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.kit.db import Database
from creditmeter.ledger.verify import verify
from creditmeter.models import metadata

Headers = dict[str, str]
ORGS = "/v1/organizations"
GOOD = {"credits": "100", "source": "plan", "reason": "January plan credits"}


def everything(db: Database) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table (an API key's last-use time aside: using a key records it)."""
    snapshot = {}
    with db.read() as s:
        for table in metadata.sorted_tables:
            columns = [c for c in table.c if c.name != "last_used_at"]
            snapshot[table.name] = sorted(tuple(map(repr, r)) for r in s.execute(select(*columns)))
    return snapshot


def assert_problem(
    response: Any, status: int | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code < 500, response.text
    assert 400 <= response.status_code < 500, response.text
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["status"] == response.status_code
    assert body["type"].startswith("https://")
    assert body["title"]
    assert body["detail"]
    if code is not None:
        assert body["code"] == code, body
    return body


def field_errors(body: dict[str, Any]) -> dict[str, str]:
    assert body.get("errors"), body
    for error in body["errors"]:
        assert {"field", "message", "type"} <= error.keys(), error
    return {e["field"]: e["message"] for e in body["errors"]}


@pytest.fixture
def org(make_org: Callable[..., str]) -> str:
    return make_org()


@pytest.fixture
def seeded(client: TestClient, operator: Headers, org: str) -> str:
    """An organization that already has a lot and a journal, so "nothing changed" means something;
    the operator key has been used once, so its last-use time is already recorded."""
    assert client.post(f"{ORGS}/{org}/grants", json=GOOD, headers=operator).status_code == 201
    return org


# --- grants: the body ----------------------------------------------------------------------------

CREDIT_CASES = [
    # id, credits as sent, words the message must contain (what to send instead)
    ("float", 12.5, ['"12.5"', "not a JSON number"]),
    ("int", 10, ['"12.5"', "not a JSON number"]),
    ("bool", True, ['"12.5"']),
    ("null", None, ['"12.5"']),
    ("list", ["10"], ['"12.5"']),
    ("seven-decimals", "1.0000001", ["at most 6"]),
    ("negative", "-5", ["greater than zero", '"1000"']),
    ("zero", "0", ["greater than zero", '"1000"']),
    ("negative-zero", "-0.0", ["greater than zero"]),
    ("words", "abc", ['"1000"', '"12.5"']),
    ("exponent", "1e3", ['"1000"']),
    ("empty", "", ['"1000"']),
    ("comma", "1,5", ['"1000"']),
    ("leading-plus", "+5", ['"1000"']),
    ("leading-zero", "012", ['"1000"']),
    ("nan", "NaN", ['"1000"']),
    ("infinity", "Infinity", ['"1000"']),
    ("fullwidth-digits", "\uff11\uff12", ['"1000"']),
    ("beyond-max", "1000000000001", ["largest amount is 1000000000000"]),
    ("way-beyond-max", "9" * 30, ["largest amount"]),
    ("thousands-of-digits", "9" * 10_000, ["largest amount", "10000 characters"]),
    ("padded-with-spaces", " " * 100 + "1", ['"12.5"']),
]


@pytest.mark.parametrize(
    ("credits", "hints"), [c[1:] for c in CREDIT_CASES], ids=[c[0] for c in CREDIT_CASES]
)
def test_bad_credits_are_422_saying_what_to_send(
    client: TestClient,
    operator: Headers,
    seeded: str,
    db: Database,
    credits: Any,
    hints: list[str],
) -> None:
    before = everything(db)
    response = client.post(
        f"{ORGS}/{seeded}/grants", json={**GOOD, "credits": credits}, headers=operator
    )
    body = assert_problem(response, 422, "validation_failed")
    message = field_errors(body)["credits"]
    for hint in hints:
        assert hint in message, message
        assert hint in body["detail"]
    assert len(body["detail"]) < 500  # a clear message, not an echo of a huge input
    assert everything(db) == before


GRANT_CASES = [
    # id, body, the field named, words its message must contain
    ("unknown-field", {**GOOD, "colour": "red"}, "colour", "unknown field"),
    ("unknown-source", {**GOOD, "source": "gift"}, "source", "promo"),
    ("source-case", {**GOOD, "source": "Plan"}, "source", "plan"),
    ("missing-reason", {"credits": "1", "source": "plan"}, "reason", "required"),
    ("blank-reason", {**GOOD, "reason": "   "}, "reason", "at least 1"),
    ("long-reason", {**GOOD, "reason": "x" * 501}, "reason", "at most 500"),
    ("nul-reason", {**GOOD, "reason": "a\u0000b"}, "reason", "NUL"),
    ("missing-credits", {"source": "plan", "reason": "x"}, "credits", "required"),
    ("missing-source", {"credits": "1", "reason": "x"}, "source", "required"),
    ("naive-expires", {**GOOD, "expires_at": "2040-01-01T00:00:00"}, "expires_at", "time zone"),
    (
        "naive-effective",
        {**GOOD, "effective_at": "2040-01-01T00:00:00"},
        "effective_at",
        "time zone",
    ),
    ("date-only-expiry", {**GOOD, "expires_at": "tomorrow"}, "expires_at", ""),
    (
        "expires-before-effective",
        {**GOOD, "effective_at": "2040-01-02T00:00:00Z", "expires_at": "2040-01-01T00:00:00Z"},
        "expires_at",
        "later than effective_at",
    ),
    (
        "expires-equals-effective",
        {**GOOD, "effective_at": "2040-01-02T00:00:00Z", "expires_at": "2040-01-02T00:00:00Z"},
        "expires_at",
        "later than effective_at",
    ),
    (
        "expires-in-the-past",
        {**GOOD, "expires_at": "2001-01-01T00:00:00Z"},
        "expires_at",
        "later than effective_at",
    ),
    (
        "expiry-out-of-range",
        {**GOOD, "expires_at": "9999-12-31T23:59:59-05:00"},
        "expires_at",
        "out of range",
    ),
    (
        "effective-out-of-range",
        {**GOOD, "effective_at": "0001-01-01T00:00:00+01:00"},
        "effective_at",
        "out of range",
    ),
    (
        "promo-with-cost-basis",
        {**GOOD, "source": "promo", "cost_basis": "0.5"},
        "cost_basis",
        "omit cost_basis",
    ),
    (
        "cost-basis-float",
        {**GOOD, "source": "purchase", "cost_basis": 0.01},
        "cost_basis",
        "decimal string",
    ),
    (
        "cost-basis-negative",
        {**GOOD, "source": "purchase", "cost_basis": "-1"},
        "cost_basis",
        '"0"',
    ),
    (
        "cost-basis-words",
        {**GOOD, "source": "purchase", "cost_basis": "cheap"},
        "cost_basis",
        "cost_basis",
    ),
    ("priority-negative", {**GOOD, "priority": -1}, "priority", "greater than or equal to 0"),
    ("priority-huge", {**GOOD, "priority": 10**12}, "priority", "less than or equal"),
    ("priority-float", {**GOOD, "priority": 1.5}, "priority", "integer"),
    ("priority-string", {**GOOD, "priority": "high"}, "priority", "integer"),
    ("priority-bool", {**GOOD, "priority": True}, "priority", "integer"),
    ("body-list", [GOOD], "body", "JSON object"),
    ("body-string", "grant me", "body", "JSON object"),
    ("body-number", 100, "body", "JSON object"),
]


@pytest.mark.parametrize(
    ("body", "field", "hint"), [c[1:] for c in GRANT_CASES], ids=[c[0] for c in GRANT_CASES]
)
def test_bad_grants_are_422_naming_the_field(
    client: TestClient,
    operator: Headers,
    seeded: str,
    db: Database,
    body: Any,
    field: str,
    hint: str,
) -> None:
    before = everything(db)
    response = client.post(
        f"{ORGS}/{seeded}/grants", json=body, headers={**operator, "Idempotency-Key": "bad-1"}
    )
    problem = assert_problem(response, 422)
    messages = field_errors(problem)
    assert field in messages, problem
    assert hint in messages[field], messages[field]
    assert everything(db) == before


def test_several_mistakes_are_reported_together(
    client: TestClient, operator: Headers, seeded: str, db: Database
) -> None:
    before = everything(db)
    response = client.post(
        f"{ORGS}/{seeded}/grants",
        json={"credits": 5, "source": "gift", "extra": 1},
        headers=operator,
    )
    fields = set(field_errors(assert_problem(response, 422)))
    assert fields == {"credits", "source", "reason", "extra"}
    assert everything(db) == before


RAW_BODIES = [
    # id, raw bytes, content type
    ("malformed-json", b'{"credits": "100", ', "application/json"),
    ("trailing-garbage", b'{"credits": "100"} x', "application/json"),
    ("not-utf8", b'{"credits": "\xff"}', "application/json"),
    ("empty", b"", "application/json"),
    ("json-null", b"null", "application/json"),
    ("text-plain", b'{"credits": "100", "source": "plan", "reason": "r"}', "text/plain"),
    ("form", b"credits=100&source=plan&reason=r", "application/x-www-form-urlencoded"),
    ("xml", b"<grant credits='100'/>", "application/xml"),
    ("no-content-type", b'{"credits": "100", "source": "plan", "reason": "r"}', ""),
    ("deep-nesting", b"[" * 5000 + b"]" * 5000, "application/json"),
]


@pytest.mark.parametrize(
    ("raw", "content_type"), [c[1:] for c in RAW_BODIES], ids=[c[0] for c in RAW_BODIES]
)
def test_bodies_that_are_not_a_json_object_are_4xx(
    client: TestClient,
    operator: Headers,
    seeded: str,
    db: Database,
    raw: bytes,
    content_type: str,
) -> None:
    before = everything(db)
    headers = {**operator, "Content-Type": content_type} if content_type else operator
    response = client.post(f"{ORGS}/{seeded}/grants", content=raw, headers=headers)
    body = assert_problem(response)
    if response.status_code == 422:
        assert "body" in field_errors(body)
    assert everything(db) == before


def test_a_malformed_body_says_it_is_not_json(
    client: TestClient, operator: Headers, seeded: str
) -> None:
    response = client.post(
        f"{ORGS}/{seeded}/grants",
        content=b'{"credits": ',
        headers={**operator, "Content-Type": "application/json"},
    )
    body = assert_problem(response, 422, "validation_failed")
    assert "not valid JSON" in field_errors(body)["body"]


# --- authentication and unknown things -----------------------------------------------------------

AUTH_CASES = [
    ("missing", {}, "missing_api_key"),
    ("empty-bearer", {"Authorization": "Bearer "}, "missing_api_key"),
    ("basic", {"Authorization": "Basic b3BlcmF0b3I6c2VjcmV0"}, "missing_api_key"),
    ("unknown", {"Authorization": "Bearer cm_live_nope"}, "invalid_api_key"),
    ("latin1", {"Authorization": b"Bearer cm_live_\xe9"}, "invalid_api_key"),
]


@pytest.mark.parametrize(
    ("headers", "code"), [c[1:] for c in AUTH_CASES], ids=[c[0] for c in AUTH_CASES]
)
def test_a_grant_without_a_valid_key_is_401_and_changes_nothing(
    client: TestClient, seeded: str, db: Database, headers: dict[str, Any], code: str
) -> None:
    before = everything(db)
    response = client.post(f"{ORGS}/{seeded}/grants", json=GOOD, headers=headers)
    assert_problem(response, 401, code)
    assert everything(db) == before


def test_a_bad_body_without_a_key_is_401_not_422(client: TestClient, seeded: str) -> None:
    response = client.post(f"{ORGS}/{seeded}/grants", json={"credits": 1.5})
    assert_problem(response, 401)


def test_a_revoked_operator_key_cannot_grant(
    client: TestClient, operator: Headers, seeded: str, db: Database
) -> None:
    from creditmeter.kit import clock
    from creditmeter.orgs import service as orgs
    from creditmeter.orgs.service import Environment, Scope

    with db.write() as s:
        key, secret = orgs.create_api_key(
            s, None, "old", [Scope.OPERATOR], Environment.LIVE, clock.now()
        )
        orgs.revoke_api_key(s, None, key.id, clock.now())
    before = everything(db)
    response = client.post(
        f"{ORGS}/{seeded}/grants", json=GOOD, headers={"Authorization": f"Bearer {secret}"}
    )
    assert_problem(response, 401, "invalid_api_key")
    assert everything(db) == before


EVERY_ENDPOINT = [
    ("GET", "{org}", None),
    ("GET", "{org}/projects", None),
    ("POST", "{org}/projects", {"name": "P"}),
    ("GET", "{org}/members", None),
    ("POST", "{org}/members", {"email": "a@b.example", "role": "owner"}),
    ("GET", "{org}/api-keys", None),
    ("POST", "{org}/api-keys", {"name": "k", "scopes": ["org:read"]}),
    ("DELETE", "{org}/api-keys/key_01J00000000000000000000000", None),
    ("GET", "{org}/grants", None),
    ("POST", "{org}/grants", GOOD),
    ("GET", "{org}/balance", None),
    ("GET", "{org}/ledger", None),
    ("POST", "{org}/ledger/txn_1/reverse", {"reason": "x"}),
]
ODD_ORG_IDS = [
    "org_01J00000000000000000000000",
    "org_%00",
    "x" * 1000,
    "org_%C3%BC",
    "%20",
    "1",
]


@pytest.mark.parametrize(
    ("method", "path", "body"), EVERY_ENDPOINT, ids=[f"{m} {p}" for m, p, _ in EVERY_ENDPOINT]
)
def test_an_unknown_organization_is_404_everywhere(
    client: TestClient,
    operator: Headers,
    seeded: str,
    db: Database,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    before = everything(db)
    for org_id in ODD_ORG_IDS:
        url = f"{ORGS}/" + path.format(org=org_id)
        response = client.request(method, url, json=body, headers=operator)
        assert_problem(response, 404, "not_found")
    assert everything(db) == before


def test_an_unknown_path_and_a_wrong_method_are_problems(
    client: TestClient, operator: Headers, seeded: str
) -> None:
    assert_problem(client.get("/v1/nothing-here", headers=operator), 404, "not_found")
    assert_problem(client.put(ORGS, json={}, headers=operator), 405, "method_not_allowed")
    assert_problem(client.delete(f"{ORGS}/{seeded}", headers=operator), 405)
    assert_problem(client.patch(f"{ORGS}/{seeded}/grants", json={}, headers=operator), 405)


# --- pagination and query parameters -------------------------------------------------------------

PAGINATED = [
    "",
    "{org}/projects",
    "{org}/members",
    "{org}/api-keys",
    "{org}/grants",
    "{org}/ledger",
]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = [
    ("punctuation", "!!!!"),
    ("plain-word", "foo"),
    ("padded", "Zm9v=="),
    ("decodes-to-another-word", b64(b"foo")),
    ("nul-inside", b64(b"org_\x00")),
    ("not-ascii", b64("org_\u00fc".encode())),
    ("binary", b64(b"\xff\xfe\xfd")),
    ("newline", b64(b"org_1\n")),
    ("another-lists-cursor", b64(b"txn_1")),
    ("ledger-cursor-not-a-number", b64(b"txn_abc")),
    ("too-long", "A" * 201),
]


@pytest.mark.parametrize("path", PAGINATED, ids=lambda p: p or "organizations")
def test_a_bad_cursor_is_422(
    client: TestClient, operator: Headers, seeded: str, db: Database, path: str
) -> None:
    before = everything(db)
    url = f"{ORGS}/{path.format(org=seeded)}".rstrip("/")
    for name, cursor in BAD_CURSORS:
        if path.endswith("ledger") and name == "another-lists-cursor":
            cursor = b64(b"org_1")  # noqa: PLW2901 - for the journal, "another list" is organizations
        response = client.get(url, params={"cursor": cursor}, headers=operator)
        body = assert_problem(response, 422)
        assert "cursor" in field_errors(body), name
        assert "next_cursor" in body["detail"] or "200" in body["detail"], name
    assert everything(db) == before


@pytest.mark.parametrize("path", PAGINATED, ids=lambda p: p or "organizations")
def test_a_bad_limit_is_422(client: TestClient, operator: Headers, seeded: str, path: str) -> None:
    url = f"{ORGS}/{path.format(org=seeded)}".rstrip("/")
    for limit in ["0", "-1", "501", "10000", "ten", "1.5", ""]:
        response = client.get(url, params={"limit": limit}, headers=operator)
        body = assert_problem(response, 422, "validation_failed")
        assert "limit" in field_errors(body), limit


def test_the_largest_and_smallest_limits_are_fine(
    client: TestClient, operator: Headers, seeded: str
) -> None:
    for limit in ("1", "500"):
        response = client.get(f"{ORGS}/{seeded}/ledger", params={"limit": limit}, headers=operator)
        assert response.status_code == 200


@pytest.mark.parametrize("path", ["{org}/balance", "{org}/ledger", "{org}/grants"])
def test_an_unknown_environment_is_422(
    client: TestClient, operator: Headers, seeded: str, path: str
) -> None:
    response = client.get(
        f"{ORGS}/{path.format(org=seeded)}", params={"environment": "staging"}, headers=operator
    )
    message = field_errors(assert_problem(response, 422))["environment"]
    assert "live" in message
    assert "test" in message


# --- organizations and their parts ---------------------------------------------------------------

ORG_CASES = [
    ("missing-name", {}, "name"),
    ("empty-name", {"name": ""}, "name"),
    ("long-name", {"name": "x" * 201}, "name"),
    ("nul-name", {"name": "Acme\u0000"}, "name"),
    ("numeric-name", {"name": 42}, "name"),
    ("empty-external-id", {"name": "Acme", "external_id": ""}, "external_id"),
    ("long-external-id", {"name": "Acme", "external_id": "x" * 201}, "external_id"),
    ("nul-external-id", {"name": "Acme", "external_id": "\u0000"}, "external_id"),
    ("unknown-field", {"name": "Acme", "plan": "enterprise"}, "plan"),
]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in ORG_CASES], ids=[c[0] for c in ORG_CASES]
)
def test_a_bad_organization_is_422_and_creates_nothing(
    client: TestClient,
    operator: Headers,
    seeded: str,
    db: Database,
    body: dict[str, Any],
    field: str,
) -> None:
    before = everything(db)
    response = client.post(ORGS, json=body, headers=operator)
    assert field in field_errors(assert_problem(response, 422, "validation_failed"))
    assert everything(db) == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("projects", {"name": "P\u0000"}, "name"),
        ("members", {"email": "a\u0000@b.example", "role": "owner"}, "email"),
        ("members", {"email": "a@b.example", "role": None}, "role"),
        ("api-keys", {"name": "k\u0000", "scopes": ["org:read"]}, "name"),
        ("api-keys", {"name": "k", "scopes": [None]}, "scopes.0"),
    ],
)
def test_bad_parts_of_an_organization_are_422_and_change_nothing(
    client: TestClient,
    operator: Headers,
    seeded: str,
    db: Database,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    before = everything(db)
    response = client.post(f"{ORGS}/{seeded}/{path}", json=body, headers=operator)
    assert field in field_errors(assert_problem(response, 422, "validation_failed"))
    assert everything(db) == before


def test_after_all_that_the_ledger_is_clean(
    client: TestClient, operator: Headers, seeded: str, db: Database
) -> None:
    for credits in (12.5, "1.0000001", "-5", "0", "abc"):
        client.post(f"{ORGS}/{seeded}/grants", json={**GOOD, "credits": credits}, headers=operator)
    view = client.get(f"{ORGS}/{seeded}/balance", headers=operator).json()
    assert view["available"] == "100"
    with db.read() as s:
        assert verify(s) == []


# --- the largest balance ---------------------------------------------------------------------


def test_grants_that_would_overflow_the_balance_are_refused_not_500(
    client: TestClient, operator: Headers, org: str, db: Database
) -> None:
    largest = {**GOOD, "credits": "1000000000000"}
    statuses = [
        client.post(f"{ORGS}/{org}/grants", json=largest, headers=operator).status_code
        for _ in range(10)
    ]
    assert statuses[:9] == [201] * 9
    assert 400 <= statuses[9] < 500
    with db.read() as s:
        assert verify(s) == []
