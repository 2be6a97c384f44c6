"""Usage batches sent at the same time by one caller share write transactions (api/group_commit.py):
eight writers for one busy organization no longer pay a transaction each, one after the other. Every
batch keeps its own answer (applied, duplicate, 409 across batches as if sent one after the other), its
own fate (a batch whose transaction fails fails alone), and the ledger stays exact."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from creditmeter.api import group_commit, usage_batch
from creditmeter.api.group_commit import GroupCommit
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from tests.metering import T0, Headers, assert_clean, grant, micros


@pytest.fixture(autouse=True)
def _noon() -> Iterator[None]:
    with clock.frozen_at(T0):
        yield


# --- the mechanism, without a database -------------------------------------------------------------


class _Recorder:
    """A write function that records its groups; the first call waits until ``release`` is set."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.groups: list[list[str]] = []
        self.release = threading.Event()
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, works: Sequence[str]) -> list[str]:
        with self.lock:
            first = not self.groups
            self.groups.append(list(works))
        if first:
            assert self.release.wait(5)
        if self.fail_on in works:
            raise RuntimeError(f"{self.fail_on} cannot be written")
        return [f"done {w}" for w in works]


def _run_all(gc: GroupCommit[str, str], works: list[str], recorder: _Recorder) -> dict[str, Any]:
    outcomes: dict[str, Any] = {}

    def one(work: str) -> None:
        try:
            outcomes[work] = gc.run("scope", work, 1)
        except RuntimeError as exc:
            outcomes[work] = exc

    first = threading.Thread(target=one, args=(works[0],))
    first.start()
    while not recorder.groups:  # the first batch is being written
        time.sleep(0.001)
    rest = [threading.Thread(target=one, args=(w,)) for w in works[1:]]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 5
    while len(gc._lanes["scope"].waiting) < len(rest) and time.monotonic() < deadline:
        time.sleep(0.001)
    recorder.release.set()
    for t in [first, *rest]:
        t.join(5)
    return outcomes


def test_batches_that_arrive_during_a_write_go_together_in_the_next_one() -> None:
    recorder = _Recorder()
    gc: GroupCommit[str, str] = GroupCommit(recorder)
    works = [f"b{i}" for i in range(6)]
    outcomes = _run_all(gc, works, recorder)
    assert outcomes == {w: f"done {w}" for w in works}
    assert recorder.groups[0] == ["b0"]
    assert sorted(recorder.groups[1]) == works[1:]  # one transaction for the five that waited
    assert len(recorder.groups) == 2
    assert gc._lanes == {}  # nothing left behind


def test_a_batch_whose_transaction_fails_fails_alone() -> None:
    recorder = _Recorder(fail_on="b3")
    gc: GroupCommit[str, str] = GroupCommit(recorder)
    works = [f"b{i}" for i in range(6)]
    outcomes = _run_all(gc, works, recorder)
    assert isinstance(outcomes.pop("b3"), RuntimeError)
    assert outcomes == {w: f"done {w}" for w in works if w != "b3"}
    # the merged group failed, then each of its batches was written on its own
    assert [g for g in recorder.groups if len(g) == 1 and g != ["b0"]] == [
        [w] for w in recorder.groups[1]
    ]


def test_a_group_never_carries_more_than_max_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "MAX_EVENTS", 3)
    recorder = _Recorder()
    gc: GroupCommit[str, str] = GroupCommit(recorder)
    works = [f"b{i}" for i in range(8)]
    outcomes = _run_all(gc, works, recorder)
    assert outcomes == {w: f"done {w}" for w in works}
    assert all(len(g) <= 3 for g in recorder.groups)
    assert sorted(w for g in recorder.groups for w in g) == sorted(works)


# --- through the API, on SQLite and PostgreSQL -----------------------------------------------------


def _batch(prefix: str, org: str, count: int, tokens: int = 1_000) -> dict[str, Any]:
    return {
        "events": [
            {
                "id": f"{prefix}-{i}",
                "organization": org,
                "operation": "inference",
                "quantities": {"input_tokens": tokens + i},
            }
            for i in range(count)
        ]
    }


def _gather(app: Any, bodies: list[dict[str, Any]], headers: Headers) -> list[httpx.Response]:
    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://cm") as c:
            return await asyncio.gather(
                *(c.post("/v1/usage/batch", json=b, headers=headers) for b in bodies)
            )

    return asyncio.run(send_all())


@pytest.fixture
def slow_first_write(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first transaction takes 0.3 s, so the batches sent meanwhile queue behind it; returns the
    number of events of every transaction written."""
    sizes: list[int] = []
    real = usage_batch._write

    def write(db: Database, ctx: Any, valid: list[Any]) -> Any:
        sizes.append(len(valid))
        if len(sizes) == 1:
            time.sleep(0.3)
        return real(db, ctx, valid)

    monkeypatch.setattr(usage_batch, "_write", write)
    return sizes


def test_eight_writers_for_one_organization_share_transactions(
    app: Any,
    client: Any,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    slow_first_write: list[int],
) -> None:
    org = make_org("Busy AI")
    grant(client, operator, org, "1000")
    bodies = [_batch(f"w{w}", org, 20) for w in range(8)]
    bodies.append(bodies[2])  # a retry of a batch in flight: all duplicates, nothing twice
    conflicting = _batch("w5", org, 1, tokens=7)  # an id of another batch with another body
    bodies.append(conflicting)
    responses = _gather(app, bodies, operator)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    spent = 0
    statuses: dict[str, list[str]] = {}
    for response in responses:
        for result in response.json()["results"]:
            statuses.setdefault(result["id"], []).append(result["status"])
            if result["status"] == "applied":
                spent += micros(result["credits"])
    assert sorted(statuses["w2-0"]) == ["applied", "duplicate"]
    assert sorted(statuses["w5-0"]) == ["applied", "rejected"]  # whichever came first applied
    assert sum(s.count("applied") for s in statuses.values()) == 8 * 20
    assert len(slow_first_write) < len(bodies)  # batches went together
    available = client.get(f"/v1/organizations/{org}/balance", headers=operator).json()
    assert micros(available["available"]) == micros("1000") - spent
    assert_clean(db)


def test_a_failing_batch_does_not_fail_the_batches_it_was_grouped_with(
    app: Any,
    client: Any,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    slow_first_write: list[int],
) -> None:
    org = make_org("Busy AI")
    grant(client, operator, org, "1000")
    real = usage_batch._write

    def write(db_: Database, ctx: Any, valid: list[Any]) -> Any:
        if any(e.id == "poison-0" for e in valid):
            raise RuntimeError("the database refused the transaction")
        return real(db_, ctx, valid)

    monkeypatch.setattr(usage_batch, "_write", write)
    bodies = [_batch(f"w{w}", org, 10) for w in range(6)]
    bodies.insert(3, _batch("poison", org, 1))
    responses = _gather(app, bodies, operator)
    for body, response in zip(bodies, responses, strict=True):
        if body["events"][0]["id"] == "poison-0":
            assert response.status_code == 500
        else:
            assert response.status_code == 200, response.text
            assert {r["status"] for r in response.json()["results"]} == {"applied"}
    assert_clean(db)


def test_a_failed_clock_transaction_leaves_the_committed_events_answered_as_applied(
    client: Any,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operator's batch over a clocked and an unclocked organization is one transaction per
    clock. When the second fails after the first committed, the answer is still 200: the committed
    events say applied, the others carry the failure, and sending the batch again completes it."""
    from creditmeter.orgs import service as orgs
    from creditmeter.orgs.service import Environment, Scope
    from tests.api.test_test_clocks import new_clock

    clocked, real = make_org("On a clock"), make_org("On real time")
    clock_id = new_clock(client, operator, "2027-01-10T00:00:00Z")
    attached = client.post(
        f"/v1/organizations/{clocked}/test-clock", json={"test_clock": clock_id}, headers=operator
    )
    assert attached.status_code < 300, attached.text
    with db.write() as session:
        _, secret = orgs.create_api_key(
            session, None, "test operator", [Scope.OPERATOR], Environment.TEST, clock.now()
        )
    test_operator = {"Authorization": f"Bearer {secret}"}
    body = {"events": [_batch("r", real, 2)["events"][0], _batch("k", clocked, 1)["events"][0]]}
    real_apply = usage_batch.apply

    def apply(session: Any, ctx: Any, prepared: Any) -> Any:
        if clocked in prepared.by_org:
            raise RuntimeError("the database refused the transaction")
        return real_apply(session, ctx, prepared)

    monkeypatch.setattr(usage_batch, "apply", apply)
    first = client.post("/v1/usage/batch", json=body, headers=test_operator)
    assert first.status_code == 200, first.text
    assert [
        (r["id"], r["status"], r.get("error", {}).get("code")) for r in first.json()["results"]
    ] == [
        ("r-0", "applied", None),
        ("k-0", "rejected", "internal_error"),
    ]
    monkeypatch.setattr(usage_batch, "apply", real_apply)
    again = client.post("/v1/usage/batch", json=body, headers=test_operator)
    assert [(r["id"], r["status"]) for r in again.json()["results"]] == [
        ("r-0", "duplicate"),
        ("k-0", "applied"),
    ]
    assert_clean(db)
