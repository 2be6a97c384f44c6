"""Every error as ``application/problem+json`` (RFC 9457) with a stable ``code``.

Validation errors carry field-level ``errors`` whose messages say what to send instead. Unexpected
exceptions become a 500 problem without internals; the transaction they happened in was rolled back.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from creditmeter.api.jsonio import encode, json_response, unreadable_body
from creditmeter.errors import CreditmeterError

log = logging.getLogger("creditmeter.api")
PROBLEM = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
}


def problem(
    status: int,
    code: str,
    detail: str,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = problem_body(status, code, detail, title, errors)
    return json_response(body, status, PROBLEM, headers)


def problem_body(
    status: int,
    code: str,
    detail: str,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The problem document (also used for per-event errors inside batch results)."""
    body: dict[str, Any] = {
        "type": f"https://creditmeter.dev/problems/{code.replace('_', '-')}",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors:
        body["errors"] = errors
    return body


#: Pydantic error types renamed to ours (``string_unicode``: a lone surrogate such as ``"\udc00"``).
_TYPES = {"string_unicode": "invalid_unicode"}
INVALID_UNICODE = (
    "must be valid Unicode text; it holds a lone surrogate (an escape such as \\udc00 that "
    "encodes no character), which cannot be stored"
)


def validation_errors(raw: Any) -> list[dict[str, Any]]:
    """Pydantic errors as field-level problem details whose messages say what to send instead."""
    return [
        {
            "field": "body" if e.get("type") == "json_invalid" else _field(tuple(e.get("loc", ()))),
            "message": _message(e),
            "type": _TYPES.get(e.get("type", ""), e.get("type", "invalid")),
        }
        for e in raw
    ]


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field; remove it (the accepted fields are listed at /docs)"
    if kind == "enum":
        return f"{err.get('input')!r} is not accepted; send one of {ctx.get('expected', '')}"
    if kind == "missing":
        return "this field is required"
    if kind == "json_invalid":
        return f"the body is not valid JSON ({ctx.get('error', 'parse error')})"
    if kind == "timezone_aware":
        return "send an RFC 3339 timestamp with a time zone, e.g. 2026-12-31T23:59:59Z"
    if kind in {"model_attributes_type", "dict_type"}:
        return "send a JSON object"
    if kind == "string_unicode":
        return INVALID_UNICODE
    return msg.removeprefix("Value error, ")


def error_response(exc: CreditmeterError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    title = None if exc.title == CreditmeterError.title else exc.title
    return problem(
        exc.status_code, exc.code, exc.detail, title, exc.errors or None, headers=headers
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(CreditmeterError)
    async def _domain(_: Request, exc: CreditmeterError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = validation_errors(exc.errors())
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(
            422, "validation_failed", detail or "the request is not valid", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a body its JSON parser could not read as a bare 400; say why instead.
        unreadable = unreadable_body(exc.__cause__) if exc.status_code == 400 else None
        if unreadable is not None:
            return error_response(unreadable)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = str(exc.detail) if exc.detail else _TITLES.get(exc.status_code, "error")
        return problem(exc.status_code, code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return problem(
            500,
            "internal_error",
            "an unexpected error occurred; nothing was changed. Please report it.",
        )


async def send_problem(
    send: Any, status: int, code: str, detail: str, *, close: bool = False
) -> None:
    """Answer a problem straight from a pure ASGI middleware (before any route runs): the same body
    as the error handler renders; ``close`` asks the client to drop the connection."""
    body = encode(problem_body(status, code, detail))
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
