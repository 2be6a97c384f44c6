"""Request bodies are limited to 32 MiB however they are sent: a declared Content-Length above it is
refused before anything is read, and a body streamed without one (``Transfer-Encoding: chunked``) is
counted as it arrives and answered ``413 payload_too_large`` as soon as it passes the limit, before it
is parsed; nothing is written. A chunked body under the limit works as any other."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from creditmeter.api.limits import MAX_BODY_BYTES, BodySizeLimit
from creditmeter.kit.db import Database
from tests.api.test_bad_input import everything
from tests.metering import TOKENS, Headers, grant

CHUNK = 64 * 1024


@pytest.fixture
def served(app: Any) -> Iterator[str]:
    """The application served by uvicorn on a free local port (as ``creditmeter serve`` runs it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def chunks(total: int, sent: list[int]) -> Iterator[bytes]:
    """``total`` bytes of a JSON-looking body, streamed in chunks (httpx sends it chunked)."""
    body = b'{"events": [' + b" " * (total - 14) + b"]}"
    for start in range(0, len(body), CHUNK):
        piece = body[start : start + CHUNK]
        sent[0] += len(piece)
        yield piece


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/usage/batch", "application/json"),
        ("/v1/events", "application/cloudevents-batch+json"),
        ("/v1/organizations", "application/json"),
    ],
)
def test_a_50_mb_chunked_body_is_refused_with_413_before_it_is_read_whole(
    db: Database, served: str, operator: Headers, path: str, content_type: str
) -> None:
    before = everything(db)
    sent = [0]
    response = httpx.post(
        served + path,
        content=chunks(50 * 1024 * 1024, sent),
        headers={**operator, "Content-Type": content_type},
        timeout=60,
    )
    assert response.status_code == 413, response.text[:300]
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "payload_too_large"
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert sent[0] < 50 * 1024 * 1024  # the server answered before the client sent it all
    assert everything(db) == before


def test_a_declared_length_over_the_limit_is_refused_before_reading(
    db: Database, served: str, operator: Headers
) -> None:
    """Headers only: the 413 comes back without the server waiting for the body."""
    host, port = served.removeprefix("http://").split(":")
    head = (
        f"POST /v1/usage/batch HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: {operator['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode())
        answer = b""
        while b"payload_too_large" not in answer:
            data = conn.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer


def test_a_chunked_body_under_the_limit_is_read_as_any_other(
    client: Any,
    served: str,
    operator: Headers,
    make_org: Callable[..., str],
) -> None:
    org = make_org()
    grant(client, operator, org, "1")
    event = {"id": "e1", "organization": org, "operation": "inference", "quantities": TOKENS}
    body = json.dumps({"events": [event]}).encode()
    response = httpx.post(
        served + "/v1/usage/batch",
        content=iter([body[:10], body[10:]]),
        headers={**operator, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == "applied"


def test_the_application_never_receives_the_bytes_past_the_limit(db: Database) -> None:
    """Through the middleware alone (a 1,000-byte limit, 300-byte chunks): the application sees at
    most the limit, its own answer is dropped, and the client gets the 413."""
    seen: list[int] = []

    async def application(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        try:
            while True:
                message = await receive()
                body += message.get("body", b"")
                seen.append(len(body))
                if not message.get("more_body"):
                    break
        except Exception:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"parse error"})
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def run(chunk_count: int) -> list[dict[str, Any]]:
        incoming = [
            {"type": "http.request", "body": b"x" * 300, "more_body": i < chunk_count - 1}
            for i in range(chunk_count)
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return incoming.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "headers": [(b"transfer-encoding", b"chunked")]}
        await BodySizeLimit(application, max_bytes=1_000)(scope, receive, send)
        return sent

    refused = asyncio.run(run(10))
    assert refused[0]["status"] == 413
    assert json.loads(refused[1]["body"])["code"] == "payload_too_large"
    assert len(refused) == 2  # the application's 400 was dropped
    assert max(seen) <= 1_000
    seen.clear()
    accepted = asyncio.run(run(3))
    assert accepted[0]["status"] == 200
    assert accepted[1]["body"] == b"x" * 900
