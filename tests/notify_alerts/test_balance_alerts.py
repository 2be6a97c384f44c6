"""Alerts on the balance: the write that crosses a line records the crossing in its own
transaction, and each crossing is told once (``alert.triggered``), each recovery past the
hysteresis once (``alert.resolved``); usage hovering at the line does not flap."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from creditmeter.kit import clock, outbox
from creditmeter.kit.credits import parse_credits
from creditmeter.kit.db import Database
from creditmeter.kit.outbox import Job
from creditmeter.ledger import marks
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.models import Balance
from creditmeter.ledger.verify import verify
from creditmeter.notify import alerts
from creditmeter.notify.models import AlertRule, NotificationEvent
from tests.conftest import utc

Headers = dict[str, str]
T0 = utc(2026, 3, 10, 12)
CROSSINGS = (Job.kind == marks.BALANCE_CROSSING) & (Job.state == outbox.PENDING)


@pytest.fixture(autouse=True)
def frozen() -> Iterator[None]:
    with clock.frozen_at(T0):
        yield


def grant(
    db: Database, org: str, credits: str, source: LotSource = LotSource.PROMO, **kw: Any
) -> str:
    with db.write() as s:
        return ledger.grant(
            s,
            org,
            "live",
            ledger.GrantRequest(
                parse_credits(credits),
                source,
                "test grant",
                kw.pop("effective_at", clock.now()),
                kw.pop("expires_at", None),
            ),
            clock.now(),
        )


def spend(db: Database, org: str, credits: str) -> None:
    with db.write() as s:
        ledger.debit(s, org, "live", parse_credits(credits), "inference", "usage", clock.now())


def run_alert_jobs(db: Database) -> int:
    handlers: dict[str, outbox.Handler] = {
        marks.BALANCE_CROSSING: lambda job: alerts.on_crossing(db, job, clock.now()),
        marks.MARKS_REFRESH: lambda job: alerts.on_marks_refresh(db, job, clock.now()),
        alerts.PROJECT_USAGE_CHECK: lambda job: alerts.on_project_usage(db, job, clock.now()),
    }
    outcomes = outbox.run(db, handlers, now=clock.now() + timedelta(seconds=1))
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    return len(outcomes)


def told(db: Database, org: str, *types: str) -> list[tuple[str, str | None]]:
    """(type, alert id) of the events published for the organization, oldest first."""
    with db.read() as s:
        rows = s.scalars(
            select(NotificationEvent)
            .where(NotificationEvent.organization_id == org)
            .order_by(NotificationEvent.id)
        ).all()
    return [
        (e.type, (e.data.get("alert") or {}).get("id"))
        for e in rows
        if not types or e.type in types
    ]


def add_rule(client: TestClient, org: str, admin: Headers, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/organizations/{org}/alerts", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture
def org(make_org: Callable[..., str], db: Database) -> str:
    org_id = make_org()
    grant(db, org_id, "1000")
    run_alert_jobs(db)
    return org_id


@pytest.fixture
def admin(org: str, make_key: Callable[..., Headers]) -> Headers:
    return make_key(org, "org:admin")


def test_a_crossing_is_recorded_by_the_write_that_crosses_and_told_once(
    client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    rule = add_rule(client, org, admin, type="credits_below", threshold="500")
    assert rule["state"] == "ok"
    assert rule["hysteresis_percent"] == "10"
    spend(db, org, "450")  # 550 left: above the line
    with db.read() as s:
        assert s.scalars(select(Job.kind).where(CROSSINGS)).all() == []
    spend(db, org, "100")  # 450 left: the write enqueued the crossing in its transaction
    with db.read() as s:
        jobs = s.scalars(select(Job).where(CROSSINGS)).all()
        assert [(j.payload["owner"], j.payload["direction"]) for j in jobs] == [
            (f"alert:{rule['id']}", "down")
        ]
        assert s.get(Balance, (org, "live")).band_high_micros == parse_credits("550")  # type: ignore[union-attr]
    run_alert_jobs(db)
    spend(db, org, "100")  # 350: still below, nothing new
    grant(db, org, "180")  # 530: back above the line but inside the hysteresis
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered", "alert.resolved") == [("alert.triggered", rule["id"])]
    got = client.get(f"/v1/organizations/{org}/alerts/{rule['id']}", headers=admin).json()
    assert got["state"] == "triggered"
    assert got["last_value"] == "450"
    grant(db, org, "20")  # 550: the rule re-arms
    spend(db, org, "60")  # 490: and fires again
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered", "alert.resolved") == [
        ("alert.triggered", rule["id"]),
        ("alert.resolved", rule["id"]),
        ("alert.triggered", rule["id"]),
    ]
    event = _last(db, org, "alert.triggered")
    assert event.data["value"] == "490"
    assert event.data["alert"]["threshold"] == "500"
    with db.read() as s:
        assert verify(s) == []


def _last(db: Database, org: str, type_: str) -> NotificationEvent:
    with db.read() as s:
        event = s.scalars(
            select(NotificationEvent)
            .where(NotificationEvent.organization_id == org, NotificationEvent.type == type_)
            .order_by(NotificationEvent.id.desc())
        ).first()
    assert event is not None
    return event


def test_usage_hovering_at_the_line_does_not_flap(
    client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    rule = add_rule(client, org, admin, type="credits_below", threshold="500")
    spend(db, org, "510")  # 490
    for _ in range(5):
        grant(db, org, "20")  # 510: above the line, inside the 10 % hysteresis
        spend(db, org, "20")  # 490
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered", "alert.resolved") == [("alert.triggered", rule["id"])]


def test_levels_fire_in_turn_each_once(
    client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    ids = [
        add_rule(client, org, admin, type="credits_below", threshold=t, hysteresis_percent="0")[
            "id"
        ]
        for t in ("500", "200", "50")
    ]
    spend(db, org, "600")  # 400: the first level
    spend(db, org, "300")  # 100: the second
    spend(db, org, "60")  # 40: the third
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered") == [("alert.triggered", i) for i in ids]
    grant(db, org, "1000")  # 1040: all three resolve in one write
    run_alert_jobs(db)
    assert sorted(told(db, org, "alert.resolved")) == sorted(("alert.resolved", i) for i in ids)


def test_paused_and_resumed_are_told_with_depleted(
    client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    rule = add_rule(client, org, admin, type="organization_paused")
    spend(db, org, "1000")  # exactly zero: paused
    spend(db, org, "5")  # arrears: still paused, nothing new
    run_alert_jobs(db)
    grant(db, org, "3")  # pays arrears, -2: still paused
    run_alert_jobs(db)
    grant(db, org, "10")  # 8: resumed
    run_alert_jobs(db)
    kinds = ("balance.depleted", "organization.paused", "organization.resumed")
    assert [t for t, _ in told(db, org, *kinds)] == [
        "organization.resumed",  # the fixture's first credits
        "balance.depleted",
        "organization.paused",
        "organization.resumed",
    ]
    assert [t for t, _ in told(db, org, "alert.triggered", "alert.resolved")] == [
        "alert.triggered",
        "alert.resolved",
    ]
    assert _last(db, org, "organization.paused").data["available_credits"] == "0"
    assert rule["id"] == _last(db, org, "alert.resolved").data["alert"]["id"]


def test_a_new_organization_is_resumed_by_its_first_credits(
    db: Database, make_org: Callable[..., str]
) -> None:
    org = make_org()
    grant(db, org, "1")
    run_alert_jobs(db)
    assert told(db, org) == [("organization.resumed", None)]


def test_a_rule_already_crossed_when_created_fires_at_once(
    client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    spend(db, org, "900")
    rule = add_rule(client, org, admin, type="credits_below", threshold="500")
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered") == [("alert.triggered", rule["id"])]


def test_percent_of_the_period_grants_follows_a_purchase(
    client: TestClient, db: Database, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    org = make_org()
    admin = make_key(org, "org:admin")
    grant(db, org, "1000", LotSource.PLAN, effective_at=utc(2026, 3, 1))
    rule = add_rule(client, org, admin, type="percent_remaining_below", threshold="20")
    spend(db, org, "700")  # 300 of 1000 = 30 %
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered") == []
    grant(db, org, "1000", LotSource.PURCHASE)  # 1300 of 2000: the line moves to 400
    run_alert_jobs(db)  # marks_refresh (enqueued by the grant)
    spend(db, org, "950")  # 350 of 2000 = 17.5 %
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered") == [("alert.triggered", rule["id"])]
    assert _last(db, org, "alert.triggered").data["value"] == "17.5"


def test_projected_depletion_uses_the_trailing_burn_rate(
    client: TestClient,
    db: Database,
    org: str,
    admin: Headers,
    make_key: Callable[..., Headers],
) -> None:
    ingest = make_key(org, "org:ingest")
    for day in range(7):  # 100 credits a day for a week: 1000 -> 300, 3 days left
        body = {
            "id": f"u{day}",
            "organization": org,
            "operation": "inference",
            "quantities": {"input_tokens": "50000000"},
            "occurred_at": (T0 - timedelta(days=day, hours=1)).isoformat(),
        }
        response = client.post("/v1/usage", json=body, headers=ingest)
        assert response.status_code == 201, response.text
    with db.read() as s:
        burn = alerts.burn_per_day_micros(s, org, "live", clock.now())
    assert burn > 0
    available = client.get(f"/v1/organizations/{org}/balance", headers=admin).json()
    days_left = parse_credits(available["available"]) // burn
    rule = add_rule(
        client, org, admin, type="projected_depletion_within", threshold=str(days_left + 1)
    )
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered") == [("alert.triggered", rule["id"])]
    other = add_rule(client, org, admin, type="projected_depletion_within", threshold="1")
    run_alert_jobs(db)
    assert ("alert.triggered", other["id"]) not in told(db, org)


def test_the_sweep_sees_what_time_changed_without_a_write(
    client: TestClient, db: Database, make_org: Callable[..., str], make_key: Callable[..., Headers]
) -> None:
    org = make_org()
    admin = make_key(org, "org:admin")
    grant(db, org, "100", expires_at=T0 + timedelta(days=3))
    grant(db, org, "1000", effective_at=T0 + timedelta(hours=1))  # not usable yet
    low = add_rule(client, org, admin, type="credits_below", threshold="500")
    expiring = add_rule(client, org, admin, type="credits_expiring_within", threshold="7")
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered") == [("alert.triggered", low["id"])]
    alerts.sweep(db, clock.now())
    run_alert_jobs(db)
    assert ("alert.triggered", expiring["id"]) in told(db, org)
    assert [t for t, _ in told(db, org, "credits.expiring")] == ["credits.expiring"]
    with clock.frozen_at(T0 + timedelta(hours=2)):  # the second lot became usable: 1100
        alerts.sweep(db, clock.now())
        run_alert_jobs(db)
    assert ("alert.resolved", low["id"]) in told(db, org)
    with clock.frozen_at(T0 + timedelta(days=4)):  # the first lot lapsed: nothing expiring
        alerts.sweep(db, clock.now())
        alerts.sweep(db, clock.now())
    assert told(db, org, "alert.resolved").count(("alert.resolved", expiring["id"])) == 1
    assert [t for t, _ in told(db, org, "credits.expiring")] == ["credits.expiring"]


def test_a_deleted_or_disabled_rule_tells_nothing(
    client: TestClient, db: Database, org: str, admin: Headers
) -> None:
    gone = add_rule(client, org, admin, type="credits_below", threshold="500")
    off = add_rule(client, org, admin, type="credits_below", threshold="400")
    url = f"/v1/organizations/{org}/alerts"
    assert client.delete(f"{url}/{gone['id']}", headers=admin).status_code == 200
    patched = client.patch(f"{url}/{off['id']}", json={"enabled": False}, headers=admin)
    assert patched.status_code == 200
    assert patched.json()["enabled"] is False
    spend(db, org, "900")
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered") == []
    with db.read() as s:
        assert s.scalars(select(marks.BalanceMark.owner)).all() == []
        assert s.get(AlertRule, gone["id"]) is None


def test_crossings_of_many_organizations_in_one_batch(
    db: Database, make_org: Callable[..., str], client: TestClient, make_key: Callable[..., Headers]
) -> None:
    orgs_ = [make_org(f"Org {i}") for i in range(4)]
    rules = {}
    for org in orgs_:
        grant(db, org, "100")
        rules[org] = add_rule(client, org, make_key(org), type="credits_below", threshold="50")
    run_alert_jobs(db)
    with db.write() as s:
        s.execute(delete(Job))
    batch = [
        {
            "id": f"b-{org}",
            "organization": org,
            "operation": "inference",
            "quantities": {"input_tokens": "60000000"},
        }
        for org in orgs_
    ]
    operator_ingest = make_key(orgs_[0], "org:ingest")
    response = client.post("/v1/usage/batch", json={"events": batch[:1]}, headers=operator_ingest)
    assert response.status_code in (200, 201, 207), response.text
    run_alert_jobs(db)
    assert told(db, orgs_[0], "alert.triggered") == [("alert.triggered", rules[orgs_[0]]["id"])]
    for org in orgs_[1:]:
        assert told(db, org, "alert.triggered") == []
