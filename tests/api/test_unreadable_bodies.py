"""Bodies the JSON parser cannot read get their own stable codes, never a bare ``400 http_error``:
bytes that are not UTF-8 and numbers it refuses are ``422 invalid_json``, nesting deeper than it goes is
``422 json_too_deep`` (malformed syntax stays ``422 validation_failed`` with type ``json_invalid``).
Every endpoint that takes JSON refuses another media type with ``415 unsupported_media_type``,
including ``POST /v1/invoices/{id}/void``. None of them changes anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from creditmeter.kit.db import Database
from tests.api.test_bad_input import everything
from tests.metering import Headers

NOT_UTF8 = b'{"id": "e\xff1", "organization": "acme", "operation": "inference"}'
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 5_000 + b"1" + b"}" * 5_000
HUGE_NUMBER = b'{"id": "e1", "quantities": {"input_tokens": ' + b"7" * 5_000 + b"}}"

#: Every kind of JSON-taking endpoint: FastAPI-parsed bodies and the CloudEvents reader.
PATHS = [
    ("/v1/usage", "application/json"),
    ("/v1/usage/batch", "application/json"),
    ("/v1/organizations", "application/json"),
    ("/v1/organizations/{org}/grants", "application/json"),
    ("/v1/invoices/inv_x/void", "application/json"),
    ("/v1/events", "application/cloudevents+json"),
    ("/v1/events", "application/cloudevents-batch+json"),
]


@pytest.fixture
def org(make_org: Callable[..., str]) -> str:
    return make_org("Acme AI", "acme")


def post(client: TestClient, path: str, body: bytes, headers: Headers, content_type: str) -> Any:
    return client.post(path, content=body, headers={**headers, "Content-Type": content_type})


def assert_code(response: Any, code: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code, body
    assert body["errors"] == [{"field": "body", "message": body["detail"], "type": code}]


@pytest.mark.parametrize(("path", "content_type"), PATHS)
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (NOT_UTF8, "invalid_json"),
        (b"\x80\x81 not text", "invalid_json"),
        (DEEP, "json_too_deep"),
        (DEEP_OBJECT, "json_too_deep"),
        (HUGE_NUMBER, "invalid_json"),
    ],
    ids=["not-utf8", "binary", "deep-arrays", "deep-objects", "huge-number"],
)
def test_an_unreadable_body_has_its_own_code_and_changes_nothing(
    db: Database,
    client: TestClient,
    operator: Headers,
    org: str,
    path: str,
    content_type: str,
    body: bytes,
    code: str,
) -> None:
    before = everything(db)
    assert_code(post(client, path.replace("{org}", org), body, operator, content_type), code)
    assert everything(db) == before


def test_malformed_json_is_still_validation_failed(client: TestClient, operator: Headers) -> None:
    response = post(client, "/v1/usage", b'{"id": ', operator, "application/json")
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
    assert response.json()["errors"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("path", ["/v1/invoices/inv_x/void", "/v1/invoices/inv_x/pay"])
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]
)
def test_invoice_actions_take_json_only(
    db: Database, client: TestClient, operator: Headers, path: str, content_type: str
) -> None:
    before = everything(db)
    response = post(client, path, b"reason=duplicate", operator, content_type)
    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_media_type"
    assert everything(db) == before
