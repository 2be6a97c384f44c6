"""Run a creating request at most once per ``Idempotency-Key``.

The response body is stored in the same transaction as the change it reports (behind a unique
constraint), so a retry after a timeout, a crash or a lost response returns the first result; the same
key with a different body is a 409 and changes nothing. Without a key the request simply runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from creditmeter.kit import clock
from creditmeter.kit import idempotency as idem
from creditmeter.kit.db import Database


def run_once(
    db: Database,
    scope: str,
    key: str | None,
    request: Any,
    create: Callable[[Session], dict[str, Any]],
    status_code: int = 201,
) -> JSONResponse:
    """Call ``create`` in a write transaction unless this key already has a stored response.

    ``create`` returns the JSON-ready response body; ``request`` is what makes two requests "the
    same" (the parsed body plus anything else that changes the outcome)."""
    if key is None:
        with db.write() as session:
            return JSONResponse(create(session), status_code=status_code)
    key = idem.check_key(key)
    fingerprint = idem.request_fingerprint(request)
    try:
        with db.write() as session:
            stored = idem.lookup(session, scope, key, fingerprint)
            if stored is not None:
                return JSONResponse(stored.body, status_code=stored.status_code)
            body = create(session)
            idem.store(session, scope, key, fingerprint, status_code, body, clock.now())
            return JSONResponse(body, status_code=status_code)
    except IntegrityError:
        # A concurrent twin with the same key committed first: answer with its result.
        with db.read() as session:
            stored = idem.lookup(session, scope, key, fingerprint)
        if stored is None:
            raise
        return JSONResponse(stored.body, status_code=stored.status_code)
