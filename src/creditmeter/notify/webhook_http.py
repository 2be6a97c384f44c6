"""One HTTP attempt of a webhook delivery, made outside any transaction: the signed request (Standard
Webhooks headers), the destination checked again and pinned, and a bounded read of the answer.

- The body is the event's envelope as compact JSON, signed byte for byte with each secret given
  (the current one, and the previous one during a rotation's overlap): ``webhook-signature`` holds
  one ``v1,<signature>`` per secret, space-separated.
- The host is resolved and checked again (``notify.destinations``) and the request is sent to one of
  the addresses just checked, the ``Host`` header and the TLS server name staying the URL's, so a
  DNS answer changed since the endpoint was saved cannot steer the request inward.
- Redirects are never followed. The whole attempt (connecting, trying up to
  :data:`MAX_ADDRESSES` addresses, reading the body) ends by the timeout; at most
  :data:`READ_LIMIT` bytes of the answer are read and :data:`EXCERPT_CHARS` characters kept.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import httpx
from standardwebhooks import Webhook

from creditmeter import __version__
from creditmeter.config import Settings
from creditmeter.kit import clock
from creditmeter.notify import destinations, events
from creditmeter.notify.models import NotificationEvent

USER_AGENT: Final = f"creditmeter-webhooks/{__version__}"
EXCERPT_CHARS: Final = 1000
#: At most this much of a response body is read (the excerpt keeps 1000 characters of it).
READ_LIMIT: Final = 8192
#: Addresses of a host tried in turn when a connection cannot be made (within the timeout).
MAX_ADDRESSES: Final = 3


@dataclass(frozen=True)
class Plan:
    """One attempt to make: what to send where."""

    delivery_id: str
    endpoint_id: str
    number: int
    url: str
    event_id: str
    body: bytes
    secrets: tuple[str, ...]


@dataclass(frozen=True)
class Result:
    """What one attempt got: a status code, or an error (no answer), and how long it took."""

    started_at: datetime
    status_code: int | None
    latency_ms: int
    excerpt: str = ""
    error: str | None = None
    retry_after: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def body_of(event: NotificationEvent) -> bytes:
    """The request body: the event's envelope as compact JSON (signed byte for byte)."""
    return json.dumps(events.envelope(event), separators=(",", ":"), ensure_ascii=False).encode()


def signature_header(
    plan_secrets: tuple[str, ...] | list[str], msg_id: str, at: datetime, body: bytes
) -> str:
    """``webhook-signature``: one ``v1,<signature>`` per secret, space-separated."""
    return " ".join(Webhook(s).sign(msg_id=msg_id, timestamp=at, data=body) for s in plan_secrets)


def headers_for(plan: Plan, at: datetime) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": plan.event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature_header(plan.secrets, plan.event_id, at, plan.body),
    }


def _clean(text: str, limit: int) -> str:
    """Text as stored: no NUL (PostgreSQL refuses it in text), at most ``limit`` characters."""
    return text.replace("\x00", "\ufffd")[:limit]


def send(plan: Plan, settings: Settings) -> Result:
    """Make one HTTP attempt (no transaction is open): check the destination again, then POST to an
    address just checked, trying the next address only when a connection could not be made."""
    started = clock.now()
    t0 = time.monotonic()

    def failed(error: str) -> Result:
        ms = int((time.monotonic() - t0) * 1000)
        return Result(started, None, ms, error=_clean(error, 500))

    try:
        target = destinations.resolve_destination(
            plan.url, allow_private=settings.webhook_allow_private
        )
    except destinations.DestinationRefused as exc:
        return failed(f"{exc.code}: {exc.message}")
    headers = headers_for(plan, started)
    url = httpx.URL(plan.url)
    headers["host"] = url.netloc.decode("ascii")
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    timeout = settings.webhook_timeout_seconds
    deadline = t0 + timeout  # the whole attempt, whatever the addresses and the body's pace
    error = "no address to connect to"
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for address in target.addresses[:MAX_ADDRESSES]:
            if time.monotonic() >= deadline:
                break
            request = client.build_request(
                "POST",
                url.copy_with(host=address),
                headers=headers,
                content=plan.body,
                extensions=extensions,
            )
            try:
                response = client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = (
                    f"could not connect to {target.host} ({address}): {exc or type(exc).__name__}"
                )
                continue
            except httpx.TimeoutException:
                return failed(f"timed out: no answer within {timeout:g} s")
            except httpx.HTTPError as exc:
                return failed(f"{type(exc).__name__}: {exc}")
            try:
                excerpt = _read_excerpt(response, deadline)
            except httpx.TimeoutException:
                excerpt = "(the body did not arrive in time)"
            except httpx.HTTPError as exc:
                excerpt = f"(the body could not be read: {type(exc).__name__})"
            finally:
                response.close()
            ms = int((time.monotonic() - t0) * 1000)
            status = response.status_code
            problem = None
            if 300 <= status < 400:
                where = response.headers.get("location", "")
                problem = f"redirects are not followed ({status} to {where or 'nowhere'})"
            elif not 200 <= status < 300:
                problem = f"HTTP {status}"
            return Result(
                started,
                status,
                ms,
                excerpt=excerpt,
                error=_clean(problem, 500) if problem else None,
                retry_after=response.headers.get("retry-after"),
            )
    return failed(error)


def _read_excerpt(response: httpx.Response, deadline: float) -> str:
    """The start of the body: at most :data:`READ_LIMIT` bytes, and what arrived by ``deadline``."""
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= READ_LIMIT or time.monotonic() >= deadline:
            break
    return _clean(data[:READ_LIMIT].decode("utf-8", errors="replace"), EXCERPT_CHARS)
