"""A path holding the NUL character names nothing: answered 404 before routing.

No id, external id or name can hold NUL (bodies refuse it, and PostgreSQL refuses it in text), so
such a path cannot name a resource; sent on to a route, its lookup would fail in the database driver
on PostgreSQL (a 500) instead of finding nothing. A pure ASGI middleware: one substring test per
request.
"""

from __future__ import annotations

from typing import Any

from creditmeter.api.problems import send_problem


class RefuseNulPaths:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and "\x00" in scope.get("path", ""):
            await send_problem(
                send, 404, "not_found", "nothing has this path: ids and names never hold NUL (%00)"
            )
            return
        await self.app(scope, receive, send)
