"""CloudEvents 1.0 as usage events: the pure mapping behind ``POST /v1/events``.

A CloudEvent (the JSON event format, or the attributes of an HTTP binary-mode message) becomes the
body of a usage event as ``POST /v1/usage`` takes it:

=================  ====================================================================
CloudEvent         usage event
=================  ====================================================================
``id``             ``id`` (the idempotency key, unique per organization)
``subject``        ``organization`` (id or external id); required here
``type``           ``operation`` (see below)
``time``           ``occurred_at`` (RFC 3339; absent: the time the event is received)
``data``           a JSON object ``{quantities, project?, member?, cache_hit?, metadata?}``
``specversion``    must be ``"1.0"``
``source``         required by CloudEvents (a non-empty URI-reference); not stored
``datacontenttype`` absent or ``application/json`` (parameters such as charset allowed)
``dataschema``     optional, not used
extensions         lower-case letters and digits, scalar values; accepted and ignored
=================  ====================================================================

``type`` names the operation in one of two forms:

- the bare operation name of the rate card: ``inference``, ``training``, ``data_processing``, or an
  operator's own (``llm.chat``);
- a documented prefix followed by the operation name: ``com.creditmeter.usage.``,
  ``dev.creditmeter.usage.``, or either with a version segment ``v1.``
  (``com.creditmeter.usage.inference``, ``dev.creditmeter.usage.v1.inference``). Everything after
  the prefix is the operation (so operation names with dots work too).

Any other ``type`` must itself be an operation of the rate card, else the event is refused (422,
``unknown_operation``, field ``type``). Errors name the CloudEvent attribute (``subject``, ``time``,
``data.quantities.gpu_seconds``), never the usage-event field it maps to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote

from creditmeter.errors import InvalidRequest

SPECVERSION: Final = "1.0"
#: Documented ``type`` prefixes; the operation is everything after the prefix. Longest first.
TYPE_PREFIXES: Final = (
    "com.creditmeter.usage.v1.",
    "dev.creditmeter.usage.v1.",
    "com.creditmeter.usage.",
    "dev.creditmeter.usage.",
)
#: What ``data`` may hold (each maps to the usage-event field of the same name).
DATA_FIELDS: Final = ("quantities", "project", "member", "cache_hit", "metadata")
#: The context attributes CloudEvents 1.0 defines (the rest are extensions).
CONTEXT_ATTRIBUTES: Final = frozenset(
    {"id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time"}
)
DATA_CONTENT_TYPE: Final = "application/json"
BINARY_HEADER_PREFIX: Final = "ce-"

_EXTENSION_NAME = re.compile(r"[a-z0-9]+")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})", re.IGNORECASE
)
#: Usage-event fields -> the CloudEvent attribute they come from (for error messages).
_ATTRIBUTE_OF = {"id": "id", "organization": "subject", "operation": "type", "occurred_at": "time"}
_TYPE_HINT = (
    "the operation as its bare name (inference) or as com.creditmeter.usage.<operation> or "
    "dev.creditmeter.usage.<operation>, optionally with a v1. segment after usage."
)


def _error(field: str, message: str, kind: str) -> dict[str, str]:
    return {"field": field, "message": message, "type": kind}


def _invalid(errors: list[dict[str, str]]) -> InvalidRequest:
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return InvalidRequest(
        f"not a valid CloudEvent for creditmeter: {detail}",
        code="validation_failed",
        errors=errors,
    )


def operation_of(event_type: str) -> str | None:
    """The operation a CloudEvent ``type`` names (None: a documented prefix with nothing after it).
    Whether the operation exists is for the rate card to say."""
    if event_type in TYPE_PREFIXES or f"{event_type}." in TYPE_PREFIXES:
        return None
    for prefix in TYPE_PREFIXES:
        if event_type.startswith(prefix):
            return event_type[len(prefix) :]
    return event_type


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json`` (lower case; "" when absent)."""
    return (content_type or "").split(";")[0].strip().lower()


def _required_string(event: Mapping[str, Any], name: str, what: str) -> tuple[str | None, str]:
    """(value, "") or (None, message) for a required string attribute."""
    if name not in event:
        return None, f"this attribute is required: {what}"
    value = event[name]
    if not isinstance(value, str):
        return None, f"must be a string: {what}"
    if not value:
        return None, f"must not be empty: {what}"
    return value, ""


def parse_time(value: Any) -> datetime | str:
    """An RFC 3339 timestamp as a timezone-aware datetime, or the message saying what is wrong."""
    example = "send an RFC 3339 timestamp with a time zone, e.g. 2026-01-31T12:00:00Z"
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        return example
    text = value.upper().replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return f"{example} (the date or time is out of range)"


def to_usage_event(event: Any) -> dict[str, Any]:
    """Map one CloudEvent (JSON format, as parsed) to a usage-event body. Raises ``InvalidRequest``
    (422, code ``validation_failed``) listing every attribute that is missing or wrong."""
    if not isinstance(event, Mapping):
        raise _invalid([_error("event", "a CloudEvent is a JSON object", "type_error")])
    # The JSON format: a null attribute is the same as an absent one.
    event = {k: v for k, v in event.items() if v is not None}
    errors: list[dict[str, str]] = []
    out: dict[str, Any] = {}

    specversion = event.get("specversion")
    if specversion is None:
        errors.append(_error("specversion", 'this attribute is required: send "1.0"', "missing"))
    elif specversion != SPECVERSION:
        errors.append(
            _error(
                "specversion",
                f'must be "1.0" (CloudEvents 1.0), got {specversion!r}',
                "invalid_specversion",
            )
        )

    required = {
        "id": "the event id, your idempotency key",
        "source": "a URI-reference naming where the event comes from, e.g. /ai-engine",
        "type": _TYPE_HINT,
        "subject": "the organization (id or external id) the usage belongs to",
    }
    for name, what in required.items():
        value, message = _required_string(event, name, what)
        if value is None:
            kind = "missing" if name not in event else "invalid_attribute"
            errors.append(_error(name, message, kind))
            continue
        if name == "id":
            out["id"] = value
        elif name == "subject":
            out["organization"] = value
        elif name == "type":
            operation = operation_of(value)
            if operation is None:
                errors.append(
                    _error(
                        "type",
                        f"names no operation after its prefix; send {_TYPE_HINT}",
                        "invalid_type",
                    )
                )
            else:
                out["operation"] = operation

    if "time" in event:
        parsed = parse_time(event["time"])
        if isinstance(parsed, str):
            errors.append(_error("time", parsed, "invalid_time"))
        else:
            out["occurred_at"] = parsed

    content_type = event.get("datacontenttype")
    if content_type is not None and (
        not isinstance(content_type, str) or media_type(content_type) != DATA_CONTENT_TYPE
    ):
        errors.append(
            _error(
                "datacontenttype",
                f"must be {DATA_CONTENT_TYPE} (or absent), got {content_type!r}",
                "unsupported_datacontenttype",
            )
        )
    schema = event.get("dataschema")
    if schema is not None and (not isinstance(schema, str) or not schema):
        errors.append(_error("dataschema", "must be a non-empty URI", "invalid_attribute"))

    errors.extend(_extension_errors(event))
    errors.extend(_data(event, out))
    if errors:
        raise _invalid(errors)
    return out


def _extension_errors(event: Mapping[str, Any]) -> list[dict[str, str]]:
    errors = []
    for name, value in event.items():
        if name in CONTEXT_ATTRIBUTES or name in {"data", "data_base64"}:
            continue
        if not isinstance(name, str) or not _EXTENSION_NAME.fullmatch(name):
            hint = ""
            if isinstance(name, str) and name.lower() in CONTEXT_ATTRIBUTES:
                hint = f"; did you mean {name.lower()!r}?"
            errors.append(
                _error(
                    str(name),
                    f"CloudEvents attribute names are lower-case letters and digits{hint}",
                    "invalid_attribute_name",
                )
            )
        elif isinstance(value, (dict, list)):
            errors.append(
                _error(
                    name,
                    "an extension attribute's value must be a string, number or boolean",
                    "invalid_attribute",
                )
            )
    return errors


def _data(event: Mapping[str, Any], out: dict[str, Any]) -> list[dict[str, str]]:
    shape = '{"quantities": {...}, "project"?, "member"?, "cache_hit"?, "metadata"?}'
    if "data_base64" in event:
        return [
            _error(
                "data_base64",
                f"binary data is not accepted; send data as a JSON object {shape}",
                "unsupported_data",
            )
        ]
    if "data" not in event:
        return [_error("data", f"this attribute is required: a JSON object {shape}", "missing")]
    data = event["data"]
    if not isinstance(data, Mapping):
        return [_error("data", f"must be a JSON object {shape}", "invalid_data")]
    errors = []
    for key, value in data.items():
        if key in DATA_FIELDS:
            out[key] = value
        elif key in _ATTRIBUTE_OF:
            errors.append(
                _error(
                    f"data.{key}",
                    f"send it as the CloudEvent attribute {_ATTRIBUTE_OF[key]!r}, not in data",
                    "extra_forbidden",
                )
            )
        else:
            errors.append(
                _error(
                    f"data.{key}",
                    f"unknown field; data accepts only: {', '.join(DATA_FIELDS)}",
                    "extra_forbidden",
                )
            )
    return errors


def from_binary(
    headers: Iterable[tuple[str, str]], content_type: str | None, data: Any
) -> dict[str, Any]:
    """The JSON-format equivalent of an HTTP binary-mode CloudEvent: each ``ce-<name>`` header
    (percent-decoded) is the attribute ``<name>``, ``Content-Type`` is ``datacontenttype`` and the
    body (already parsed; None when empty) is ``data``. The first of repeated headers wins."""
    event: dict[str, Any] = {}
    for name, value in headers:
        lower = name.lower()
        if lower.startswith(BINARY_HEADER_PREFIX) and len(lower) > len(BINARY_HEADER_PREFIX):
            event.setdefault(lower[len(BINARY_HEADER_PREFIX) :], unquote(value))
    if content_type:
        event["datacontenttype"] = content_type
    if data is not None:
        event["data"] = data
    return event


def attribute_of(field: str) -> str:
    """The CloudEvent attribute a usage-event field comes from: ``organization`` -> ``subject``,
    ``quantities.gpu_seconds`` -> ``data.quantities.gpu_seconds``."""
    head, dot, rest = field.partition(".")
    if head in _ATTRIBUTE_OF:
        return _ATTRIBUTE_OF[head] + dot + rest
    if head in DATA_FIELDS:
        return f"data.{field}"
    return field


def as_attribute_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Field-level errors of a usage event, renamed to the CloudEvent attributes they come from."""
    renamed = []
    for e in errors:
        item = dict(e)
        field = item.get("field")
        if isinstance(field, str):
            item["field"] = attribute_of(field)
            if item["field"] == "type" and item.get("type") == "unknown_operation":
                item["message"] = f"{item.get('message', '')}; type is {_TYPE_HINT}"
        renamed.append(item)
    return renamed
