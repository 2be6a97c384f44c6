"""Helpers shared by the metering tests: event bodies, grants, balances and before/after snapshots.

Prices used throughout (default rate card, see ``pricing/default_rate_card.toml``):

- ``inference`` of 1,000 input and 500 output tokens: 0.002 + 0.003 = 0.005 credits (both versions).
- ``training`` of one H100 hour outside the off-peak window (22:00-06:00 UTC): base 1 + 3600 x 0.0016
  = 6.76 credits under version 2026-01, 1 + 3600 x 0.002 = 8.2 under 2024-01.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.kit.credits import format_credits
from creditmeter.kit.db import Database
from creditmeter.ledger.verify import verify
from creditmeter.models import metadata
from tests.conftest import utc

Headers = dict[str, str]
C = 1_000_000

#: A Tuesday in March 2026 at noon UTC: rate card 2026-01 in force, outside the off-peak window.
T0 = utc(2026, 3, 10, 12)

TOKENS = {"input_tokens": "1000", "output_tokens": "500"}
TOKENS_PRICE = "0.005"
H100_HOUR = {"gpu_seconds": "3600", "accelerator": "h100"}
H100_HOUR_PRICE = "6.76"


def event(event_id: str, org: str, operation: str = "inference", **extra: Any) -> dict[str, Any]:
    """A usage event body (quantities default to :data:`TOKENS` for inference)."""
    body: dict[str, Any] = {"id": event_id, "organization": org, "operation": operation}
    if "quantities" not in extra:
        body["quantities"] = dict(TOKENS) if operation == "inference" else dict(H100_HOUR)
    body.update(extra)
    return body


def dec(text: str) -> Decimal:
    return Decimal(text)


def grant(
    client: TestClient,
    operator: Headers,
    org: str,
    credits: str,
    source: str = "plan",
    environment: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    params = {"environment": environment} if environment else {}
    response = client.post(
        f"/v1/organizations/{org}/grants",
        json={"credits": credits, "source": source, "reason": "test credits", **extra},
        headers=operator,
        params=params,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def balance(
    client: TestClient, headers: Headers, org: str, environment: str | None = None
) -> dict[str, Any]:
    params = {"environment": environment} if environment else {}
    response = client.get(f"/v1/organizations/{org}/balance", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def summary(client: TestClient, headers: Headers, org: str, environment: str | None = None) -> Any:
    """(available, arrears, held, paused) of GET balance."""
    b = balance(client, headers, org, environment)
    return b["available"], b["arrears"], b["held"], b["paused"]


def authorize(client: TestClient, headers: Headers, org: str, **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/authorize",
        json={"organization": org, "operation": "inference", **body},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    if code is not None:
        assert body["code"] == code, body
    return body


def assert_breakdown_sums(body: dict[str, Any]) -> None:
    """The breakdown's lines add up exactly to the credits charged."""
    assert body["breakdown"], body
    assert sum(dec(line["credits"]) for line in body["breakdown"]) == dec(body["credits"])


def assert_clean(db: Database) -> None:
    with db.read() as session:
        assert verify(session) == []


def state_of(db: Database, org: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row of ``org`` (project usage included, through its projects), and every
    idempotency record, for before/after comparisons. An API key's last use is left out."""
    snapshot: dict[str, list[tuple[Any, ...]]] = {}
    tables = metadata.tables
    with db.read() as s:
        projects = [
            r[0]
            for r in s.execute(
                select(tables["projects"].c.id).where(tables["projects"].c.organization_id == org)
            )
        ]
        for table in metadata.sorted_tables:
            columns = [
                c for c in table.c if not (table.name == "api_keys" and c.name == "last_used_at")
            ]
            query = select(*columns)
            if table.name == "organizations":
                query = query.where(table.c.id == org)
            elif "organization_id" in table.c:
                query = query.where(table.c.organization_id == org)
            elif table.name == "project_usage":
                query = query.where(table.c.project_id.in_(projects))
            elif table.name != "idempotency_keys":
                continue
            snapshot[table.name] = sorted(tuple(map(repr, row)) for row in s.execute(query))
    return snapshot


def micros(text: str) -> int:
    return int(dec(text) * C)


def credits_text(value: int) -> str:
    return format_credits(value)
