"""A clocked organization lives on its clock's time, on SQLite and PostgreSQL: its subscription,
purchases, balance, gate and usage (sent with its own key or an operator's) take the clock's frozen
time as "now" (here a clock about two months ahead of real time, so real time would see none of its
credits); detached, it is on real time again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.billing import org_time, test_clocks
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger.verify import verify
from creditmeter.metering.models import UsageEvent
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Environment, Scope
from tests.api.test_test_clocks import new_clock
from tests.conftest import utc
from tests.metering import event

Headers = dict[str, str]
CLOCK = utc(2027, 1, 10)
CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


def test_a_clocked_organization_subscribes_buys_uses_and_is_gated_on_its_clock(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org("Rehearsal Co")
    clock_id = new_clock(client, operator, "2027-01-10T00:00:00Z")
    attached = client.post(
        f"/v1/organizations/{org}/test-clock", json={"test_clock": clock_id}, headers=operator
    )
    assert attached.status_code == 200, attached.text
    admin = make_key(org, "org:admin", environment="test")
    ingest = make_key(org, "org:ingest", environment="test")
    base = f"/v1/organizations/{org}"
    assert clock.now() < CLOCK - timedelta(days=30)  # real time is well behind the clock

    # The first subscription allocates January 2027 from the clock's day on.
    put = client.put(f"{base}/subscription", json={"plan": "standard"}, headers=admin)
    assert put.status_code == 200, put.text
    got = client.get(f"{base}/subscription", headers=admin).json()
    assert got["current_period"]["label"] == "2027-01", got
    balance = client.get(f"{base}/balance", headers=admin).json()
    [plan_lot] = balance["lots"]
    assert (plan_lot["source"], plan_lot["effective_at"], plan_lot["expires_at"]) == (
        "plan",
        "2027-01-10T00:00:00Z",
        "2027-02-01T00:00:00Z",
    )
    assert balance["available"] == plan_lot["remaining"] != "0"

    # A purchase is granted at the clock's time; it expires 12 months later on the clock.
    card = client.post(f"{base}/payment-methods", json={"card": CARD}, headers=admin)
    assert card.status_code == 201, card.text
    bought = client.post(
        f"{base}/purchases",
        json={"package": "standard"},
        headers={**admin, "Idempotency-Key": "clocked-buy-1"},
    )
    assert bought.status_code == 201, bought.text
    lots = client.get(f"{base}/balance", headers=admin).json()["lots"]
    [purchased] = [lot for lot in lots if lot["source"] == "purchase"]
    assert (purchased["effective_at"], purchased["expires_at"], purchased["remaining"]) == (
        "2027-01-10T00:00:00Z",
        "2028-01-10T00:00:00Z",
        "1000",
    )

    # The gate sees those credits (real time would not: they are not effective yet).
    gate = client.post(
        "/v1/authorize", json={"organization": org, "operation": "inference"}, headers=ingest
    )
    assert gate.status_code == 200, gate.text
    assert (gate.json()["allowed"], gate.json()["reason"]) == (True, "ok")

    # Usage without a time happens at the clock's time and is paid by those lots.
    used = client.post("/v1/usage", json=event("on-clock", org), headers=ingest)
    assert used.status_code == 201, used.text
    assert used.json()["balance"]["paused"] is False
    batch = client.post(
        "/v1/usage/batch",
        json={
            "events": [
                event("in-batch", org),
                event("clock-future", org, occurred_at="2027-01-10T01:00:00Z"),
                event("clock-past", org, occurred_at="2027-01-09T12:00:00Z"),
                event("real-now", org, occurred_at=clock.now().isoformat()),
            ]
        },
        headers=ingest,
    )
    assert batch.status_code == 200, batch.text
    results = {
        r["id"]: (r["status"], r.get("error", {}).get("code")) for r in batch.json()["results"]
    }
    assert results == {
        "in-batch": ("applied", None),
        "clock-future": ("rejected", "event_in_future"),  # in the clock's future
        "clock-past": ("applied", None),
        "real-now": ("rejected", "event_too_old"),  # older than the late window, on the clock
    }
    with db.read() as session:
        stamped = dict(
            session.execute(
                select(UsageEvent.event_id, UsageEvent.occurred_at).where(
                    UsageEvent.organization_id == org
                )
            ).all()
        )
    assert stamped == {"on-clock": CLOCK, "in-batch": CLOCK, "clock-past": utc(2027, 1, 9, 12)}

    # A live subscription would be billed on the clock: refused, nothing changed.
    live = client.put(
        f"{base}/subscription?environment=live", json={"plan": "standard"}, headers=operator
    )
    assert (live.status_code, live.json()["code"]) == (409, "test_clock_attached")
    nothing = client.get(f"{base}/subscription?environment=live", headers=operator)
    assert nothing.status_code == 404

    # Detached, the organization is on real time again: its January 2027 credits are not yet due.
    assert client.delete(f"{base}/test-clock", headers=operator).status_code == 200
    balance = client.get(f"{base}/balance", headers=admin).json()
    assert balance["available"] == "0"
    assert balance["paused"] is True
    with db.read() as session:
        assert verify(session) == []


def test_only_clocked_organizations_leave_real_time(
    db: Database, client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    clocked, other = make_org("On a clock"), make_org("On real time")
    clock_id = new_clock(client, operator, "2027-01-10T00:00:00Z")
    client.post(
        f"/v1/organizations/{clocked}/test-clock", json={"test_clock": clock_id}, headers=operator
    )
    assert clocked in test_clocks.clocked_ids(db)  # attach refreshed this process's cache
    with db.read() as session, clock.frozen_at(utc(2026, 12, 1)):
        assert org_time.now_for(session, clocked) == CLOCK
        assert org_time.now_for(session, other) == utc(2026, 12, 1)
        assert test_clocks.hot_now_for(db, clocked) == CLOCK
        assert test_clocks.hot_now_for(db, other) == utc(2026, 12, 1)
        assert test_clocks.hot_now_for(db, None) == utc(2026, 12, 1)
    client.delete(f"/v1/organizations/{clocked}/test-clock", headers=operator)
    assert clocked not in test_clocks.clocked_ids(db)


def test_an_operator_keys_events_of_a_clocked_organization_happen_on_its_clock(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    clocked, real = make_org("On a clock"), make_org("On real time")
    clock_id = new_clock(client, operator, "2027-01-10T00:00:00Z")
    client.post(
        f"/v1/organizations/{clocked}/test-clock", json={"test_clock": clock_id}, headers=operator
    )
    with db.write() as session:
        _, secret = orgs.create_api_key(
            session, None, "test operator", [Scope.OPERATOR], Environment.TEST, clock.now()
        )
    test_operator = {"Authorization": f"Bearer {secret}"}
    now = clock.now()
    batch = client.post(
        "/v1/usage/batch",
        json={
            "events": [
                event("a", real),
                event("b", clocked),
                {"id": "c", "organization": clocked},  # invalid: no operation
                event("d", clocked, occurred_at=now.isoformat()),  # too old on the clock
                event("e", real, occurred_at="2027-01-09T00:00:00Z"),  # in real time's future
            ]
        },
        headers=test_operator,
    )
    assert batch.status_code == 200, batch.text
    assert [
        (r["id"], r["status"], r.get("error", {}).get("code")) for r in batch.json()["results"]
    ] == [
        ("a", "applied", None),
        ("b", "applied", None),
        ("c", "rejected", "validation_failed"),
        ("d", "rejected", "event_too_old"),
        ("e", "rejected", "event_in_future"),
    ]
    single = client.post("/v1/usage", json=event("f", clocked), headers=test_operator)
    assert single.status_code == 201, single.text
    with db.read() as session:
        stamped = dict(
            session.execute(
                select(UsageEvent.event_id, UsageEvent.occurred_at).where(
                    UsageEvent.organization_id.in_([clocked, real])
                )
            ).all()
        )
    assert stamped["b"] == stamped["f"] == CLOCK
    assert now - timedelta(minutes=5) < stamped["a"] < CLOCK - timedelta(days=30)
    with db.read() as session:
        assert verify(session) == []
