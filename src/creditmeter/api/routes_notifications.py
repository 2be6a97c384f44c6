"""E-mail: the outbox of messages, members' notification preferences and the public unsubscribe
link."""

from __future__ import annotations

import html
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from creditmeter.api.deps import (
    ADMIN_SCOPES,
    DB,
    READ_SCOPES,
    Caller,
    Cursor,
    Limit,
    authorize_org,
    environment_for,
    require_operator,
)
from creditmeter.api.schemas import Page
from creditmeter.api.schemas_notifications import (
    EmailDetail,
    EmailOut,
    PreferencesIn,
    PreferencesOut,
    UnsubscribedOut,
)
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.kit.pagination import DEFAULT_LIMIT, page_of
from creditmeter.notify import email, preferences
from creditmeter.notify.models import Email
from creditmeter.orgs import service as orgs

router = APIRouter(tags=["notifications"])

Status = Annotated[
    Literal["queued", "sent", "failed", "held"] | None, Query(description="Only this status.")
]
Env = Annotated[
    Literal["live", "test"] | None,
    Query(description="The environment (default: the key's; operators: both unless given)."),
]


def _email(row: Email, detail: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "organization_id": row.organization_id,
        "environment": row.environment,
        "event_id": row.event_id,
        "to": row.to_address,
        "subject": row.subject,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "attachments": row.attachments,
        "created_at": row.created_at,
        "sent_at": row.sent_at,
    }
    if detail:
        out |= {"text": row.text_body, "html": row.html_body}
    return out


@router.get("/v1/organizations/{org_id}/emails", response_model=Page[EmailOut])
def list_org_emails(
    org_id: str,
    caller: Caller,
    db: DB,
    status: Status = None,
    environment: Env = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> object:
    """The organization's e-mails, newest first: sent, queued, failed, and `held` when no SMTP
    server is configured (they are sent once one is)."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = (
        None if caller.is_operator and environment is None else environment_for(caller, environment)
    )
    with db.read() as session:
        orgs.get_organization(session, org_id)
        rows, next_id = email.list_emails(
            session,
            organization_id=org_id,
            environment=env,
            status=status,
            cursor=cursor,
            limit=limit,
        )
        return page_of([_email(r) for r in rows], next_id)


@router.get("/v1/organizations/{org_id}/emails/{email_id}", response_model=EmailDetail)
def get_org_email(org_id: str, email_id: str, caller: Caller, db: DB) -> object:
    """One e-mail with its bodies (`404 email_not_found` for another organization's)."""
    authorize_org(caller, org_id, READ_SCOPES)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        return _email(email.get_email(session, email_id, org_id), detail=True)


@router.get("/v1/emails", response_model=Page[EmailOut])
def list_all_emails(
    caller: Caller,
    db: DB,
    status: Status = None,
    environment: Env = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> object:
    """Every organization's e-mails (and those about none), newest first. Operator keys only."""
    require_operator(caller)
    with db.read() as session:
        rows, next_id = email.list_emails(
            session,
            organization_id=None,
            environment=environment,
            status=status,
            cursor=cursor,
            limit=limit,
        )
        return page_of([_email(r) for r in rows], next_id)


def _preferences(view: preferences.PreferenceView) -> dict[str, Any]:
    return {**view.__dict__, "available_event_types": preferences.emailed_types()}


PREFERENCES = "/v1/organizations/{org_id}/members/{member_id}/notification-preferences"


@router.get(PREFERENCES, response_model=PreferencesOut)
def get_preferences(org_id: str, member_id: str, caller: Caller, db: DB) -> object:
    """Which e-mails the member gets (`404 member_not_found` for another organization's)."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        return _preferences(preferences.get(session, org_id, member_id))


@router.put(PREFERENCES, response_model=PreferencesOut)
def put_preferences(
    org_id: str, member_id: str, body: PreferencesIn, caller: Caller, db: DB
) -> object:
    """Replace the member's choice: `event_types` among the e-mailed types (null: the defaults;
    another name is `422 unknown_event_type`) and `unsubscribed`."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    with db.write() as session:
        orgs.get_organization(session, org_id)
        view = preferences.set_preferences(
            session,
            org_id,
            member_id,
            event_types=body.event_types,
            unsubscribed=body.unsubscribed,
            now=clock.now(),
        )
        return _preferences(view)


def _unsubscribe(db: Database, token: str) -> dict[str, Any]:
    with db.write() as session:
        member = preferences.unsubscribe(session, token, clock.now())
        return {
            "unsubscribed": True,
            "email": member.email,
            "organization_id": member.organization_id,
        }


def _answer(request: Request, done: dict[str, Any]) -> Response:
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse(done)
    address = html.escape(done["email"])
    return HTMLResponse(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Unsubscribed</title>"
        "</head><body style='font-family:sans-serif;max-width:480px;margin:48px auto;'>"
        f"<h1>Unsubscribed</h1><p>{address} will get no more e-mails from this organization. "
        "An admin can turn them on again in the member's notification preferences.</p>"
        "</body></html>"
    )


@router.get(
    "/v1/unsubscribe/{token}",
    response_model=UnsubscribedOut,
    responses={200: {"content": {"text/html": {}}}},
)
def unsubscribe(token: str, request: Request, db: DB) -> Response:
    """The link in every e-mail to a member (no API key): unsubscribes them from every e-mail of
    the organization. Answers a small page to a browser (`Accept: text/html`), JSON otherwise;
    `404 unknown_unsubscribe_token` for a token that names no one. `POST` does the same (RFC 8058
    one-click, from the `List-Unsubscribe-Post` header)."""
    return _answer(request, _unsubscribe(db, token))


async def unsubscribe_one_click(request: Request) -> Response:
    """``POST /v1/unsubscribe/{token}``: a plain route, so the JSON-only body rule of the API does
    not apply — mail clients post ``List-Unsubscribe=One-Click`` as a form (RFC 8058); the body is
    not read."""
    db: Database = request.app.state.db
    done = await run_in_threadpool(_unsubscribe, db, request.path_params["token"])
    return _answer(request, done)


router.add_route("/v1/unsubscribe/{token}", unsubscribe_one_click, methods=["POST"])
