"""A size limit on request bodies, enforced before a body is read (a pure ASGI middleware: nothing is
parsed or buffered for a request that is refused)."""

from __future__ import annotations

from typing import Any

from creditmeter.api.problems import PROBLEM, problem_body

#: Large enough for a batch of 10,000 events with generous metadata; larger bodies get 413.
MAX_BODY_BYTES = 32 * 1024 * 1024


class BodySizeLimit:
    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                await self._refuse(send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Any) -> None:
        import orjson

        body = orjson.dumps(
            problem_body(
                413,
                "payload_too_large",
                f"the request body is larger than {self.max_bytes // (1024 * 1024)} MiB; send "
                "usage in batches of at most 10,000 events",
            )
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
