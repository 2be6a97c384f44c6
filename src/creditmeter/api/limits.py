"""A size limit on request bodies, enforced while a body is read (a pure ASGI middleware).

A declared ``Content-Length`` above the limit is refused before anything is read. A body without one
(``Transfer-Encoding: chunked``) is counted as it streams in: the chunk that passes the limit is never
handed on, the request is answered ``413 payload_too_large`` at once, and nothing has been parsed —
at most the limit plus one chunk was held in memory. Whatever the application does after that (its
body read failed) is discarded: the 413 is the answer.
"""

from __future__ import annotations

from typing import Any

from creditmeter.api.problems import send_problem

#: Large enough for a batch of 10,000 events with generous metadata; larger bodies get 413.
MAX_BODY_BYTES = 32 * 1024 * 1024


class BodyTooLarge(Exception):
    """Raised into the application's body read once the limit is passed (it has been answered)."""


class BodySizeLimit:
    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        await _Counted(self, receive, send).run(scope)

    async def _refuse(self, send: Any) -> None:
        await send_problem(
            send,
            413,
            "payload_too_large",
            f"the request body is larger than {self.max_bytes // (1024 * 1024)} MiB; send "
            "usage in batches of at most 10,000 events",
            close=True,
        )


class _Counted:
    """One request whose body bytes are counted as the application receives them."""

    def __init__(self, limit: BodySizeLimit, receive: Any, send: Any) -> None:
        self.limit = limit
        self._receive = receive
        self._send = send
        self.received = 0
        self.started = False  # the application began its answer
        self.refused = False  # we answered 413

    async def run(self, scope: dict[str, Any]) -> None:
        try:
            await self.limit.app(scope, self.receive, self.send)
        except Exception:
            if not self.refused:
                raise
            # The application failed reading the body we cut off; the 413 was the answer.

    async def receive(self) -> Any:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit.max_bytes:
                if not self.started and not self.refused:
                    self.refused = True
                    await self.limit._refuse(self._send)
                raise BodyTooLarge(f"request body over {self.limit.max_bytes} bytes")
        return message

    async def send(self, message: Any) -> None:
        if self.refused:
            return  # the 413 was sent; the application's own answer is dropped
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
