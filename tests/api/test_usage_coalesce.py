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

from creditmeter.api import coalesce
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger.models import JournalTransaction
from creditmeter.metering.ingest import ingest as real_ingest
from creditmeter.metering.models import UsageEvent
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


def _gather(app: Any, sends: list[tuple[dict[str, Any], Headers]]) -> list[httpx.Response]:
    """Send every body at the same time (one event loop, like one server process)."""

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://cm") as c:
            return await asyncio.gather(
                *(c.post("/v1/usage", json=body, headers=h) for body, h in sends)
            )

    return asyncio.run(send_all())


def test_an_event_out_of_range_sent_with_160_valid_events_fails_alone(
    app: Any,
    client: Any,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    """The acceptance run: 8 clients each send 20 valid events while a 9th sends events whose
    timestamps overflow; every valid event is applied (201), every bad one is a 422."""
    orgs = [make_org(f"Client {i}") for i in range(9)]
    keys = [make_key(org, "org:ingest") for org in orgs]
    for org in orgs:
        grant(client, operator, org, "1")
    sends: list[tuple[dict[str, Any], Headers]] = []
    for n in range(20):
        for c in range(8):
            sends.append((_event(f"c{c}-{n}", orgs[c], 1_000), keys[c]))
        at = "0001-01-01T00:00:00+01:00" if n % 2 else "9999-12-31T23:00:00-23:00"
        sends.append((_event(f"bad-{n}", orgs[8], 1_000, occurred_at=at), keys[8]))
    responses = _gather(app, sends)
    for (body, _), response in zip(sends, responses, strict=True):
        if body["id"].startswith("bad"):
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["type"] == "timestamp_out_of_range"
        else:
            assert response.status_code == 201, response.text
    for org in orgs[:8]:
        available = client.get(f"/v1/organizations/{org}/balance", headers=operator).json()
        assert micros(available["available"]) == micros("1") - 20 * micros("0.002")
    assert_clean(db)


def test_a_grouped_transaction_that_fails_is_retried_so_only_its_culprit_fails(
    app: Any,
    client: Any,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failure no check foresaw (here: one raised after the poisoned event's rows were written,
    inside the transaction) rolls its group back; the group is written again in halves, so every
    other event is applied exactly once and only the poisoned one gets the 500."""
    group_sizes: list[int] = []

    def poisoned(session: Any, ctx: Any, events: Any, **kwargs: Any) -> Any:
        results = real_ingest(session, ctx, events, **kwargs)
        group_sizes.append(len(events))
        if any(e.id.startswith("poison") for e in events):
            raise RuntimeError("a failure inside the transaction")
        return results

    monkeypatch.setattr(coalesce, "ingest", poisoned)
    orgs = [make_org(f"Org {i}") for i in range(4)]
    for org in orgs:
        grant(client, operator, org, "1")
    sends = [(_event(f"e{i}", orgs[i % 4], 1_000), operator) for i in range(60)]
    sends.insert(30, (_event("poison-1", orgs[0], 1_000), operator))
    responses = _gather(app, sends)

    for (body, _), response in zip(sends, responses, strict=True):
        if body["id"] == "poison-1":
            assert response.status_code == 500, response.text
            assert response.json()["code"] == "internal_error"
        else:
            assert response.status_code == 201, response.text
            assert response.json()["status"] == "applied"
    assert max(group_sizes) > 1  # the poisoned event did share a transaction with others
    with db.read() as s:
        stored = s.scalars(select(UsageEvent.event_id)).all()
    assert sorted(stored) == sorted(f"e{i}" for i in range(60))  # once each; poison-1 never
    for org in orgs:
        available = client.get(f"/v1/organizations/{org}/balance", headers=operator).json()
        assert micros(available["available"]) == micros("1") - 15 * micros("0.002")
    assert_clean(db)


def test_a_failing_group_costs_a_few_transactions_not_one_per_event(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def write(_db: Any, _ctx: Any, events: list[Any]) -> list[Any]:
        calls.append(len(events))
        if "bad" in events:
            raise RuntimeError("boom")
        return list(events)

    monkeypatch.setattr(coalesce, "_write", write)
    events: list[Any] = [f"e{i}" for i in range(1_000)]
    events[617] = "bad"
    results = coalesce._isolated(db, None, events)  # type: ignore[arg-type]
    assert [r for r in results if isinstance(r, Exception)] == [results[617]]
    assert results[:617] == events[:617]
    assert results[618:] == events[618:]
    assert len(calls) <= 2 * 10 + 1  # about 2 * log2(1000) transactions
