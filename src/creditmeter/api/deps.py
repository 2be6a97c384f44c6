"""Dependencies shared by the routers: the database, the caller and the access rules."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from creditmeter.api import org_refs
from creditmeter.config import Settings
from creditmeter.errors import CreditmeterError, Forbidden, NotFound, Unauthorized
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.kit.pagination import MAX_LIMIT
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Principal, Scope

bearer = HTTPBearer(auto_error=False, description="An API key: `cm_live_…` or `cm_test_…`.")


async def json_body(request: Request) -> None:
    """Refuse a request body that is not JSON with 415 (instead of guessing at it)."""
    if request.method not in {"POST", "PUT", "PATCH"}:
        return
    has_body = request.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in request.headers
    )
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if has_body and media_type != "application/json" and not media_type.endswith("+json"):
        raise CreditmeterError(
            f"send the body as JSON with 'Content-Type: application/json' (got "
            f"{media_type or 'no Content-Type'})",
            code="unsupported_media_type",
            status_code=415,
        )


# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in its
# thread pool, one hop per dependency per request.
async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def bearer_secret(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The bearer secret of the request (401 when there is none); checked by the caller."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized(
            "send your API key as 'Authorization: Bearer cm_live_…'", code="missing_api_key"
        )
    return credentials.credentials


def record_key_use(db: Database, principal: Principal, now: datetime) -> None:
    """Record the key's last use (called at most once per touch interval per key)."""
    with db.write() as session:
        orgs.touch_api_key(session, principal.key_id, now)


async def get_principal(
    db: Annotated[Database, Depends(get_db)],
    settings: Annotated[Settings, Depends(get_settings)],
    secret: Annotated[str, Depends(bearer_secret)],
) -> Principal:
    """The caller behind the API key (401 for none, an unknown or a revoked key). The lookup is one
    indexed read: on SQLite (a local file, where readers never wait) it runs on the event loop, saving
    a thread-pool hop per request; on PostgreSQL (a network round trip) in the thread pool."""
    now = clock.now()
    interval = settings.key_touch_interval_seconds
    if db.dialect == "sqlite":
        principal, touch = orgs.authenticate(db.hot_engine, secret, now, interval)
    else:
        principal, touch = await run_in_threadpool(
            orgs.authenticate, db.hot_engine, secret, now, interval
        )
    if touch:
        await run_in_threadpool(record_key_use, db, principal, now)
    return principal


DB = Annotated[Database, Depends(get_db)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=200)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", description="Retries with the same key return the first result."
    ),
]
Caller = Annotated[Principal, Depends(get_principal)]
#: ``?environment=``: operator keys may act on the other environment (``environment_for``).
Env = Annotated[
    Literal["live", "test"] | None,
    Query(description="Operator keys only: the environment to act on (default: the key's)."),
]
BearerSecret = Annotated[str, Depends(bearer_secret)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

READ_SCOPES = frozenset({Scope.ORG_ADMIN, Scope.ORG_READ})
BALANCE_SCOPES = frozenset({Scope.ORG_ADMIN, Scope.ORG_READ, Scope.ORG_INGEST})
ADMIN_SCOPES = frozenset({Scope.ORG_ADMIN})


def authorize_org(principal: Principal, org_id: str, scopes: frozenset[str]) -> None:
    """Operators reach every organization. An organization key reaches only its own: for any other
    organization it gets the same 404 as for one that does not exist, so existence never leaks."""
    if principal.is_operator:
        return
    if principal.organization_id != org_id:
        raise NotFound(f"organization {org_refs.shown(org_id)} not found")
    if not principal.scopes & scopes:
        needed = " or ".join(sorted(scopes))
        raise Forbidden(
            f"this API key lacks the scope for this action (needs {needed})",
            code="insufficient_scope",
        )


def require_operator(principal: Principal) -> None:
    if not principal.is_operator:
        raise Forbidden("only an operator key may do this", code="operator_only")


def environment_for(principal: Principal, requested: str | None) -> str:
    """A key works in its own environment; an operator key may ask for the other one."""
    if requested is None or requested == principal.environment:
        return principal.environment
    if principal.is_operator:
        return requested
    raise Forbidden(
        f"this {principal.environment} key cannot act on the {requested} environment",
        code="environment_mismatch",
    )
