"""The root of every error creditmeter raises on purpose.

Each error carries a stable machine-readable ``code`` and an HTTP ``status_code``. The API renders it as
``application/problem+json``; the CLI maps it to an exit code. Subclasses live next to the code that
raises them.
"""

from __future__ import annotations

from typing import Any


class CreditmeterError(Exception):
    code = "error"
    status_code = 400
    title = "Request failed"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.errors = errors or []


class NotFound(CreditmeterError):
    code = "not_found"
    status_code = 404
    title = "Not found"


class Conflict(CreditmeterError):
    code = "conflict"
    status_code = 409
    title = "Conflict"


class Forbidden(CreditmeterError):
    code = "forbidden"
    status_code = 403
    title = "Forbidden"


class Unauthorized(CreditmeterError):
    code = "unauthorized"
    status_code = 401
    title = "Unauthorized"


class InvalidRequest(CreditmeterError):
    code = "invalid_request"
    status_code = 422
    title = "Invalid request"
