"""SDK tests against :class:`FakeServer`, an in-memory creditmeter behind ``httpx.MockTransport``.

The fake keeps the contract of issue 3 (sections 2-4) closely enough to prove what the SDK promises:
balances move once per event id, an ``Idempotency-Key`` replays the first answer, errors are
``application/problem+json``. Faults are scripted per request: a status before the server runs the
request (``Fault(status=503)``), a transport error before it (``Fault(error=httpx.ConnectError)``),
or a lost answer after it ran (``Fault(error=httpx.ReadError, after=True)``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

API_KEY = "cm_test_sdk"
BASE_URL = "https://credits.test"
RATES = {
    "inference": {"input_tokens": Decimal("0.001"), "output_tokens": Decimal("0.002")},
    "training": {"gpu_seconds": Decimal("0.01"), "data_gb": Decimal("0.5")},
}
PROBLEM = "application/problem+json"
#: The fake server's clock: holds expire ``ttl_seconds`` after this.
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Fault:
    """What to do to the next request matching ``path`` (any path when None)."""

    status: int | None = None
    error: type[httpx.TransportError] | None = None
    after: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    path: str | None = None


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    raw_path: str
    headers: httpx.Headers
    content: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.content) if self.content else None

    @property
    def key(self) -> str | None:
        key: str | None = self.headers.get("idempotency-key")
        return key


def problem(status: int, code: str, detail: str, **extra: Any) -> httpx.Response:
    body = {
        "type": f"https://creditmeter.dev/problems/{code.replace('_', '-')}",
        "title": {402: "Payment required", 404: "Not found", 409: "Conflict"}.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return httpx.Response(status, json=body, headers={"content-type": PROBLEM})


class Refused(Exception):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response


def price(operation: str, quantities: dict[str, Any]) -> tuple[Decimal, list[dict[str, str]]]:
    if operation not in RATES:
        raise Refused(problem(422, "unknown_operation", f"unknown operation {operation!r}"))
    lines = []
    for name, raw in quantities.items():
        if name not in RATES[operation]:
            raise Refused(problem(422, "unknown_dimension", f"unknown dimension {name!r}"))
        quantity = Decimal(str(raw))
        credits = (quantity * RATES[operation][name]).quantize(Decimal("0.000001"))
        rate = str(RATES[operation][name])
        lines.append(
            {"component": name, "quantity": str(quantity), "rate": rate, "credits": str(credits)}
        )
    total = sum((Decimal(line["credits"]) for line in lines), Decimal(0))
    return total, lines


class FakeServer:
    """Organizations with balances, usage events, holds and idempotency keys, in memory."""

    def __init__(self, balances: dict[str, str] | None = None) -> None:
        self.available = {k: Decimal(v) for k, v in (balances or {"org_1": "100"}).items()}
        self.events: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
        self.holds: dict[str, dict[str, Any]] = {}
        self.replays: dict[tuple[str, str], tuple[bytes, httpx.Response]] = {}
        self.requests: list[Seen] = []
        self.faults: list[Fault] = []
        self.budget_exceeded: set[str] = set()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def of(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    def _fault(self, path: str) -> Fault | None:
        for i, fault in enumerate(self.faults):
            if fault.path is None or fault.path == path:
                return self.faults.pop(i)
        return None

    def handle(self, request: httpx.Request) -> httpx.Response:
        seen = Seen(
            request.method,
            request.url.path,
            request.url.raw_path.decode(),
            request.headers,
            request.read(),
        )
        self.requests.append(seen)
        fault = self._fault(seen.path)
        if fault is not None and not fault.after:
            if fault.error is not None:
                raise fault.error("scripted failure", request=request)
            if fault.body is not None or fault.status is not None:
                status = fault.status or 500
                if isinstance(fault.body, bytes | str):
                    return httpx.Response(status, content=fault.body, headers=fault.headers)
                body = fault.body or {
                    "title": "Error",
                    "status": status,
                    "detail": "scripted",
                    "code": "internal_error" if status >= 500 else "rate_limited",
                }
                return httpx.Response(
                    status, json=body, headers={"content-type": PROBLEM, **fault.headers}
                )
        response = self._answer(seen)
        if fault is not None and fault.after and fault.error is not None:
            raise fault.error("answer lost", request=request)
        return response

    def _answer(self, seen: Seen) -> httpx.Response:
        if seen.headers.get("authorization") != f"Bearer {API_KEY}":
            return problem(401, "invalid_api_key", "this API key is not valid")
        # /v1/usage is idempotent by event id itself: a repeat answers 200 "duplicate".
        if seen.key and seen.path != "/v1/usage":
            scope = (seen.path, seen.key)
            if scope in self.replays:
                content, stored = self.replays[scope]
                if content != seen.content:
                    return problem(409, "idempotency_key_reused", "key reused with another body")
                return httpx.Response(
                    stored.status_code, content=stored.content, headers=stored.headers
                )
        try:
            response = self._route(seen)
        except Refused as refused:
            return refused.response
        if seen.key and seen.path != "/v1/usage" and response.status_code < 500:
            self.replays[(seen.path, seen.key)] = (seen.content, response)
        return response

    def _route(self, seen: Seen) -> httpx.Response:
        body = seen.json or {}
        parts = seen.path.strip("/").split("/")
        routes: dict[str, Callable[[dict[str, Any]], httpx.Response]] = {
            "/v1/authorize": self.authorize,
            "/v1/estimate": self.estimate,
            "/v1/usage": self.usage,
            "/v1/usage/batch": self.batch,
            "/v1/holds": self.hold,
        }
        if seen.path in routes:
            return routes[seen.path](body)
        if parts[:2] == ["v1", "holds"] and len(parts) >= 3:
            hold = self.holds.get(parts[2])
            if hold is None:
                return problem(404, "not_found", f"no hold {parts[2]!r}")
            if seen.method == "DELETE":
                if hold["status"] == "settled":
                    return problem(409, "hold_settled", "nothing left to release")
                self._release(hold, "released")
                return httpx.Response(200, json=self._hold_json(hold))
            if hold["status"] != "active":
                status = hold["status"]
                return problem(409, f"hold_{status}", f"hold {hold['id']} is {status}")
            if parts[3:] == ["settle"]:
                return self.settle(hold, body)
            if parts[3:] == ["extend"]:
                return self.extend(hold, body)
        return problem(404, "not_found", f"no route {seen.path}")

    def _org(self, organization: str) -> str:
        if organization not in self.available:
            raise Refused(problem(404, "not_found", f"no organization {organization!r}"))
        return organization

    def _estimate(self, body: dict[str, Any]) -> Decimal:
        if "credits" in body:
            if not isinstance(body["credits"], str):
                raise Refused(problem(422, "validation_failed", "credits must be a decimal string"))
            return Decimal(body["credits"])
        return price(body["operation"], body.get("quantities") or {})[0]

    def authorize(self, body: dict[str, Any]) -> httpx.Response:
        org = self._org(body["organization"])
        estimated = self._estimate(body)
        reason = "ok"
        if body.get("project") in self.budget_exceeded:
            reason = "project_budget_exceeded"
        elif self.available[org] < estimated:
            reason = "insufficient_credits"
        return httpx.Response(200, json={
            "allowed": reason == "ok",
            "reason": reason,
            "available": str(self.available[org]),
            "estimated_credits": str(estimated),
        })  # fmt: skip

    def estimate(self, body: dict[str, Any]) -> httpx.Response:
        total, lines = price(body["operation"], body["quantities"])
        return httpx.Response(
            200, json={"credits": str(total), "breakdown": lines, "rate_card_version": "2026-01"}
        )

    def _apply(self, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        org = self._org(event["organization"])
        known = self.events.get((org, event["id"]))
        if known is not None:
            if known[0] != event:
                raise Refused(problem(409, "conflict", "event id reused with a different body"))
            return 200, {**known[1], "status": "duplicate"}
        total, lines = price(event["operation"], event["quantities"])
        self.available[org] -= total
        result = {
            "id": event["id"],
            "status": "applied",
            "credits": str(total),
            "breakdown": lines,
            "balance": {
                "available": str(self.available[org]),
                "arrears": "0",
                "paused": self.available[org] <= 0,
            },
        }
        self.events[(org, event["id"])] = (event, result)
        return 201, result

    def usage(self, body: dict[str, Any]) -> httpx.Response:
        status, result = self._apply(body)
        return httpx.Response(status, json=result)

    def batch(self, body: dict[str, Any]) -> httpx.Response:
        events = body["events"]
        if len(events) > 10_000:
            return problem(413, "batch_too_large", "at most 10,000 events per batch")
        results = []
        for event in events:
            try:
                _, result = self._apply(event)
            except Refused as refused:
                error = refused.response.json()
                results.append({"id": event["id"], "status": "rejected", "error": error})
            else:
                results.append(
                    {"id": result["id"], "status": result["status"], "credits": result["credits"]}
                )
        return httpx.Response(200, json={"results": results})

    def _hold_json(self, hold: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": hold["id"],
            "organization": hold["organization"],
            "operation": hold["operation"],
            "credits": str(hold["credits"]),
            "status": hold["status"],
            "expires_at": hold["expires_at"].isoformat().replace("+00:00", "Z"),
        }

    def hold(self, body: dict[str, Any]) -> httpx.Response:
        org = self._org(body["organization"])
        credits = self._estimate(body)
        if body.get("project") in self.budget_exceeded:
            return problem(402, "project_budget_exceeded", "the project's budget is spent")
        if self.available[org] < credits:
            return problem(402, "insufficient_credits", f"{credits} credits are not available")
        self.available[org] -= credits
        hold_id = f"hold_{len(self.holds) + 1}"
        expires = NOW + timedelta(seconds=body["ttl_seconds"])
        self.holds[hold_id] = {
            "id": hold_id,
            "organization": org,
            "project": body.get("project"),
            "operation": body["operation"],
            "credits": credits,
            "status": "active",
            "expires_at": expires,
        }
        return httpx.Response(201, json=self._hold_json(self.holds[hold_id]))

    @property
    def active_holds(self) -> list[str]:
        return [h["id"] for h in self.holds.values() if h["status"] == "active"]

    def _release(self, hold: dict[str, Any], status: str) -> None:
        if hold["status"] == "active":
            self.available[hold["organization"]] += hold["credits"]
        hold["status"] = status

    def expire(self, hold_id: str) -> None:
        self._release(self.holds[hold_id], "expired")

    def extend(self, hold: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
        if "credits" in body:
            more = Decimal(body["credits"])
            if self.available[hold["organization"]] < more:
                return problem(402, "insufficient_credits", f"{more} more credits not available")
            self.available[hold["organization"]] -= more
            hold["credits"] += more
        if "ttl_seconds" in body:
            hold["expires_at"] = NOW + timedelta(seconds=body["ttl_seconds"])
        return httpx.Response(200, json=self._hold_json(hold))

    def settle(self, hold: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
        event = {
            "organization": hold["organization"],
            "operation": hold["operation"],
            **({"project": hold["project"]} if hold["project"] else {}),
            **body,
            "hold": hold["id"],
        }
        status, result = self._apply(event)
        self._release(hold, "settled")
        return httpx.Response(status, json=result)
