"""The SDK's error tree, rebuilt from the server's ``application/problem+json`` bodies.

Every failure a call can end in is a :class:`CreditmeterError`; catch the subclass you can act on::

    CreditmeterError                 root: code, status, title, detail, errors, response
    ├── ConnectionFailed             no answer after every retry (status is None)
    │   └── RequestTimedOut          ... because the last attempt timed out
    ├── UnexpectedResponse           a 2xx answer the SDK cannot read (not JSON, missing fields)
    ├── ValidationFailed             422 (and 400, 413, 415): the request is malformed
    ├── AuthenticationError          401: no API key, or an unknown or revoked one
    ├── PermissionDenied             403: the key may not do this
    ├── NotFound                     404
    ├── Conflict                     409: e.g. an id or Idempotency-Key reused with another body
    │   └── HoldNotActive                the hold expired, or was released or settled already
    ├── InsufficientCredits          402 insufficient_credits: the gate or a hold said no
    │   ├── ProjectBudgetExceeded        project_budget_exceeded
    │   └── OrganizationSuspended        organization_suspended
    ├── RateLimited                  429 (after honouring Retry-After on every retry)
    └── ServerError                  5xx (after every retry)

The class is chosen by the problem ``code`` first (:data:`CODE_CLASSES`) and by the HTTP status when
the code is not one the SDK knows (:data:`STATUS_CLASSES`); ``code`` always keeps the server's exact
value. Errors in the caller's own arguments (a float where credits are expected, an empty API key) are
plain ``TypeError``/``ValueError`` raised before anything is sent.

This tree is the SDK's own: it does not import the server's ``creditmeter.errors``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from creditmeter.client._models import BatchProgress

_SECONDS = re.compile(r"[0-9]+(\.[0-9]+)?")


class CreditmeterError(Exception):
    """Root of every error the SDK raises for a failed call.

    ``code`` is the server's stable machine-readable code (e.g. ``insufficient_credits``), ``status``
    the HTTP status (``None`` when no response arrived), ``title``/``detail`` the human text,
    ``errors`` the field-level problems (``[{"field", "message", "type"}]``) and ``response`` the
    last :class:`httpx.Response`, if any. ``batch_progress`` is set only by ``record_batch``: what
    was applied before this failure and the events (with their ids) of the batch that failed.
    """

    code: str = "error"
    status: int | None = None
    title: str = "Request failed"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        response: httpx.Response | None = None,
        problem_type: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.errors: list[dict[str, Any]] = list(errors or [])
        self.response = response
        self.problem_type = problem_type
        self.batch_progress: BatchProgress | None = None

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no response"
        return f"{self.detail} [{self.code}, {where}]"


class ConnectionFailed(CreditmeterError):
    """The server could not be reached, or the connection broke, on every attempt.

    A write may or may not have been applied: resend it with the same event id (or idempotency
    key) and the server answers with the original result instead of charging twice."""

    code = "connection_failed"
    title = "Connection failed"


class RequestTimedOut(ConnectionFailed):
    """The last attempt timed out (connecting, writing, waiting for or reading the answer)."""

    code = "timeout"
    title = "Request timed out"


class UnexpectedResponse(CreditmeterError):
    """A successful status whose body the SDK cannot read: not JSON, or a required field missing."""

    code = "unexpected_response"
    title = "Unexpected response"


class ValidationFailed(CreditmeterError):
    """The server refused the request as malformed; ``errors`` names each wrong field."""

    code = "validation_failed"
    status = 422
    title = "Invalid request"


class AuthenticationError(CreditmeterError):
    """No API key was sent, or the key is unknown, revoked or expired (401)."""

    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class PermissionDenied(CreditmeterError):
    """The API key is valid but may not do this, e.g. another organization's events (403)."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(CreditmeterError):
    """The organization, project, member or hold does not exist (or is not visible to the key)."""

    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(CreditmeterError):
    """The request contradicts an earlier one, e.g. an event id reused with a different body."""

    code = "conflict"
    status = 409
    title = "Conflict"


class HoldNotActive(Conflict):
    """The hold can no longer be extended or settled: ``code`` is ``hold_expired``,
    ``hold_released``, ``hold_settled`` or ``hold_already_settled``."""

    code = "hold_expired"
    title = "Hold not active"


class InsufficientCredits(CreditmeterError):
    """The organization may not spend this now: a hold was refused (402) or ``metered`` was
    refused by the gate. Nothing was reserved or recorded.

    The gate's other refusals derive from this class, so one ``except InsufficientCredits``
    catches every "cannot spend" answer; ``code`` says which one it was."""

    code = "insufficient_credits"
    status = 402
    title = "Insufficient credits"


class ProjectBudgetExceeded(InsufficientCredits):
    """The project's monthly budget is spent; the rest of the organization may still run."""

    code = "project_budget_exceeded"
    title = "Project budget exceeded"


class OrganizationSuspended(InsufficientCredits):
    """The organization is suspended (e.g. for non-payment) and may not start operations."""

    code = "organization_suspended"
    title = "Organization suspended"


class RateLimited(CreditmeterError):
    """Too many requests (429), still refused after the retries. ``retry_after`` is the wait in
    seconds the server last asked for, if it said."""

    code = "rate_limited"
    status = 429
    title = "Too many requests"
    retry_after: float | None = None


class ServerError(CreditmeterError):
    """The server failed (5xx) on every attempt. Writes were resent with the same idempotency key,
    so none of them was applied twice."""

    code = "internal_error"
    status = 500
    title = "Server error"


#: Problem ``code`` -> exception class. Codes not listed fall back to :data:`STATUS_CLASSES`.
CODE_CLASSES: dict[str, type[CreditmeterError]] = {
    "insufficient_credits": InsufficientCredits,
    "project_budget_exceeded": ProjectBudgetExceeded,
    "organization_suspended": OrganizationSuspended,
    "suspended_for_nonpayment": OrganizationSuspended,
    "validation_failed": ValidationFailed,
    "invalid_request": ValidationFailed,
    "unsupported_media_type": ValidationFailed,
    "unauthorized": AuthenticationError,
    "missing_api_key": AuthenticationError,
    "invalid_api_key": AuthenticationError,
    "forbidden": PermissionDenied,
    "insufficient_scope": PermissionDenied,
    "operator_only": PermissionDenied,
    "environment_mismatch": PermissionDenied,
    "not_found": NotFound,
    "conflict": Conflict,
    "idempotency_key_reused": Conflict,
    "event_id_conflict": Conflict,
    "hold_expired": HoldNotActive,
    "hold_released": HoldNotActive,
    "hold_settled": HoldNotActive,
    "hold_already_settled": HoldNotActive,
    "rate_limited": RateLimited,
    "internal_error": ServerError,
}

#: HTTP status -> exception class, for codes the SDK does not know (any other 5xx is a ServerError).
STATUS_CLASSES: dict[int, type[CreditmeterError]] = {
    400: ValidationFailed,
    401: AuthenticationError,
    402: InsufficientCredits,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: ValidationFailed,
    415: ValidationFailed,
    422: ValidationFailed,
    429: RateLimited,
}


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 problem as the server sends it (also a rejected event inside a batch result)."""

    code: str
    status: int | None
    title: str
    detail: str
    type: str | None = None
    errors: tuple[dict[str, Any], ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Any, status: int | None = None) -> Problem:
        """Read a problem body leniently: a missing field gets a neutral default, never a crash."""
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        raw_status = data.get("status", status)
        listed = data.get("errors")
        errors = tuple(e for e in listed if isinstance(e, dict)) if isinstance(listed, list) else ()
        return cls(
            code=str(data.get("code") or "error"),
            status=raw_status if isinstance(raw_status, int) else status,
            title=str(data.get("title") or ""),
            detail=str(data.get("detail") or data.get("title") or "request failed"),
            type=str(data["type"]) if data.get("type") else None,
            errors=errors,
            raw=data,
        )

    def to_error(self, response: httpx.Response | None = None) -> CreditmeterError:
        """The typed exception for this problem (by code, then by status)."""
        status = self.status if self.status is not None else getattr(response, "status_code", None)
        cls = error_class(self.code, status)
        return cls(
            self.detail,
            code=self.code,
            status=status,
            title=self.title or None,
            errors=list(self.errors),
            response=response,
            problem_type=self.type,
        )


def error_class(code: str | None, status: int | None) -> type[CreditmeterError]:
    """The class for a problem ``code``, falling back by HTTP ``status``."""
    if code and code in CODE_CLASSES:
        return CODE_CLASSES[code]
    if status is not None:
        if status in STATUS_CLASSES:
            return STATUS_CLASSES[status]
        if status >= 500:
            return ServerError
    return CreditmeterError


def error_from_response(response: httpx.Response) -> CreditmeterError:
    """Rebuild the typed exception for a non-2xx response (problem+json or not)."""
    status = response.status_code
    try:
        body = json.loads(response.content, parse_float=Decimal)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        problem = replace(Problem.from_json(body), status=status)
    else:
        # Not a creditmeter problem (a proxy, a load balancer): the status decides the class.
        cls = error_class(None, status)
        code = cls.code if cls is not CreditmeterError else "http_error"
        text = response.text.strip()[:200] or response.reason_phrase or "request failed"
        problem = Problem(code, status, response.reason_phrase, text)
    error = problem.to_error(response)
    if isinstance(error, RateLimited):
        error.retry_after = parse_retry_after(response)
    return error


def parse_retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def connection_failed(exc: httpx.TransportError, attempts: int) -> ConnectionFailed:
    """The error for a transport failure that survived every retry."""
    cls = RequestTimedOut if isinstance(exc, httpx.TimeoutException) else ConnectionFailed
    detail = f"{type(exc).__name__}: {exc or 'no detail'} (after {attempts} attempt(s))"
    return cls(detail)
