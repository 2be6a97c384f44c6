"""POST /v1/events: usage as CloudEvents 1.0, produced by the official ``cloudevents`` Python SDK.

Both of the SDK's APIs produce events here: the 2.x API (``cloudevents.core``) and the 1.x API kept
under ``cloudevents.v1`` (``CloudEvent``, ``to_structured``, ``to_binary``, ``to_dict``). The SDK has
no batch helper: a batch is the JSON array of the events' JSON format, as the spec defines it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1 import conversion as v1_conversion
from cloudevents.v1.http import CloudEvent as V1CloudEvent
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger.verify import verify
from creditmeter.metering.models import UsageEvent

Headers = dict[str, str]
EVENTS = "/v1/events"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
TOKENS = {"input_tokens": "1000", "output_tokens": "500"}


# ---- producers: the SDK builds the event and its HTTP message -----------------------------------


@dataclass(frozen=True)
class Message:
    headers: dict[str, str]
    body: bytes


def core_event(attributes: dict[str, Any], data: Any) -> CloudEvent:
    return CloudEvent(dict(attributes), data)


def core_structured(attributes: dict[str, Any], data: Any) -> Message:
    m = ce_http.to_structured_event(core_event(attributes, data))
    return Message(dict(m.headers), m.body)


def core_binary(attributes: dict[str, Any], data: Any) -> Message:
    m = ce_http.to_binary_event(core_event(attributes, data))
    return Message(dict(m.headers), m.body)


def v1_structured(attributes: dict[str, Any], data: Any) -> Message:
    headers, body = v1_conversion.to_structured(V1CloudEvent(dict(attributes), data))
    return Message(dict(headers), body)


def v1_binary(attributes: dict[str, Any], data: Any) -> Message:
    headers, body = v1_conversion.to_binary(V1CloudEvent(dict(attributes), data))
    return Message(dict(headers), body)


def core_json(attributes: dict[str, Any], data: Any) -> dict[str, Any]:
    """One event in the JSON format, as a dict (to put in a batch or to tamper with)."""
    parsed: dict[str, Any] = json.loads(JSONFormat().write(core_event(attributes, data)))
    return parsed


def v1_json(attributes: dict[str, Any], data: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(v1_conversion.to_json(V1CloudEvent(dict(attributes), data)))
    return parsed


STRUCTURED_PRODUCERS = {"sdk2": core_structured, "sdk1": v1_structured}
BINARY_PRODUCERS = {"sdk2": core_binary, "sdk1": v1_binary}
JSON_PRODUCERS = {"sdk2": core_json, "sdk1": v1_json}


def attrs(subject: str, type_: str = "inference", **extra: Any) -> dict[str, Any]:
    return {"type": type_, "source": "/ai-engine", "subject": subject, **extra}


def usage(quantities: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"quantities": dict(TOKENS if quantities is None else quantities), **extra}


def send(client: TestClient, headers: Headers, message: Message) -> Any:
    return client.post(EVENTS, content=message.body, headers={**headers, **message.headers})


def send_json(client: TestClient, headers: Headers, body: Any, content_type: str) -> Any:
    return client.post(
        EVENTS, content=json.dumps(body), headers={**headers, "Content-Type": content_type}
    )


def send_batch(client: TestClient, headers: Headers, events: list[Any]) -> Any:
    return send_json(client, headers, events, BATCH)


# ---- state ----------------------------------------------------------------------------------------


def grant(client: TestClient, operator: Headers, org: str, credits: str = "100") -> None:
    body = {"credits": credits, "source": "plan", "reason": "plan credits"}
    response = client.post(f"/v1/organizations/{org}/grants", json=body, headers=operator)
    assert response.status_code == 201, response.text


def available(client: TestClient, operator: Headers, org: str) -> str:
    response = client.get(f"/v1/organizations/{org}/balance", headers=operator)
    assert response.status_code == 200, response.text
    value: str = response.json()["available"]
    return value


def estimate(client: TestClient, operator: Headers, quantities: dict[str, str] = TOKENS) -> str:
    body = {"operation": "inference", "quantities": quantities}
    response = client.post("/v1/estimate", json=body, headers=operator)
    assert response.status_code == 200, response.text
    value: str = response.json()["credits"]
    return value


def event_count(db: Database, org: str) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).where(UsageEvent.organization_id == org)) or 0)


def assert_clean(db: Database) -> None:
    with db.read() as s:
        assert verify(s) == []


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code, body
    return body


def fields(problem: dict[str, Any]) -> set[str]:
    return {e["field"] for e in problem.get("errors", [])}


@pytest.fixture
def acme(client: TestClient, operator: Headers, make_org: Callable[..., str]) -> str:
    org = make_org("Acme AI", "acme-ext")
    grant(client, operator, org)
    return org


# ---- one event ------------------------------------------------------------------------------------


@pytest.mark.parametrize("producer", sorted(STRUCTURED_PRODUCERS))
@pytest.mark.parametrize(
    "type_",
    [
        "inference",
        "com.creditmeter.usage.inference",
        "dev.creditmeter.usage.inference",
        "com.creditmeter.usage.v1.inference",
        "dev.creditmeter.usage.v1.inference",
    ],
)
def test_a_structured_event_is_recorded_and_debited(
    client: TestClient, db: Database, operator: Headers, acme: str, producer: str, type_: str
) -> None:
    cost = estimate(client, operator)
    message = STRUCTURED_PRODUCERS[producer](attrs(acme, type_, id="evt-1"), usage())
    assert message.headers["content-type"] == STRUCTURED

    response = send(client, operator, message)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] == "evt-1"
    assert body["status"] == "applied"
    assert body["credits"] == cost
    assert sum(float(line["credits"]) for line in body["breakdown"]) == pytest.approx(float(cost))
    assert body["balance"] == {
        "available": available(client, operator, acme),
        "arrears": "0",
        "paused": False,
    }
    assert float(body["balance"]["available"]) == pytest.approx(100 - float(cost))
    with db.read() as s:
        row = s.execute(select(UsageEvent).where(UsageEvent.event_id == "evt-1")).scalar_one()
    assert row.operation == "inference"
    assert row.organization_id == acme
    assert row.quantities == TOKENS
    assert_clean(db)


def test_the_response_is_the_one_of_post_usage_and_the_events_are_the_same(
    client: TestClient, db: Database, operator: Headers, acme: str
) -> None:
    """A CloudEvent and the usage event it maps to are one event: same response, same fingerprint."""
    occurred = (clock.now() - timedelta(hours=1)).replace(microsecond=0)
    message = core_structured(
        attrs(acme, "com.creditmeter.usage.inference", id="same-1", time=occurred),
        usage(project=None, cache_hit=True, metadata={"model": "m-1"}),
    )
    via_events = send(client, operator, message)
    assert via_events.status_code == 201, via_events.text

    plain = {
        "id": "same-1",
        "organization": acme,
        "operation": "inference",
        "quantities": TOKENS,
        "occurred_at": occurred.isoformat(),
        "cache_hit": True,
        "metadata": {"model": "m-1"},
    }
    via_usage = client.post("/v1/usage", json=plain, headers=operator)

    assert via_usage.status_code == 200, via_usage.text
    assert via_usage.json() == {**via_events.json(), "status": "duplicate"}
    assert event_count(db, acme) == 1
    with db.read() as s:
        row = s.execute(select(UsageEvent).where(UsageEvent.event_id == "same-1")).scalar_one()
    assert row.cache_hit is True
    assert row.event_metadata == {"model": "m-1"}


def test_time_is_occurred_at(
    client: TestClient, db: Database, operator: Headers, acme: str
) -> None:
    occurred = clock.now() - timedelta(days=2, minutes=7)
    response = send(
        client, operator, core_structured(attrs(acme, id="t-1", time=occurred), usage())
    )
    assert response.status_code == 201, response.text
    with db.read() as s:
        stored = s.scalar(select(UsageEvent.occurred_at).where(UsageEvent.event_id == "t-1"))
    assert stored is not None
    assert stored == occurred


def test_a_repeat_is_a_duplicate_and_another_body_under_the_same_id_is_409(
    client: TestClient, db: Database, operator: Headers, acme: str
) -> None:
    message = core_structured(attrs(acme, id="dup-1"), usage())
    first = send(client, operator, message)
    assert first.status_code == 201, first.text
    after_first = available(client, operator, acme)

    again = send(client, operator, message)

    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "status": "duplicate"}
    changed = json.loads(message.body)
    changed["data"]["quantities"]["input_tokens"] = "999"
    conflict = send_json(client, operator, changed, STRUCTURED)
    assert_problem(conflict, 409, "event_id_conflict")
    assert available(client, operator, acme) == after_first
    assert event_count(db, acme) == 1
    assert_clean(db)


@pytest.mark.parametrize("producer", sorted(BINARY_PRODUCERS))
def test_binary_mode_is_accepted(
    client: TestClient, db: Database, operator: Headers, acme: str, producer: str
) -> None:
    message = BINARY_PRODUCERS[producer](
        attrs("acme-ext", "dev.creditmeter.usage.v1.inference", id="bin-1"),
        usage(metadata={"request": "r-1"}),
    )
    assert "ce-specversion" in message.headers

    response = send(client, operator, message)

    assert response.status_code == 201, response.text
    assert response.json()["credits"] == estimate(client, operator)
    assert send(client, operator, message).json()["status"] == "duplicate"
    assert event_count(db, acme) == 1
    assert_clean(db)


def test_binary_mode_headers_are_percent_decoded(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Ünïcode Labs", "ünï labs")
    grant(client, operator, org)
    message = core_binary(attrs("ünï labs", id="evt with spaces é"), usage())
    assert message.headers["ce-subject"] != "ünï labs"  # the SDK percent-encodes it

    response = send(client, operator, message)

    assert response.status_code == 201, response.text
    assert response.json()["id"] == "evt with spaces é"


def test_binary_mode_with_an_explicit_json_content_type(
    client: TestClient, operator: Headers, acme: str
) -> None:
    message = core_binary(attrs(acme, id="bin-ct", datacontenttype="application/json"), usage())
    assert message.headers["content-type"] == "application/json"
    assert send(client, operator, message).status_code == 201


def test_a_structured_event_may_declare_json_data(
    client: TestClient, operator: Headers, acme: str
) -> None:
    message = core_structured(
        attrs(acme, id="ct-1", datacontenttype="application/json; charset=utf-8"), usage()
    )
    assert send(client, operator, message).status_code == 201


def test_project_and_member_come_from_data(
    client: TestClient, db: Database, operator: Headers, acme: str
) -> None:
    project = client.post(
        f"/v1/organizations/{acme}/projects", json={"name": "chatbot"}, headers=operator
    )
    assert project.status_code == 201, project.text
    response = send(
        client, operator, core_structured(attrs(acme, id="p-1"), usage(project="chatbot"))
    )
    assert response.status_code == 201, response.text
    with db.read() as s:
        stored = s.scalar(select(UsageEvent.project_id).where(UsageEvent.event_id == "p-1"))
    assert stored == project.json()["id"]

    unknown = send(client, operator, core_structured(attrs(acme, id="p-2"), usage(project="nope")))
    body = assert_problem(unknown, 422, "unknown_project")
    assert fields(body) == {"data.project"}


# ---- bad CloudEvents: 422 naming the attribute, nothing changes ---------------------------------


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda event: event.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda event: event.__setitem__(key, value)


def _set_quantity(event: dict[str, Any]) -> None:
    event["data"]["quantities"]["input_tokens"] = "-5"


def _data_key(event: dict[str, Any]) -> None:
    event["data"]["organization"] = "x"


BAD = {
    "missing specversion": (_drop("specversion"), "specversion", "validation_failed"),
    "specversion 0.3": (_set("specversion", "0.3"), "specversion", "validation_failed"),
    "specversion number": (_set("specversion", 1.0), "specversion", "validation_failed"),
    "missing id": (_drop("id"), "id", "validation_failed"),
    "empty id": (_set("id", ""), "id", "validation_failed"),
    "numeric id": (_set("id", 42), "id", "validation_failed"),
    "missing source": (_drop("source"), "source", "validation_failed"),
    "missing type": (_drop("type"), "type", "validation_failed"),
    "missing subject": (_drop("subject"), "subject", "validation_failed"),
    "unknown type": (_set("type", "com.example.thing.happened"), "type", "unknown_operation"),
    "unknown prefixed type": (
        _set("type", "com.creditmeter.usage.teleport"),
        "type",
        "unknown_operation",
    ),
    "prefix only": (_set("type", "com.creditmeter.usage"), "type", "validation_failed"),
    "bad time": (_set("time", "yesterday"), "time", "validation_failed"),
    "time without zone": (_set("time", "2026-01-01T00:00:00"), "time", "validation_failed"),
    "time as a number": (_set("time", 1767225600), "time", "validation_failed"),
    "data a string": (_set("data", "input_tokens=5"), "data", "validation_failed"),
    "data a list": (_set("data", [1, 2]), "data", "validation_failed"),
    "data missing": (_drop("data"), "data", "validation_failed"),
    "data_base64": (_set("data_base64", "aGk="), "data_base64", "validation_failed"),
    "xml data": (
        _set("datacontenttype", "application/xml"),
        "datacontenttype",
        "validation_failed",
    ),
    "organization in data": (_data_key, "data.organization", "validation_failed"),
    "negative quantity": (_set_quantity, "data.quantities.input_tokens", "invalid_quantity"),
    "upper-case attribute": (_set("Subject", "x"), "Subject", "validation_failed"),
    "cache_hit a string": (
        lambda e: e["data"].__setitem__("cache_hit", "yes"),
        "data.cache_hit",
        "validation_failed",
    ),
    "id too long": (_set("id", "x" * 300), "id", "validation_failed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_cloudevent_is_422_naming_the_attribute(
    client: TestClient, db: Database, operator: Headers, acme: str, case: str
) -> None:
    tamper, field, code = BAD[case]
    event = core_json(attrs(acme, id="bad-1"), usage())
    tamper(event)
    before = available(client, operator, acme)

    response = send_json(client, operator, event, STRUCTURED)

    body = assert_problem(response, 422, code)
    assert field in fields(body), body
    assert field.split(".")[0] in body["detail"] or code != "validation_failed", body
    assert available(client, operator, acme) == before
    assert event_count(db, acme) == 0


def test_every_problem_of_an_event_is_listed_at_once(
    client: TestClient, operator: Headers, acme: str
) -> None:
    event = core_json(attrs(acme, id="bad-2"), usage())
    del event["specversion"], event["source"]
    event["time"] = "soon"
    body = assert_problem(send_json(client, operator, event, STRUCTURED), 422, "validation_failed")
    assert fields(body) == {"specversion", "source", "time"}


def test_an_unknown_subject_is_404_unknown_organization(
    client: TestClient, operator: Headers, acme: str
) -> None:
    response = send(client, operator, core_structured(attrs("org_nope", id="u-1"), usage()))
    assert_problem(response, 404, "unknown_organization")


def test_an_event_too_old_is_refused(client: TestClient, operator: Headers, acme: str) -> None:
    old = clock.now() - timedelta(days=400)
    response = send(client, operator, core_structured(attrs(acme, id="o-1", time=old), usage()))
    body = assert_problem(response, 422, "event_too_old")
    assert fields(body) == {"time"}


def test_binary_mode_missing_attributes_are_named(
    client: TestClient, operator: Headers, acme: str
) -> None:
    message = core_binary(attrs(acme, id="b-bad"), usage())
    headers = {k: v for k, v in message.headers.items() if k not in {"ce-source", "ce-specversion"}}
    response = send(client, operator, Message(headers, message.body))
    body = assert_problem(response, 422, "validation_failed")
    assert fields(body) == {"source", "specversion"}

    empty = send(client, operator, Message(message.headers, b""))
    assert fields(assert_problem(empty, 422, "validation_failed")) == {"data"}


# ---- content types ------------------------------------------------------------------------------


def test_other_content_types_are_415(client: TestClient, operator: Headers, acme: str) -> None:
    event = core_json(attrs(acme, id="m-1"), usage())
    for content_type in ("text/plain", "application/json", "application/cloudevents+avro", ""):
        response = client.post(
            EVENTS,
            content=json.dumps(event),
            headers={**operator, "Content-Type": content_type},
        )
        body = assert_problem(response, 415, "unsupported_media_type")
        assert STRUCTURED in body["detail"]
    binary = core_binary(attrs(acme, id="m-2"), usage())
    wrong = send(client, operator, Message({**binary.headers, "content-type": "text/plain"}, b"x"))
    assert_problem(wrong, 415, "unsupported_media_type")


def test_malformed_bodies_are_422(client: TestClient, operator: Headers, acme: str) -> None:
    headers = {**operator, "Content-Type": STRUCTURED}
    assert_problem(client.post(EVENTS, content=b"{nope", headers=headers), 422, "validation_failed")
    assert_problem(client.post(EVENTS, content=b"", headers=headers), 422, "validation_failed")
    not_object = send_json(client, operator, "event", STRUCTURED)
    assert fields(assert_problem(not_object, 422, "validation_failed")) == {"event"}
    array = send_json(client, operator, [core_json(attrs(acme), usage())], STRUCTURED)
    assert BATCH in assert_problem(array, 422, "validation_failed")["detail"]
    obj = send_json(client, operator, core_json(attrs(acme), usage()), BATCH)
    assert_problem(obj, 422, "validation_failed")


# ---- batches ----------------------------------------------------------------------------------


@pytest.mark.parametrize("producer", sorted(JSON_PRODUCERS))
def test_a_batch_applies_each_event_on_its_own(
    client: TestClient, db: Database, operator: Headers, acme: str, producer: str
) -> None:
    make = JSON_PRODUCERS[producer]
    cost = estimate(client, operator)
    no_source = make(attrs(acme, id="b-2"), usage())
    del no_source["source"]
    first = make(attrs(acme, id="b-1"), usage())
    conflicting = json.loads(json.dumps(first))
    conflicting["data"]["quantities"]["input_tokens"] = "1"
    events: list[Any] = [
        first,
        no_source,
        make(attrs(acme, "com.creditmeter.usage.teleport", id="b-3"), usage()),
        make(attrs("org_nope", id="b-4"), usage()),
        make(attrs("acme-ext", "com.creditmeter.usage.inference", id="b-5"), usage()),
        dict(first),  # the same event again: a duplicate
        conflicting,  # the same id with another body
        "not an event",
        make(attrs(acme, id="b-6"), usage({"bogus": "1"})),
    ]

    response = send_batch(client, operator, events)

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["id"], r["status"]) for r in results] == [
        ("b-1", "applied"),
        ("b-2", "rejected"),
        ("b-3", "rejected"),
        ("b-4", "rejected"),
        ("b-5", "applied"),
        ("b-1", "duplicate"),
        ("b-1", "rejected"),
        (None, "rejected"),
        ("b-6", "rejected"),
    ]
    assert results[0]["credits"] == results[4]["credits"] == results[5]["credits"] == cost
    errors = [r.get("error") for r in results]
    assert fields(errors[1]) == {"source"}
    assert errors[2]["code"] == "unknown_operation"
    assert fields(errors[2]) == {"type"}
    assert errors[3]["code"] == "unknown_organization"
    assert errors[6]["code"] == "event_id_conflict"
    assert fields(errors[7]) == {"event"}
    assert errors[8]["code"] == "unknown_dimension"
    assert fields(errors[8]) == {"data.quantities.bogus"}
    assert float(available(client, operator, acme)) == pytest.approx(100 - 2 * float(cost))
    assert event_count(db, acme) == 2

    again = send_batch(client, operator, events)
    assert [r["status"] for r in again.json()["results"]][:1] == ["duplicate"]
    assert event_count(db, acme) == 2
    assert_clean(db)


def test_a_batch_validation_error_names_the_attribute(
    client: TestClient, operator: Headers, acme: str
) -> None:
    response = send_batch(
        client,
        operator,
        [core_json(attrs(acme, id="v-1"), usage(metadata="not an object"))],
    )
    (result,) = response.json()["results"]
    assert result["status"] == "rejected"
    assert fields(result["error"]) == {"data.metadata"}
    assert result["error"]["detail"].startswith("data.metadata:")


def test_an_empty_or_oversized_batch_is_422_and_changes_nothing(
    client: TestClient, db: Database, operator: Headers, acme: str
) -> None:
    assert_problem(send_batch(client, operator, []), 422, "validation_failed")
    one = core_json(attrs(acme, id="big"), usage())
    too_many = [{**one, "id": f"big-{i}"} for i in range(10_001)]
    body = assert_problem(send_batch(client, operator, too_many), 422, "validation_failed")
    assert "10,000" in body["detail"]
    assert event_count(db, acme) == 0
    assert available(client, operator, acme) == "100"


def test_usage_beyond_the_balance_goes_to_arrears(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Tiny")
    grant(client, operator, org, "0.001")
    response = send(client, operator, core_structured(attrs(org, id="a-1"), usage()))
    assert response.status_code == 201, response.text
    balance = response.json()["balance"]
    assert balance["paused"] is True
    assert float(balance["arrears"]) > 0
    assert_clean(db)


# ---- keys ------------------------------------------------------------------------------------


def test_an_ingest_key_sends_only_its_own_organizations_events(
    client: TestClient,
    db: Database,
    operator: Headers,
    acme: str,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    globex = make_org("Globex", "globex-ext")
    grant(client, operator, globex)
    key = make_key(acme, "org:ingest")

    own = send(client, key, core_structured(attrs("acme-ext", id="k-1"), usage()))
    assert own.status_code == 201, own.text
    for subject in (globex, "globex-ext"):
        other = send(client, key, core_structured(attrs(subject, id="k-2"), usage()))
        assert_problem(other, 404, "unknown_organization")
        binary = send(client, key, core_binary(attrs(subject, id="k-3"), usage()))
        assert_problem(binary, 404, "unknown_organization")
    batch = send_batch(
        client,
        key,
        [core_json(attrs(globex, id="k-4"), usage()), core_json(attrs(acme, id="k-5"), usage())],
    )
    results = batch.json()["results"]
    assert [r["status"] for r in results] == ["rejected", "applied"]
    assert results[0]["error"]["code"] == "unknown_organization"
    assert available(client, operator, globex) == "100"
    assert event_count(db, globex) == 0
    assert event_count(db, acme) == 2
    assert_clean(db)


def test_a_key_without_the_ingest_scope_is_refused(
    client: TestClient, acme: str, make_key: Callable[..., Headers]
) -> None:
    key = make_key(acme, "org:read")
    response = send(client, key, core_structured(attrs(acme, id="r-1"), usage()))
    assert_problem(response, 403, "insufficient_scope")
    anonymous = send(client, {}, core_structured(attrs(acme, id="r-2"), usage()))
    assert anonymous.status_code == 401


def test_the_endpoint_is_published(client: TestClient) -> None:
    post = client.get("/openapi.json").json()["paths"][EVENTS]["post"]
    assert {STRUCTURED, BATCH, "application/json"} <= post["requestBody"]["content"].keys()
