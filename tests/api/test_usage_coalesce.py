"""Single events sent at the same time share write transactions (api/coalesce.py) and each still gets
its own answer: applied, duplicate (the same id and body), 409 (the same id, another body), 422 (an
unknown project), with its organization's committed balance; the ledger is exact afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger.models import JournalTransaction
from tests.metering import T0, Headers, assert_clean, grant, micros


@pytest.fixture(autouse=True)
def _noon() -> Iterator[None]:
    with clock.frozen_at(T0):
        yield


def _event(event_id: str, org: str, tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "organization": org,
        "operation": "inference",
        "quantities": {"input_tokens": tokens},
        **extra,
    }


def test_concurrent_single_events_share_transactions_and_keep_their_own_answers(
    app: Any,
    client: Any,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
) -> None:
    orgs = [make_org(f"Org {i}") for i in range(2)]
    for org in orgs:
        grant(client, operator, org, "1")
    events = [_event(f"e{i}", orgs[i % 2], 1_000 * (i + 1)) for i in range(30)]
    sends = [
        *events,
        events[3],  # the same id and body again: a duplicate
        {**events[4], "quantities": {"input_tokens": 7}},  # the same id, another body: 409
        _event("bad-project", orgs[0], 10, project="no-such-project"),  # 422
    ]

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cm") as c:
            return await asyncio.gather(
                *(c.post("/v1/usage", json=body, headers=operator) for body in sends)
            )

    responses = asyncio.run(send_all())
    by_id: dict[str, list[httpx.Response]] = {}
    for body, response in zip(sends, responses, strict=True):
        by_id.setdefault(body["id"], []).append(response)

    spent = dict.fromkeys(orgs, 0)
    for event in events:
        answers = sorted(r.status_code for r in by_id[event["id"]])
        if event["id"] == "e3":
            assert answers == [200, 201]  # one applied, the other its duplicate
        elif event["id"] == "e4":
            assert answers in ([201, 409], [200, 409])  # whichever came first was applied
        else:
            assert answers == [201]
        applied = next(r for r in by_id[event["id"]] if r.status_code == 201).json()
        assert applied["status"] == "applied"
        spent[event["organization"]] += micros(applied["credits"])
    bad = by_id["bad-project"][0]
    assert bad.status_code == 422
    assert bad.json()["code"] == "unknown_project"

    for org in orgs:
        summary = client.get(f"/v1/organizations/{org}/balance", headers=operator).json()
        assert micros(summary["available"]) == micros("1") - spent[org]
    with db.read() as s:
        usage_transactions = s.scalar(
            select(func.count())
            .select_from(JournalTransaction)
            .where(JournalTransaction.kind == "usage")
        )
    assert usage_transactions is not None
    assert usage_transactions < len(events)
    assert_clean(db)
