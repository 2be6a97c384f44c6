"""Text a client sends that is not Unicode text: a JSON string may carry the escape ``"\\udc00"``, a lone
surrogate that Python parses into a ``str`` no UTF-8 encoder accepts. Such strings are refused at
validation (422 ``validation_failed``, field type ``invalid_unicode``) wherever they appear — ids,
organization, project, member, operation, quantity keys and values, metadata keys and values, and every
other endpoint's body — per event in batches (the valid events apply), and nothing is written for them.
An answer that echoes a client's text never fails to encode, so no 500 follows a commit."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from creditmeter.api.jsonio import encode, is_text, printable
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.metering.models import UsageEvent
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Role
from tests.api.test_bad_input import everything
from tests.metering import (
    H100_HOUR,
    T0,
    TOKENS,
    Headers,
    assert_clean,
    balance,
    grant,
    micros,
)

LONE = "\udc00"  # what the JSON escape "\udc00" parses to


@pytest.fixture(autouse=True)
def _noon(db: Database) -> Iterator[None]:
    with clock.frozen_at(T0):
        yield
    assert_clean(db)


@pytest.fixture
def tenant(
    db: Database, client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> dict[str, str]:
    org = make_org("Acme AI", "acme")
    with db.write() as s:
        orgs.create_project(s, org, "Research", clock.now())
        orgs.add_member(s, org, "ada@acme.example", Role.MEMBER, clock.now())
    grant(client, operator, org, "100")
    return {"org": org}


def send(
    client: TestClient,
    method: str,
    path: str,
    body: Any,
    headers: Headers,
    content_type: str = "application/json",
) -> Any:
    """The body as JSON text with \\u escapes (what a client sends; httpx cannot encode it)."""
    return client.request(
        method,
        path,
        content=json.dumps(body).encode("ascii"),
        headers={**headers, "Content-Type": content_type},
    )


def assert_unicode_refused(response: Any, field: str | None = None) -> dict[str, Any]:
    """422 naming the field: ``validation_failed`` with type ``invalid_unicode`` — or, for a
    quantity's value (a number or a selector, checked by the rate card), ``invalid_quantity`` or
    ``unknown_class``."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    kinds = {e["field"]: e["type"] for e in body["errors"]}
    if body["code"] in {"invalid_quantity", "unknown_class"}:
        assert set(kinds.values()) == {body["code"]}, body
    else:
        assert body["code"] == "validation_failed", body
        assert "invalid_unicode" in kinds.values(), body
    if field is not None:
        assert field in kinds, body
    return body


def usage(org: str, event_id: str = "e1") -> dict[str, Any]:
    return {"id": event_id, "organization": org, "operation": "inference", "quantities": TOKENS}


#: (field, how to put a lone surrogate into a usage event) for every text a usage event carries.
EVENT_TEXT: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("id", lambda e: e.update(id=f"evt-{LONE}")),
    ("organization", lambda e: e.update(organization=f"acme{LONE}")),
    ("project", lambda e: e.update(project=f"Research{LONE}")),
    ("member", lambda e: e.update(member=f"ada{LONE}@acme.example")),
    ("operation", lambda e: e.update(operation=f"inference{LONE}")),
    ("hold", lambda e: e.update(hold=f"hold_{LONE}")),
    ("quantities", lambda e: e["quantities"].update({f"input{LONE}": "1"})),
    ("quantities.input_tokens", lambda e: e["quantities"].update(input_tokens=f"1{LONE}")),
    ("quantities.accelerator", lambda e: e["quantities"].update(gpu_seconds="1", accelerator=LONE)),
    ("metadata", lambda e: e.update(metadata={f"k{LONE}": "v"})),
    ("metadata", lambda e: e.update(metadata={"k": {"deep": [f"v{LONE}"]}})),
]


def _bad_event(org: str, how: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    event = {**usage(org, "bad"), "quantities": dict(TOKENS)}
    how(event)
    return event


@pytest.mark.parametrize(("field", "how"), EVENT_TEXT, ids=[f for f, _ in EVENT_TEXT])
def test_a_single_event_with_a_lone_surrogate_is_422_and_changes_nothing(
    db: Database,
    client: TestClient,
    operator: Headers,
    tenant: dict[str, str],
    field: str,
    how: Callable[[dict[str, Any]], None],
) -> None:
    before = everything(db)
    response = send(client, "POST", "/v1/usage", _bad_event(tenant["org"], how), operator)
    body = assert_unicode_refused(response)
    assert any(e["field"].startswith(field.split(".", maxsplit=1)[0]) for e in body["errors"]), body
    assert everything(db) == before


@pytest.mark.parametrize(("field", "how"), EVENT_TEXT, ids=[f for f, _ in EVENT_TEXT])
def test_a_batch_rejects_only_the_event_with_a_lone_surrogate_and_answers_200(
    db: Database,
    client: TestClient,
    operator: Headers,
    tenant: dict[str, str],
    field: str,
    how: Callable[[dict[str, Any]], None],
) -> None:
    org = tenant["org"]
    events = [usage(org, "ok-1"), _bad_event(org, how), usage(org, "ok-2")]
    response = send(client, "POST", "/v1/usage/batch", {"events": events}, operator)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["applied", "rejected", "applied"]
    bad = results[1]
    assert bad["id"] == (None if field == "id" else "bad")  # a surrogate id is not echoed
    assert bad["error"]["status"] == 422
    # exactly the two valid events were debited
    assert balance(client, operator, org)["available"] == "99.99"
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(UsageEvent)) == 2


def _cloud_event(org: str, event_id: str = "ce-1", **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "/ai-engine",
        "type": "inference",
        "subject": org,
        "data": {"quantities": dict(TOKENS)},
        **extra,
    }


CLOUD_TEXT: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("id", lambda e: e.update(id=f"ce-{LONE}")),
    ("subject", lambda e: e.update(subject=f"acme{LONE}")),
    ("type", lambda e: e.update(type=f"com.creditmeter.usage.inference{LONE}")),
    ("data.project", lambda e: e["data"].update(project=f"R{LONE}")),
    ("data.metadata", lambda e: e["data"].update(metadata={"k": f"v{LONE}"})),
    ("data.quantities", lambda e: e["data"]["quantities"].update({f"x{LONE}": "1"})),
    (f"data.x{LONE}", lambda e: e["data"].update({f"x{LONE}": 1})),  # an unknown field, echoed
    (f"ext{LONE}", lambda e: e.update({f"ext{LONE}": "1"})),  # a bad extension name, echoed
]


@pytest.mark.parametrize(("field", "how"), CLOUD_TEXT, ids=[str(i) for i in range(len(CLOUD_TEXT))])
def test_cloudevents_with_a_lone_surrogate_are_refused_alone(
    db: Database,
    client: TestClient,
    operator: Headers,
    tenant: dict[str, str],
    field: str,
    how: Callable[[dict[str, Any]], None],
) -> None:
    org = tenant["org"]
    bad = _cloud_event(org, "ce-bad")
    how(bad)
    before = everything(db)
    single = send(client, "POST", "/v1/events", bad, operator, "application/cloudevents+json")
    assert single.status_code == 422, single.text
    assert single.json()["code"] == "validation_failed"
    assert everything(db) == before

    batch = [_cloud_event(org, "ce-1"), bad, _cloud_event(org, "ce-2")]
    response = send(
        client, "POST", "/v1/events", batch, operator, "application/cloudevents-batch+json"
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["applied", "rejected", "applied"]
    assert results[1]["id"] in {"ce-bad", None}
    assert results[1]["error"]["status"] == 422
    assert balance(client, operator, org)["available"] == "99.99"


def test_binary_mode_data_with_a_lone_surrogate_is_refused(
    db: Database, client: TestClient, operator: Headers, tenant: dict[str, str]
) -> None:
    before = everything(db)
    headers = {
        **operator,
        "ce-specversion": "1.0",
        "ce-id": "bin-1",
        "ce-source": "/ai-engine",
        "ce-type": "inference",
        "ce-subject": tenant["org"],
    }
    data = {"quantities": dict(TOKENS), "metadata": {"who": f"x{LONE}"}}
    response = send(client, "POST", "/v1/events", data, headers)
    assert_unicode_refused(response, "data.metadata")
    assert everything(db) == before


def test_settling_a_hold_with_a_lone_surrogate_is_refused_and_keeps_the_hold(
    db: Database, client: TestClient, operator: Headers, tenant: dict[str, str]
) -> None:
    org = tenant["org"]
    hold = client.post(
        "/v1/holds",
        json={"organization": org, "operation": "training", "quantities": H100_HOUR},
        headers=operator,
    )
    assert hold.status_code == 201, hold.text
    before = everything(db)
    for body in (
        {"id": f"run-{LONE}", "quantities": H100_HOUR},
        {"id": "run-1", "quantities": H100_HOUR, "member": f"ada{LONE}"},
        {"id": "run-1", "quantities": H100_HOUR, "metadata": {LONE: 1}},
    ):
        path = f"/v1/holds/{hold.json()['id']}/settle"
        assert_unicode_refused(send(client, "POST", path, body, operator))
    assert everything(db) == before


#: Other endpoints' bodies: (method, path template, body) with a lone surrogate in a string field.
OTHER_BODIES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/organizations", {"name": f"Acme{LONE}"}),
    ("POST", "/v1/organizations", {"name": "Acme", "external_id": f"a{LONE}"}),
    ("POST", "/v1/organizations/{org}/projects", {"name": f"p{LONE}"}),
    ("POST", "/v1/organizations/{org}/members", {"email": f"a{LONE}@x.example", "role": "admin"}),
    ("POST", "/v1/organizations/{org}/members", {"email": "a@x.example", "role": f"admin{LONE}"}),
    ("POST", "/v1/organizations/{org}/api-keys", {"name": f"k{LONE}", "scopes": ["org:read"]}),
    ("POST", "/v1/organizations/{org}/api-keys", {"name": "k", "scopes": [f"org:read{LONE}"]}),
    ("POST", "/v1/organizations/{org}/grants", {"credits": "5", "source": "promo", "reason": LONE}),
    ("POST", "/v1/organizations/{org}/grants", {"credits": f"5{LONE}", "source": "promo"}),
    ("POST", "/v1/organizations/{org}/ledger/txn_1/reverse", {"reason": f"r{LONE}"}),
    ("POST", "/v1/organizations/{org}/usage/e1/reverse", {"reason": f"r{LONE}"}),
    ("POST", "/v1/authorize", {"organization": "{org}", "operation": f"inference{LONE}"}),
    ("POST", "/v1/authorize", {"organization": "{org}", "operation": "inference", "project": LONE}),
    ("POST", "/v1/holds", {"organization": f"{LONE}", "operation": "training", "credits": "1"}),
    ("POST", "/v1/holds/hold_x/extend", {"credits": f"1{LONE}"}),
    ("POST", "/v1/estimate", {"operation": "inference", "quantities": {LONE: "1"}}),
    ("PUT", "/v1/organizations/{org}/projects/p/budget", {"monthly_credits": f"5{LONE}"}),
    ("PUT", "/v1/organizations/{org}/subscription", {"plan": f"standard{LONE}"}),
    ("POST", "/v1/invoices/inv_x/void", {"reason": f"r{LONE}"}),
    ("POST", "/v1/invoices/inv_x/pay", {"payment_method": f"pm{LONE}"}),
    ("POST", "/v1/organizations/{org}/payment-methods", {"token": f"tok_{LONE}"}),
    ("POST", "/v1/organizations/{org}/purchases", {"package": f"standard{LONE}"}),
    ("POST", "/v1/payments/pay_x/refunds", {"reason": f"r{LONE}"}),
    ("POST", "/v1/test-clocks", {"frozen_time": "2026-01-01T00:00:00Z", "name": LONE}),
    ("POST", "/v1/organizations/{org}/test-clock", {"test_clock": f"clock_{LONE}"}),
    ("POST", "/v1/usage", {"id": "e1", "organization": "{org}", "operation": "x", LONE: 1}),
]


def _with(value: Any, bad: str, org: str) -> Any:
    """``value`` with the lone surrogate replaced by ``bad`` and ``{org}`` by the organization."""
    if isinstance(value, str):
        return value.replace(LONE, bad).replace("{org}", org)
    if isinstance(value, dict):
        return {_with(k, bad, org): _with(v, bad, org) for k, v in value.items()}
    if isinstance(value, list):
        return [_with(v, bad, org) for v in value]
    return value


@pytest.mark.parametrize("bad", [LONE, "\x00"], ids=["lone-surrogate", "nul"])
@pytest.mark.parametrize(
    ("method", "path", "body"), OTHER_BODIES, ids=[str(i) for i in range(len(OTHER_BODIES))]
)
def test_every_endpoint_refuses_untrusted_text_with_a_4xx_and_changes_nothing(
    db: Database,
    client: TestClient,
    operator: Headers,
    tenant: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any],
    bad: str,
) -> None:
    """A lone surrogate is a 422 ``validation_failed``; a NUL character (which PostgreSQL refuses in
    text: attaching a test clock named with one answered 500, found by fuzzing) a 4xx too. Neither
    changes anything."""
    org = tenant["org"]
    before = everything(db)
    response = send(
        client,
        method,
        path.replace("{org}", org),
        _with(body, bad, org),
        {**operator, "Idempotency-Key": "k1"},
    )
    if bad == LONE:
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_failed"
    else:
        assert 400 <= response.status_code < 500, response.text
    assert everything(db) == before


def test_a_name_a_client_sent_is_echoed_with_its_lone_surrogate_escaped_visibly(
    client: TestClient, operator: Headers, tenant: dict[str, str]
) -> None:
    top = send(client, "POST", "/v1/usage", {**usage(tenant["org"]), f"x{LONE}": 1}, operator)
    assert top.status_code == 422, top.text
    assert top.json()["errors"][0]["type"] == "invalid_unicode"
    event = _cloud_event(tenant["org"])
    event["data"][f"x{LONE}"] = 1
    response = send(client, "POST", "/v1/events", event, operator, "application/cloudevents+json")
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["data.x\\udc00"]


def test_answers_encode_whatever_text_they_hold() -> None:
    assert not is_text(LONE)
    assert is_text("ascii")
    assert is_text("żółw 🐢")
    content = {"id": f"a{LONE}", LONE: [f"b{LONE}", 10**30], "ok": "żółw"}
    assert json.loads(encode(content)) == {
        "id": "a\\udc00",
        "\\udc00": ["b\\udc00", 10**30],
        "ok": "żółw",
    }
    assert printable({"a": ("x",)}) == {"a": ["x"]}


# --- property: arbitrary text never yields a 5xx nor a partial write --------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ids=st.lists(ANY_TEXT, min_size=1, max_size=6),
    metadata=st.lists(st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=3), min_size=6, max_size=6),
    project=st.sampled_from([None, "Research", "proj-unknown"]),
)
def test_arbitrary_text_in_ids_and_metadata_never_fails_and_never_writes_part_of_an_event(
    db: Database,
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    ids: list[str],
    metadata: list[dict[str, str]],
    project: str | None,
) -> None:
    org = make_org("Prop")
    with db.write() as s:
        orgs.create_project(s, org, "Research", clock.now())
    grant(client, operator, org, "10")
    events = []
    for event_id, meta in zip(ids, metadata, strict=False):
        event: dict[str, Any] = {**usage(org, event_id), "metadata": meta}
        if project is not None:
            event["project"] = project
        events.append(event)
    response = send(client, "POST", "/v1/usage/batch", {"events": events}, operator)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    applied = {e["id"] for e, r in zip(events, results, strict=True) if r["status"] == "applied"}
    for event, result in zip(events, results, strict=True):
        meta = event["metadata"]
        if not all(is_text(t) for t in [event["id"], *meta, *meta.values()]):
            assert result["status"] == "rejected", result
            assert result["error"]["code"] == "validation_failed", result
        assert result["status"] in {"applied", "duplicate", "rejected"}, result
        if result["status"] == "rejected":
            assert result["error"]["status"] in {409, 422}, result
    with db.read() as s:
        stored = s.scalars(select(UsageEvent.event_id).where(UsageEvent.organization_id == org))
        assert set(stored) == applied
    spent = micros("0.005") * len(applied)
    assert micros(balance(client, operator, org)["available"]) == micros("10") - spent
