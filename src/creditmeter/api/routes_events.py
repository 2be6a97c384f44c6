"""``POST /v1/events``: usage events as CloudEvents 1.0, one (structured or binary mode) or a batch.

The mapping from CloudEvent attributes to usage events lives in ``creditmeter.metering.cloudevents``;
this router reads the HTTP message and answers exactly as ``POST /v1/usage`` (one event) and
``POST /v1/usage/batch`` (a batch) do.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from creditmeter.api.deps import DB, Caller
from creditmeter.api.jsonio import json_response, unreadable_body
from creditmeter.api.problems import problem_body, validation_errors
from creditmeter.api.routes_metering import Card, Config, _context, record_one
from creditmeter.api.schemas_metering import BatchOut, UsageEventIn, UsageOut
from creditmeter.api.usage_batch import apply_batch, echoed_id
from creditmeter.config import Settings
from creditmeter.errors import CreditmeterError, InvalidRequest
from creditmeter.kit.db import Database
from creditmeter.metering import cloudevents as ce
from creditmeter.metering.ingest import IngestContext
from creditmeter.orgs.service import Principal
from creditmeter.pricing.domain import RateCard

router = APIRouter(tags=["metering"])

STRUCTURED: Final = "application/cloudevents+json"
BATCH: Final = "application/cloudevents-batch+json"
MAX_BATCH: Final = 10_000

_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["specversion", "id", "source", "type", "subject", "data"],
    "properties": {
        "specversion": {"type": "string", "enum": ["1.0"]},
        "id": {"type": "string", "description": "Your id for the event: its idempotency key."},
        "source": {"type": "string", "description": "URI-reference, e.g. /ai-engine."},
        "type": {
            "type": "string",
            "description": "The operation: `inference`, or `com.creditmeter.usage.inference` "
            "(also `dev.creditmeter.usage.`, either with an optional `v1.` segment).",
        },
        "subject": {"type": "string", "description": "Organization id or external id."},
        "time": {"type": "string", "format": "date-time", "description": "occurred_at."},
        "datacontenttype": {"type": "string", "enum": ["application/json"]},
        "data": {
            "type": "object",
            "properties": {
                "quantities": {"type": "object"},
                "project": {"type": "string"},
                "member": {"type": "string"},
                "cache_hit": {"type": "boolean"},
                "metadata": {"type": "object"},
            },
            "additionalProperties": False,
        },
    },
}
_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            STRUCTURED: {"schema": _EVENT_SCHEMA},
            BATCH: {
                "schema": {
                    "type": "array",
                    "items": _EVENT_SCHEMA,
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                }
            },
            "application/json": {
                "schema": _EVENT_SCHEMA["properties"]["data"],
                "description": "Binary mode: the attributes as ce-specversion, ce-id, ce-source, "
                "ce-type, ce-subject and ce-time headers, the body is data.",
            },
        },
    }
}


async def raw_body(request: Request) -> bytes:
    return await request.body()


def _wrong_media(got: str) -> CreditmeterError:
    return CreditmeterError(
        f"send one CloudEvent as '{STRUCTURED}', a batch as '{BATCH}' (a JSON array), or one "
        f"event in binary mode as 'application/json' data with ce-specversion, ce-id, ce-source, "
        f"ce-type and ce-subject headers (got {got or 'no Content-Type'})",
        code="unsupported_media_type",
        status_code=415,
    )


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def _parse_json(body: bytes, *, empty_ok: bool = False) -> Any:
    if not body.strip() and empty_ok:
        return None
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        unreadable = unreadable_body(exc) if not isinstance(exc, _NotJson) else None
        if unreadable is not None:  # not UTF-8, nested too deeply: as on every other endpoint
            raise unreadable from exc
        message = f"the body is not valid JSON ({exc})"
        raise InvalidRequest(
            message,
            code="validation_failed",
            errors=[{"field": "body", "message": message, "type": "json_invalid"}],
        ) from exc


def _to_usage(event: Any) -> UsageEventIn:
    """A CloudEvent as a validated usage event; every error names the CloudEvent attribute."""
    mapped = ce.to_usage_event(event)
    try:
        return UsageEventIn.model_validate(mapped)
    except ValidationError as exc:
        errors = ce.as_attribute_errors(validation_errors(exc.errors()))
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidRequest(detail, code="validation_failed", errors=errors) from exc


def _renamed(error: dict[str, Any]) -> dict[str, Any]:
    """A batch result's problem with its field names turned into CloudEvent attributes."""
    if "errors" in error:
        error["errors"] = ce.as_attribute_errors(error["errors"])
        if error.get("code") == "validation_failed":
            error["detail"] = "; ".join(f"{e['field']}: {e['message']}" for e in error["errors"])
    return error


@router.post(
    "/v1/events",
    status_code=201,
    response_model=UsageOut,
    responses={
        200: {
            "model": BatchOut,
            "description": "A batch: one result per event, in order. One event: a duplicate, "
            "answered like POST /v1/usage with `status: duplicate`.",
        },
        415: {"description": "Not a CloudEvents content type this endpoint accepts."},
    },
    openapi_extra=_OPENAPI,
)
def receive_events(
    request: Request,
    body: Annotated[bytes, Depends(raw_body)],
    caller: Caller,
    db: DB,
    card: Card,
    settings: Config,
) -> Any:
    """Record usage sent as CloudEvents 1.0.

    - `application/cloudevents+json`: one event (structured mode), answered like `POST /v1/usage`
      (201 applied, 200 duplicate, a problem otherwise).
    - `application/cloudevents-batch+json`: a JSON array of 1 to 10,000 events, answered like
      `POST /v1/usage/batch` (200 with one result per event; a rejected event changes nothing).
    - `application/json` with `ce-*` headers: one event in binary mode (the body is `data`).

    Mapping: `id` -> event id, `subject` -> organization, `type` -> operation (the bare name such as
    `inference`, or `com.creditmeter.usage.<operation>` / `dev.creditmeter.usage.<operation>`, with an
    optional `v1.` segment), `time` -> occurred_at, `data` -> `{quantities, project?, member?,
    cache_hit?, metadata?}`. `specversion` must be "1.0" and `source` is required."""
    ctx = _context(caller, card, settings, db)  # scope checks before the body is read
    content_type = request.headers.get("content-type")
    media = ce.media_type(content_type)
    if media == BATCH:
        events = _parse_json(body)
        return json_response({"results": _batch(db, ctx, events)})
    if media == STRUCTURED:
        event = _parse_json(body)
        if isinstance(event, list):
            raise InvalidRequest(
                f"the body is a JSON array: send a batch as '{BATCH}'",
                code="validation_failed",
                errors=[
                    {"field": "body", "message": "one event is a JSON object", "type": "type_error"}
                ],
            )
        return _single(event, caller, db, card, settings)
    binary = any(name.lower().startswith(ce.BINARY_HEADER_PREFIX) for name in request.headers)
    if binary and media in {"", ce.DATA_CONTENT_TYPE}:
        data = _parse_json(body, empty_ok=True)
        event = ce.from_binary(request.headers.items(), content_type, data)
        return _single(event, caller, db, card, settings)
    raise _wrong_media(media)


def _single(event: Any, caller: Principal, db: Database, card: RateCard, settings: Settings) -> Any:
    usage_event = _to_usage(event)
    try:
        return record_one(usage_event, caller, db, card, settings)
    except CreditmeterError as exc:
        exc.errors = ce.as_attribute_errors(exc.errors)
        raise


def _batch(db: Database, ctx: IngestContext, events: Any) -> list[Any]:
    if not isinstance(events, list):
        raise InvalidRequest(
            f"a '{BATCH}' body is a JSON array of CloudEvents",
            code="validation_failed",
            errors=[{"field": "body", "message": "send a JSON array", "type": "list_type"}],
        )
    if not events or len(events) > MAX_BATCH:
        message = (
            f"a batch holds 1 to {MAX_BATCH:,} events (got {len(events):,}); nothing was applied"
        )
        raise InvalidRequest(
            message,
            code="validation_failed",
            errors=[{"field": "body", "message": message, "type": "batch_size"}],
        )
    results: list[dict[str, Any] | None] = []
    mapped: list[dict[str, Any]] = []
    for event in events:
        try:
            mapped.append(ce.to_usage_event(event))
            results.append(None)
        except InvalidRequest as exc:
            results.append(
                {
                    "id": echoed_id(event),
                    "status": "rejected",
                    "error": _problem(exc),
                }
            )
    applied = iter(apply_batch(db, ctx, mapped) if mapped else [])
    return [slot if slot is not None else _result(next(applied)) for slot in results]


def _result(item: dict[str, Any]) -> dict[str, Any]:
    if "error" in item:
        item["error"] = _renamed(item["error"])
    return item


def _problem(exc: InvalidRequest) -> dict[str, Any]:
    return problem_body(exc.status_code, exc.code, exc.detail, errors=exc.errors or None)
