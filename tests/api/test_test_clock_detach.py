"""Detaching an organization from a test clock, and deleting clocks, on SQLite and PostgreSQL: the
detached organization is billed on real time again; what the clock already closed is never closed
twice (closes are idempotent per organization, environment and period), a clock behind real time
leaves closes that real time catches up; a clock in use cannot be deleted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from creditmeter.billing import cycle
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.verify import verify
from creditmeter.worker import runner
from tests.api.test_test_clocks import (
    CATALOG,
    add_card,
    billing_of,
    new_clock,
    spend,
    subscribe_test,
)
from tests.conftest import utc

Headers = dict[str, str]


def attach(client: TestClient, operator: Headers, org: str, clock_id: str) -> None:
    response = client.post(
        f"/v1/organizations/{org}/test-clock", json={"test_clock": clock_id}, headers=operator
    )
    assert response.status_code == 200, response.text


def advance(client: TestClient, operator: Headers, clock_id: str, to: str) -> None:
    response = client.post(f"/v1/test-clocks/{clock_id}/advance", json={"to": to}, headers=operator)
    assert response.status_code == 200, response.text
    assert all(c["error"] is None for c in response.json()["closes"])


def periods(db: Database, org: str) -> list[object]:
    """The periods closed for ``org``, in order."""
    return [c[0] for c in billing_of(db, org)["closes"]]


def billed(db: Database, org: str) -> dict[str, Any]:
    """``billing_of`` without the invoices' status (dunning moves it on real time)."""
    found = billing_of(db, org)
    found["invoices"] = [(*inv[:2], *inv[3:]) for inv in found["invoices"]]
    return found


def test_a_clock_ahead_of_real_time_never_closes_a_period_twice_after_detach(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Rehearsal Co")
    subscribe_test(db, org, "professional", utc(2026, 1, 1))
    add_card(client, operator, org)  # it pays: unpaid, it would be suspended and allocated nothing
    spend(db, org, 1200, utc(2026, 1, 10))
    clock_id = new_clock(client, operator, "2026-01-01T00:00:00Z")
    attach(client, operator, org, clock_id)
    advance(client, operator, clock_id, "2026-04-15T12:00:00Z")
    rehearsed = billed(db, org)
    assert len(rehearsed["closes"]) == len(rehearsed["invoices"]) == 3

    url = f"/v1/organizations/{org}/test-clock"
    assert client.get(url, headers=operator).json() == {
        "organization_id": org,
        "test_clock": clock_id,
        "frozen_time": "2026-04-15T12:00:00Z",
        "attached_at": client.get(url, headers=operator).json()["attached_at"],
    }
    with clock.frozen_at(utc(2026, 2, 10)):  # real time is behind the clock
        detached = client.delete(url, headers=operator)
        assert detached.status_code == 200, detached.text
        assert detached.json() == {
            "organization_id": org,
            "test_clock": None,
            "detached_from": clock_id,
            "frozen_time": "2026-04-15T12:00:00Z",
            "ahead_of_real_time": True,
        }
        # Real time sees the organization again, and finds its January close done.
        with db.read() as session:
            assert cycle.due(session, CATALOG, utc(2026, 2, 10), org) == []
        runner.tick(db)
        assert billed(db, org) == rehearsed
    assert client.get(url, headers=operator).json() == {
        "organization_id": org,
        "test_clock": None,
        "frozen_time": None,
        "attached_at": None,
    }
    clock_body = client.get(f"/v1/test-clocks/{clock_id}", headers=operator).json()
    assert (clock_body["organizations"], clock_body["frozen_time"]) == ([], "2026-04-15T12:00:00Z")
    again = client.delete(url, headers=operator)
    assert (again.status_code, again.json()["code"]) == (404, "test_clock_not_attached")

    # When real time passes May 1, the worker runs April's close, once; the rehearsed ones stay.
    for _ in range(2):
        with clock.frozen_at(utc(2026, 5, 1, 0, 5)):
            runner.tick(db)
    after = billed(db, org)
    assert periods(db, org) == [
        utc(2026, 1, 1),
        utc(2026, 2, 1),
        utc(2026, 3, 1),
        utc(2026, 4, 1),
    ]
    assert after["invoices"][:3] == rehearsed["invoices"]
    assert after["closes"][:3] == rehearsed["closes"]
    assert len(after["invoices"]) == 4

    # The same story on real time all along gives the same lots, closes and invoices.
    real = make_org("Real Co")
    subscribe_test(db, real, "professional", utc(2026, 1, 1))
    add_card(client, operator, real)
    spend(db, real, 1200, utc(2026, 1, 10))
    for boundary in (utc(2026, 2, 1), utc(2026, 3, 1), utc(2026, 4, 1), utc(2026, 5, 1)):
        assert all(r.ok for r in cycle.run_due(db, boundary, real, catalog=CATALOG))
    with db.write() as session:
        ledger.expire_due(session, utc(2026, 5, 1, 0, 5), real)
    assert billed(db, real) == after
    with db.read() as session:
        assert verify(session) == []


def test_a_clock_behind_real_time_leaves_closes_that_real_time_catches_up(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Rehearsal Co")
    subscribe_test(db, org, "standard", utc(2026, 1, 1))
    clock_id = new_clock(client, operator, "2026-01-01T00:00:00Z")
    attach(client, operator, org, clock_id)
    advance(client, operator, clock_id, "2026-02-15T00:00:00Z")
    assert periods(db, org) == [utc(2026, 1, 1)]
    with clock.frozen_at(utc(2026, 4, 10)):
        detached = client.delete(f"/v1/organizations/{org}/test-clock", headers=operator)
        assert detached.json()["ahead_of_real_time"] is False
        runner.tick(db)
    assert periods(db, org) == [
        utc(2026, 1, 1),
        utc(2026, 2, 1),
        utc(2026, 3, 1),
    ]
    assert len(billing_of(db, org)["invoices"]) == 3
    with db.read() as session:
        assert verify(session) == []


def test_a_clock_in_use_cannot_be_deleted_and_only_operators_detach(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org("Rehearsal Co")
    clock_id = new_clock(client, operator, "2026-03-01T00:00:00Z")
    attach(client, operator, org, clock_id)
    in_use = client.delete(f"/v1/test-clocks/{clock_id}", headers=operator)
    assert (in_use.status_code, in_use.json()["code"]) == (409, "test_clock_in_use")
    assert org in in_use.json()["detail"]
    assert client.get(f"/v1/test-clocks/{clock_id}", headers=operator).json()["organizations"] == [
        org
    ]

    for scope in ("org:admin", "org:read", "org:ingest"):
        key = make_key(org, scope)
        calls = [
            client.get(f"/v1/organizations/{org}/test-clock", headers=key),
            client.delete(f"/v1/organizations/{org}/test-clock", headers=key),
            client.delete(f"/v1/test-clocks/{clock_id}", headers=key),
        ]
        assert [c.status_code for c in calls] == [403, 403, 403], scope
    missing_org = client.delete("/v1/organizations/org_nope/test-clock", headers=operator)
    assert missing_org.status_code == 404
    assert client.get(f"/v1/test-clocks/{clock_id}", headers=operator).json()["organizations"] == [
        org
    ]

    assert client.delete(f"/v1/organizations/{org}/test-clock", headers=operator).status_code == 200
    deleted = client.delete(f"/v1/test-clocks/{clock_id}", headers=operator)
    assert (deleted.status_code, deleted.json()) == (200, {"id": clock_id, "deleted": True})
    gone = client.get(f"/v1/test-clocks/{clock_id}", headers=operator)
    assert (gone.status_code, gone.json()["code"]) == (404, "test_clock_not_found")
    twice = client.delete(f"/v1/test-clocks/{clock_id}", headers=operator)
    assert (twice.status_code, twice.json()["code"]) == (404, "test_clock_not_found")
