"""Organizations and projects named in paths the way bodies and the CLI name them.

``/v1/organizations/acme/balance`` reaches the organization whose ``external_id`` is ``acme``, as
``/v1/organizations/org_01…/balance`` does, and ``…/projects/chatbot/budget`` the project named
``chatbot`` (as usage events name it) under it. A pure ASGI middleware rewrites such a path into the ids
before routing, by one read of a unique index; a path whose references are already ids pays nothing,
and neither do the hot paths (``/v1/usage``, ``/v1/authorize``, ``/v1/holds``), which carry no
organization in their path. When nothing matches, the path stays as sent and the route answers its
usual 404.

Authorization is unchanged: the routes check the caller against the resolved id, so an organization
key naming another organization by its external id gets the same 404 as for one that does not exist.
The 404 names what the caller typed (``shown``), never the id it resolved to. Nothing is cached: an
external id or a project name taken later is found at once.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool

from creditmeter.kit.db import Database, fetch_one

PREFIX = "/v1/organizations/"
_ULID = "[0-9A-HJKMNP-TV-Z]{26}"
_ORG_ID = re.compile(f"org_{_ULID}")
_PROJECT_ID = re.compile(f"proj_{_ULID}")
#: The longest external id or project name that can be stored (their columns' length).
_MAX_REF = 200

_ORG = "SELECT id FROM organizations WHERE external_id = :org"
_PROJECT = "SELECT id FROM projects WHERE organization_id = :org AND name = :project"
_BOTH = (
    "SELECT o.id, p.id FROM organizations o LEFT JOIN projects p "
    "ON p.organization_id = o.id AND p.name = :project WHERE o.external_id = :org"
)

#: (resolved organization id, what the path said) of the current request, for ``shown``.
_typed: ContextVar[tuple[str, str] | None] = ContextVar("creditmeter_org_ref", default=None)


def shown(org_id: str) -> str:
    """How the current request's path named ``org_id``: its external id when the path used that
    (so a 404 repeats what the caller sent, never the id behind it), else the id itself."""
    typed = _typed.get()
    return typed[1] if typed is not None and typed[0] == org_id else org_id


def _ref(value: str, id_pattern: re.Pattern[str]) -> str | None:
    """``value`` when it must be looked up (not an id, and could be stored); else None."""
    if not value or id_pattern.fullmatch(value) or len(value) > _MAX_REF or "\x00" in value:
        return None
    return value


def _resolve(
    db: Database, org: str, org_ref: str | None, project_ref: str | None
) -> tuple[str | None, str | None]:
    """(organization id, project id), each None when not found, by one indexed read."""
    if org_ref is not None and project_ref is not None:
        row = fetch_one(db.hot_engine, _BOTH, {"org": org_ref, "project": project_ref})
        return (row[0], row[1]) if row else (None, None)
    if org_ref is not None:
        row = fetch_one(db.hot_engine, _ORG, {"org": org_ref})
        return (row[0] if row else None), None
    row = fetch_one(db.hot_engine, _PROJECT, {"org": org, "project": project_ref})
    return org, (row[0] if row else None)


class OrgRefs:
    """Rewrites ``/v1/organizations/{external_id}/…`` and ``…/projects/{name}/…`` into ids."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        parts = path[len(PREFIX) :].split("/")
        org_ref = _ref(parts[0], _ORG_ID)
        has_project = len(parts) > 3 and parts[1] == "projects"
        project_ref = _ref(parts[2], _PROJECT_ID) if has_project else None
        if org_ref is None and project_ref is None:
            await self.app(scope, receive, send)
            return
        db: Database = scope["app"].state.db
        if db.dialect == "sqlite":  # a local file: readers never wait, no thread-pool hop
            org_id, project_id = _resolve(db, parts[0], org_ref, project_ref)
        else:
            org_id, project_id = await run_in_threadpool(
                _resolve, db, parts[0], org_ref, project_ref
            )
        if org_id is None:
            await self.app(scope, receive, send)
            return
        parts[0] = org_id
        if project_id is not None:
            parts[2] = project_id
        new_path = PREFIX + "/".join(parts)
        token = _typed.set((org_id, org_ref)) if org_ref is not None else None
        try:
            rewritten = {**scope, "path": new_path, "raw_path": quote(new_path).encode("ascii")}
            await self.app(rewritten, receive, send)
        finally:
            if token is not None:
                _typed.reset(token)
