"""The alert rules API: budget alerts through the ingest path, bad input refused with a clear 4xx
that changes nothing, and one organization's rules out of another's reach."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.kit.outbox import Job
from creditmeter.metering.models import ProjectUsage
from creditmeter.notify import alerts
from creditmeter.notify.models import AlertRule
from tests.notify_alerts.test_balance_alerts import T0, grant, run_alert_jobs, told

Headers = dict[str, str]


@pytest.fixture(autouse=True)
def frozen() -> Iterator[None]:
    with clock.frozen_at(T0):
        yield


@pytest.fixture
def org(make_org: Callable[..., str], db: Database) -> str:
    org_id = make_org()
    grant(db, org_id, "1000")
    return org_id


@pytest.fixture
def admin(org: str, make_key: Callable[..., Headers]) -> Headers:
    return make_key(org, "org:admin")


def url(org: str, rest: str = "") -> str:
    return f"/v1/organizations/{org}/alerts{rest}"


def test_a_project_budget_alert_fires_from_the_ingest_write(
    client: TestClient, db: Database, org: str, admin: Headers, make_key: Callable[..., Headers]
) -> None:
    project = client.post(
        f"/v1/organizations/{org}/projects", json={"name": "research"}, headers=admin
    ).json()
    budget = client.put(
        f"/v1/organizations/{org}/projects/{project['id']}/budget",
        json={"monthly_credits": "100"},
        headers=admin,
    )
    assert budget.status_code == 200, budget.text
    rule = client.post(
        url(org),
        json={"type": "project_budget_percent", "threshold": "80", "project": "research"},
        headers=admin,
    ).json()
    assert rule["project_id"] == project["id"]
    ingest = make_key(org, "org:ingest")

    def use(event_id: str, tokens: str) -> None:
        body = {
            "id": event_id,
            "organization": org,
            "project": project["id"],
            "operation": "inference",
            "quantities": {"input_tokens": tokens},
        }
        response = client.post("/v1/usage", json=body, headers=ingest)
        assert response.status_code == 201, response.text

    use("a", "20000000")  # 40 credits: 40 %
    run_alert_jobs(db)
    with db.read() as s:
        assert s.scalar(select(ProjectUsage.alert_at_micros)) == 80_000_000
    use("b", "21000000")  # 82 credits: 82 %, the write enqueued the check
    with db.read() as s:
        pending = s.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.kind == alerts.PROJECT_USAGE_CHECK, Job.state == outbox.PENDING)
        )
    assert pending == 1
    run_alert_jobs(db)
    use("c", "1000000")  # 84 %: nothing new
    run_alert_jobs(db)
    assert told(db, org, "alert.triggered") == [("alert.triggered", rule["id"])]
    with db.read() as s:
        assert s.scalar(select(ProjectUsage.alert_at_micros)) == alerts.NEVER
    # Raising the budget resolves it at once.
    client.put(
        f"/v1/organizations/{org}/projects/{project['id']}/budget",
        json={"monthly_credits": "1000"},
        headers=admin,
    )
    assert told(db, org, "alert.resolved") == [("alert.resolved", rule["id"])]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"type": "credits_above", "threshold": "1"}, "validation_failed"),
        ({"type": "credits_below"}, "invalid_alert"),
        ({"type": "credits_below", "threshold": "-5"}, "invalid_alert"),
        ({"type": "credits_below", "threshold": "1.0000001"}, "invalid_alert"),
        ({"type": "credits_below", "threshold": "ten"}, "invalid_alert"),
        ({"type": "percent_remaining_below", "threshold": "120"}, "invalid_alert"),
        ({"type": "percent_remaining_below", "threshold": "12.345"}, "invalid_alert"),
        ({"type": "projected_depletion_within", "threshold": "1.5"}, "invalid_alert"),
        ({"type": "credits_expiring_within", "threshold": "400"}, "invalid_alert"),
        ({"type": "organization_paused", "threshold": "5"}, "invalid_alert"),
        ({"type": "project_budget_percent", "threshold": "80"}, "invalid_alert"),
        ({"type": "project_budget_percent", "threshold": "80", "project": "nope"}, "not_found"),
        ({"type": "credits_below", "threshold": "5", "project": "x"}, "invalid_alert"),
        ({"type": "credits_below", "threshold": "5", "recipients": ["not-an-address"]},
         "validation_failed"),
        ({"type": "credits_below", "threshold": "5", "hysteresis_percent": "150"},
         "invalid_alert"),
        ({"type": "credits_below", "threshold": "5", "colour": "red"}, "validation_failed"),
    ],
)  # fmt: skip
def test_bad_rules_are_refused_and_change_nothing(
    client: TestClient, db: Database, org: str, admin: Headers, body: dict[str, Any], code: str
) -> None:
    response = client.post(url(org), json=body, headers=admin)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["code"] == code
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(AlertRule)) == 0


def test_rules_are_listed_patched_and_deleted(client: TestClient, org: str, admin: Headers) -> None:
    made = [
        client.post(url(org), json={"type": "credits_below", "threshold": t}, headers=admin)
        for t in ("500", "200", "50")
    ]
    assert all(r.status_code == 201 for r in made)
    first = client.get(url(org), params={"limit": 2}, headers=admin).json()
    assert len(first["data"]) == 2
    assert first["has_more"]
    rest = client.get(url(org), params={"cursor": first["next_cursor"]}, headers=admin).json()
    assert [r["threshold"] for r in first["data"] + rest["data"]] == ["500", "200", "50"]
    rule_id = made[0].json()["id"]
    patched = client.patch(
        url(org, f"/{rule_id}"),
        json={"threshold": "750.5", "recipients": ["Ops@Example.com"], "name": "low"},
        headers=admin,
    ).json()
    assert (patched["threshold"], patched["recipients"], patched["name"]) == (
        "750.5",
        ["ops@example.com"],
        "low",
    )
    bad = client.patch(url(org, f"/{rule_id}"), json={"threshold": "0"}, headers=admin)
    assert bad.status_code == 422
    assert client.get(url(org, f"/{rule_id}"), headers=admin).json()["threshold"] == "750.5"
    assert client.delete(url(org, f"/{rule_id}"), headers=admin).status_code == 200
    assert client.get(url(org, f"/{rule_id}"), headers=admin).status_code == 404


def test_another_organization_and_weaker_keys_cannot_reach_rules(
    client: TestClient,
    org: str,
    admin: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    rule = client.post(url(org), json={"type": "credits_below", "threshold": "5"}, headers=admin)
    rule_id = rule.json()["id"]
    other = make_org("Other")
    other_admin = make_key(other, "org:admin")
    assert client.get(url(org), headers=other_admin).status_code == 404
    assert client.get(url(org, f"/{rule_id}"), headers=other_admin).status_code == 404
    assert client.get(url(other, f"/{rule_id}"), headers=other_admin).status_code == 404
    assert client.delete(url(other, f"/{rule_id}"), headers=other_admin).status_code == 404
    reader = make_key(org, "org:read")
    assert client.get(url(org, f"/{rule_id}"), headers=reader).status_code == 200
    refused = client.post(
        url(org), json={"type": "credits_below", "threshold": "5"}, headers=reader
    )
    assert refused.status_code == 403
    test_key = make_key(org, "org:admin", environment="test")
    assert client.get(url(org, f"/{rule_id}"), headers=test_key).status_code == 404
    assert client.get(url(org), headers=test_key).json()["data"] == []
