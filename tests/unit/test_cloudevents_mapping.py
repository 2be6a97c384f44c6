"""The pure mapping from a CloudEvent (JSON format or binary-mode headers) to a usage event."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1 import conversion as v1_conversion
from cloudevents.v1.http import CloudEvent as V1CloudEvent

from creditmeter.errors import InvalidRequest
from creditmeter.metering.cloudevents import (
    as_attribute_errors,
    attribute_of,
    from_binary,
    media_type,
    operation_of,
    parse_time,
    to_usage_event,
)


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/ai-engine",
        "type": "inference",
        "subject": "org_1",
        "time": "2026-03-01T12:00:00Z",
        "data": {"quantities": {"input_tokens": "10"}},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def errors_of(raw: Any) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as info:
        to_usage_event(raw)
    assert info.value.status_code == 422
    assert info.value.code == "validation_failed"
    return {e["field"]: e["type"] for e in info.value.errors}


@pytest.mark.parametrize(
    ("type_", "operation"),
    [
        ("inference", "inference"),
        ("training", "training"),
        ("llm.chat", "llm.chat"),
        ("com.creditmeter.usage.inference", "inference"),
        ("dev.creditmeter.usage.inference", "inference"),
        ("com.creditmeter.usage.v1.inference", "inference"),
        ("dev.creditmeter.usage.v1.data_processing", "data_processing"),
        ("com.creditmeter.usage.llm.chat", "llm.chat"),
        ("com.creditmeter.usage.v2.inference", "v2.inference"),
        ("com.example.inference", "com.example.inference"),
        ("Com.Creditmeter.Usage.inference", "Com.Creditmeter.Usage.inference"),
        ("com.creditmeter.usage", None),
        ("com.creditmeter.usage.", None),
        ("dev.creditmeter.usage.v1", None),
        ("dev.creditmeter.usage.v1.", None),
    ],
)
def test_type_names_the_operation(type_: str, operation: str | None) -> None:
    assert operation_of(type_) == operation


def test_a_full_event_maps_to_a_usage_event() -> None:
    data = {
        "quantities": {"gpu_seconds": "3600", "accelerator": "a100"},
        "project": "chatbot",
        "member": "ada@example.com",
        "cache_hit": True,
        "metadata": {"model": "m-1"},
    }
    raw = event(type="com.creditmeter.usage.training", data=data, traceparent="00-abc", rate=3)
    assert to_usage_event(raw) == {
        "id": "evt-1",
        "organization": "org_1",
        "operation": "training",
        "occurred_at": datetime(2026, 3, 1, 12, tzinfo=UTC),
        **data,
    }


def test_time_is_optional_and_data_fields_too() -> None:
    mapped = to_usage_event(event(time=..., data={}))
    assert mapped == {"id": "evt-1", "organization": "org_1", "operation": "inference"}


def test_null_attributes_are_absent() -> None:
    assert "occurred_at" not in to_usage_event(event(time=None, dataschema=None))
    assert errors_of(event(source=None)) == {"source": "missing"}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"specversion": ...}, {"specversion": "missing"}),
        ({"specversion": "0.3"}, {"specversion": "invalid_specversion"}),
        ({"specversion": 1.0}, {"specversion": "invalid_specversion"}),
        ({"id": ...}, {"id": "missing"}),
        ({"id": ""}, {"id": "invalid_attribute"}),
        ({"id": 7}, {"id": "invalid_attribute"}),
        ({"source": ...}, {"source": "missing"}),
        ({"source": ""}, {"source": "invalid_attribute"}),
        ({"type": ...}, {"type": "missing"}),
        ({"type": "com.creditmeter.usage."}, {"type": "invalid_type"}),
        ({"subject": ...}, {"subject": "missing"}),
        ({"subject": ["org_1"]}, {"subject": "invalid_attribute"}),
        ({"time": "yesterday"}, {"time": "invalid_time"}),
        ({"time": "2026-03-01T12:00:00"}, {"time": "invalid_time"}),
        ({"time": "2026-03-01 12:00:00Z"}, {"time": "invalid_time"}),
        ({"time": "2026-02-30T12:00:00Z"}, {"time": "invalid_time"}),
        ({"time": 1767225600}, {"time": "invalid_time"}),
        ({"datacontenttype": "text/plain"}, {"datacontenttype": "unsupported_datacontenttype"}),
        ({"datacontenttype": 5}, {"datacontenttype": "unsupported_datacontenttype"}),
        ({"dataschema": ""}, {"dataschema": "invalid_attribute"}),
        ({"data": ...}, {"data": "missing"}),
        ({"data": "tokens=5"}, {"data": "invalid_data"}),
        ({"data": [1]}, {"data": "invalid_data"}),
        ({"data": ..., "data_base64": "aGk="}, {"data_base64": "unsupported_data"}),
        ({"data": {"operation": "x"}}, {"data.operation": "extra_forbidden"}),
        ({"data": {"hold": "hold_1"}}, {"data.hold": "extra_forbidden"}),
        ({"Type": "inference"}, {"Type": "invalid_attribute_name"}),
        ({"trace-id": "x"}, {"trace-id": "invalid_attribute_name"}),
        ({"labels": {"a": "b"}}, {"labels": "invalid_attribute"}),
    ],
)
def test_a_bad_attribute_is_named(overrides: dict[str, Any], expected: dict[str, str]) -> None:
    assert errors_of(event(**overrides)) == expected


def test_every_bad_attribute_is_listed_and_the_detail_names_them() -> None:
    with pytest.raises(InvalidRequest) as info:
        to_usage_event(event(specversion=..., source=..., time="soon", data="x"))
    assert [e["field"] for e in info.value.errors] == ["specversion", "source", "time", "data"]
    for name in ("specversion", "source", "time", "data"):
        assert name in info.value.detail


def test_an_event_must_be_an_object() -> None:
    assert errors_of([event()]) == {"event": "type_error"}
    assert errors_of("evt") == {"event": "type_error"}


def test_time_keeps_its_offset_and_precision() -> None:
    parsed = parse_time("2026-03-01T12:00:00.123456789+05:30")
    assert parsed == datetime(2026, 3, 1, 6, 30, 0, 123456, tzinfo=UTC)
    assert isinstance(parsed, datetime)
    assert parsed.utcoffset() == timedelta(hours=5, minutes=30)
    assert parse_time("2026-03-01t12:00:00z") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert isinstance(parse_time("2026-03-01T24:00:00Z"), str)


def test_media_types_ignore_parameters_and_case() -> None:
    assert media_type("Application/JSON; charset=utf-8") == "application/json"
    assert media_type(None) == ""
    assert to_usage_event(event(datacontenttype="application/json; charset=utf-8"))


def test_binary_mode_headers_become_attributes() -> None:
    headers = [
        ("ce-specversion", "1.0"),
        ("CE-ID", "evt%20%C3%A9"),
        ("ce-source", "/ai-engine"),
        ("ce-type", "dev.creditmeter.usage.v1.inference"),
        ("ce-subject", "acme%20corp"),
        ("ce-time", "2026-03-01T12:00:00Z"),
        ("ce-id", "ignored: the first header wins"),
        ("authorization", "Bearer x"),
        ("ce-", "no name"),
    ]
    raw = from_binary(headers, "application/json", {"quantities": {}})
    assert raw == {
        "specversion": "1.0",
        "id": "evt é",
        "source": "/ai-engine",
        "type": "dev.creditmeter.usage.v1.inference",
        "subject": "acme corp",
        "time": "2026-03-01T12:00:00Z",
        "datacontenttype": "application/json",
        "data": {"quantities": {}},
    }
    assert to_usage_event(raw)["organization"] == "acme corp"
    assert "data" not in from_binary(headers, None, None)
    assert "datacontenttype" not in from_binary(headers, None, None)


def _sdk2_structured(attributes: dict[str, Any], data: Any) -> Any:
    return json.loads(ce_http.to_structured_event(CloudEvent(attributes, data)).body)


def _sdk1_structured(attributes: dict[str, Any], data: Any) -> Any:
    return json.loads(v1_conversion.to_structured(V1CloudEvent(attributes, data))[1])


def _sdk1_dict(attributes: dict[str, Any], data: Any) -> Any:
    return v1_conversion.to_dict(V1CloudEvent(attributes, data))


def _sdk2_binary(attributes: dict[str, Any], data: Any) -> Any:
    message = ce_http.to_binary_event(CloudEvent(attributes, data))
    return from_binary(
        message.headers.items(), message.headers.get("content-type"), json.loads(message.body)
    )


def _sdk1_binary(attributes: dict[str, Any], data: Any) -> Any:
    headers, body = v1_conversion.to_binary(V1CloudEvent(attributes, data))
    return from_binary(headers.items(), headers.get("content-type"), json.loads(body))


@pytest.mark.parametrize(
    "produce", [_sdk2_structured, _sdk1_structured, _sdk1_dict, _sdk2_binary, _sdk1_binary]
)
def test_what_the_official_sdk_produces_maps(produce: Any) -> None:
    at = datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=timezone(timedelta(hours=-5)))
    attributes: dict[str, Any] = {
        "type": "com.creditmeter.usage.inference",
        "source": "https://engine.example.com/workers/7",
        "subject": "acme ext é",
        "id": "evt-42",
        "time": at if produce in {_sdk2_structured, _sdk2_binary} else at.isoformat(),
        "partitionkey": "acme",
    }
    data = {"quantities": {"input_tokens": "1200"}, "metadata": {"k": "v"}}
    assert to_usage_event(produce(attributes, data)) == {
        "id": "evt-42",
        "organization": "acme ext é",
        "operation": "inference",
        "occurred_at": at,
        **data,
    }


def test_the_sdk_json_format_round_trips() -> None:
    """The JSON we read is the JSON the SDK writes: our mapping and the SDK's reader agree."""
    original = CloudEvent(
        {"type": "inference", "source": "/e", "subject": "org_1", "id": "x"},
        {"quantities": {"output_tokens": "5"}},
    )
    body = JSONFormat().write(original)
    mapped = to_usage_event(json.loads(body))
    read = JSONFormat().read(None, body)
    assert mapped["id"] == read.get_id()
    assert mapped["organization"] == read.get_subject()
    assert mapped["occurred_at"] == read.get_time()
    assert mapped["quantities"] == read.get_data()["quantities"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("field", "attribute"),
    [
        ("id", "id"),
        ("organization", "subject"),
        ("operation", "type"),
        ("occurred_at", "time"),
        ("quantities", "data.quantities"),
        ("quantities.gpu_seconds", "data.quantities.gpu_seconds"),
        ("project", "data.project"),
        ("member", "data.member"),
        ("cache_hit", "data.cache_hit"),
        ("metadata", "data.metadata"),
        ("body", "body"),
    ],
)
def test_usage_fields_are_named_by_their_attribute(field: str, attribute: str) -> None:
    assert attribute_of(field) == attribute


def test_errors_are_renamed_without_being_changed_in_place() -> None:
    original = [
        {"field": "operation", "message": "send one of: inference", "type": "unknown_operation"},
        {"field": "quantities.x", "message": "no such dimension", "type": "unknown_dimension"},
    ]
    renamed = as_attribute_errors(original)
    assert [e["field"] for e in renamed] == ["type", "data.quantities.x"]
    assert "com.creditmeter.usage.<operation>" in renamed[0]["message"]
    assert original[0]["field"] == "operation"
