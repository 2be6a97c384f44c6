"""Project budgets (DESIGN.md §2 "Project budgets"): a monthly credit cap per project inside the
organization's shared pool. Usage is tracked per project per calendar month (UTC); the gate and holds
refuse a project over its cap while other projects and the organization keep running; the next
month starts from zero."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.orgs import service as orgs
from tests.conftest import utc
from tests.metering import (
    T0,
    Headers,
    assert_clean,
    assert_problem,
    authorize,
    event,
    grant,
    state_of,
    summary,
)

TWO = {"cpu_seconds": "50000"}  # training: base 1 + 50,000 x 0.00002 = 2 credits


@pytest.fixture(autouse=True)
def _noon(db: Database) -> Iterator[None]:
    """Every test runs at noon on 10 March 2026, and the ledger proves itself afterwards."""
    with clock.frozen_at(T0):
        yield
    assert_clean(db)


@dataclass
class Org:
    id: str
    key: Headers
    admin: Headers
    research: str
    serving: str


@pytest.fixture
def make_tenant(
    db: Database,
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> Callable[..., Org]:
    def _make(name: str = "Acme", credits: str = "100") -> Org:
        org = make_org(name)
        with db.write() as s:
            research = orgs.create_project(s, org, "Research", clock.now()).id
            serving = orgs.create_project(s, org, "Serving", clock.now()).id
        grant(client, operator, org, credits)
        return Org(org, make_key(org, "org:ingest"), make_key(org, "org:admin"), research, serving)

    return _make


@pytest.fixture
def acme(make_tenant: Callable[..., Org]) -> Org:
    return make_tenant()


def put_budget(client: TestClient, headers: Headers, org: str, project: str, monthly: Any) -> Any:
    return client.put(
        f"/v1/organizations/{org}/projects/{project}/budget",
        json={"monthly_credits": monthly},
        headers=headers,
    )


def set_budget(client: TestClient, acme: Org, monthly: Any, project: str | None = None) -> Any:
    response = put_budget(client, acme.admin, acme.id, project or acme.research, monthly)
    assert response.status_code == 200, response.text
    return response.json()


def use(
    client: TestClient, acme: Org, event_id: str, project: str | None = "Research", **extra: Any
) -> Any:
    body = event(event_id, acme.id, "training", quantities=TWO, project=project, **extra)
    response = client.post("/v1/usage", json=body, headers=acme.key)
    assert response.status_code == 201, response.text
    return response.json()


def reason(client: TestClient, acme: Org, credits: str, project: str | None = "Research") -> str:
    body: dict[str, Any] = {"credits": credits}
    if project is not None:
        body["project"] = project
    result: str = authorize(client, acme.key, acme.id, **body)["reason"]
    return result


def test_setting_a_budget_answers_what_the_project_used_this_month(
    client: TestClient, db: Database, acme: Org
) -> None:
    use(client, acme, "run-1")
    use(client, acme, "run-2", project="Serving")
    use(client, acme, "run-3", project=None)  # no project: counts for no budget

    body = set_budget(client, acme, "5")

    assert body == {
        "project_id": acme.research,
        "monthly_credits": "5",
        "month": "2026-03",
        "used_this_month": "2",
    }
    assert set_budget(client, acme, "7.5")["monthly_credits"] == "7.5"


def test_the_gate_refuses_a_project_over_its_budget_while_the_rest_keeps_running(
    client: TestClient, db: Database, acme: Org
) -> None:
    set_budget(client, acme, "5")
    use(client, acme, "run-1")
    use(client, acme, "run-2")
    assert reason(client, acme, "1") == "ok"  # 4 + 1 = 5: exactly the budget
    assert reason(client, acme, "1.000001") == "project_budget_exceeded"

    use(client, acme, "run-3")  # usage already performed is recorded even past the budget
    assert set_budget(client, acme, "5")["used_this_month"] == "6"
    answer = authorize(client, acme.key, acme.id, project=acme.research, credits="0.000001")
    assert (answer["allowed"], answer["reason"]) == (False, "project_budget_exceeded")
    assert answer["available"] == "94"  # the organization's credits are not the problem
    # another project and the organization itself keep running
    assert reason(client, acme, "50", project="Serving") == "ok"
    assert reason(client, acme, "50", project=None) == "ok"
    assert summary(client, acme.key, acme.id)[3] is False
    assert_clean(db)


def test_insufficient_credits_comes_before_the_budget(
    client: TestClient, make_tenant: Callable[..., Org]
) -> None:
    acme = make_tenant(credits="1")
    set_budget(client, acme, "0.5")
    assert reason(client, acme, "2") == "insufficient_credits"
    assert reason(client, acme, "0.75") == "project_budget_exceeded"


def test_removing_the_budget_lifts_the_cap(client: TestClient, acme: Org) -> None:
    set_budget(client, acme, "1")
    use(client, acme, "run-1")
    assert reason(client, acme, "1") == "project_budget_exceeded"

    body = set_budget(client, acme, None)

    assert (body["monthly_credits"], body["used_this_month"]) == (None, "2")
    assert reason(client, acme, "50") == "ok"


def test_the_next_month_starts_from_zero(client: TestClient, db: Database, acme: Org) -> None:
    set_budget(client, acme, "3")
    use(client, acme, "run-1")
    use(client, acme, "run-2")
    assert reason(client, acme, "0.000001") == "project_budget_exceeded"

    with clock.frozen_at(utc(2026, 3, 31, 23, 59, 59)):
        assert reason(client, acme, "0.000001") == "project_budget_exceeded"
    with clock.frozen_at(utc(2026, 4, 1)):
        assert reason(client, acme, "3") == "ok"
        assert set_budget(client, acme, "3") == {
            "project_id": acme.research,
            "monthly_credits": "3",
            "month": "2026-04",
            "used_this_month": "0",
        }
    with clock.frozen_at(utc(2026, 4, 1, 12)):
        # a late event from March counts for March, not for April
        use(client, acme, "late", occurred_at="2026-03-31T23:00:00Z")
        assert set_budget(client, acme, "3")["used_this_month"] == "0"
        use(client, acme, "april-1")
        assert set_budget(client, acme, "3")["used_this_month"] == "2"
        assert reason(client, acme, "1") == "ok"
        assert reason(client, acme, "1.000001") == "project_budget_exceeded"
    assert_clean(db)


def test_a_reversed_event_no_longer_counts_against_the_budget(
    client: TestClient, operator: Headers, acme: Org
) -> None:
    set_budget(client, acme, "3")
    use(client, acme, "run-1")
    use(client, acme, "run-2")
    assert reason(client, acme, "1") == "project_budget_exceeded"

    reversed_ = client.post(
        f"/v1/organizations/{acme.id}/usage/run-2/reverse",
        json={"reason": "duplicate job"},
        headers=operator,
    )

    assert reversed_.status_code == 200, reversed_.text
    assert set_budget(client, acme, "3")["used_this_month"] == "2"
    assert reason(client, acme, "1") == "ok"


def test_test_mode_usage_does_not_count_against_the_live_budget(
    client: TestClient,
    operator: Headers,
    make_key: Callable[..., Headers],
    acme: Org,
) -> None:
    sandbox = make_key(acme.id, "org:ingest", environment="test")
    grant(client, operator, acme.id, "100", environment="test")
    set_budget(client, acme, "3")
    for i in range(3):
        body = event(f"t{i}", acme.id, "training", quantities=TWO, project="Research")
        assert client.post("/v1/usage", json=body, headers=sandbox).status_code == 201
    assert reason(client, acme, "3") == "ok"
    refused = authorize(client, sandbox, acme.id, project="Research", credits="1")
    assert refused["reason"] == "project_budget_exceeded"


@pytest.mark.parametrize("monthly", ["0", "-5", 5.5, "lots", "1.0000001", True])
def test_a_budget_is_a_positive_decimal_string_or_null(
    client: TestClient, db: Database, acme: Org, monthly: Any
) -> None:
    before = state_of(db, acme.id)
    assert_problem(put_budget(client, acme.admin, acme.id, acme.research, monthly), 422)
    assert state_of(db, acme.id) == before


def test_the_budget_field_is_required(client: TestClient, acme: Org) -> None:
    response = client.put(
        f"/v1/organizations/{acme.id}/projects/{acme.research}/budget", json={}, headers=acme.admin
    )
    assert_problem(response, 422)


def test_an_unknown_or_foreign_project_is_404(
    client: TestClient, db: Database, make_tenant: Callable[..., Org]
) -> None:
    acme, globex = make_tenant("Acme"), make_tenant("Globex")
    before = state_of(db, globex.id)
    assert_problem(put_budget(client, acme.admin, acme.id, "proj_01HZZZZZZZZZZZZZZZZZZZZZZZ", "5"),
                   404)  # fmt: skip
    assert_problem(put_budget(client, acme.admin, acme.id, globex.research, "5"), 404)
    assert state_of(db, globex.id) == before


@pytest.mark.parametrize(("scope", "status"), [("org:read", 403), ("org:ingest", 403)])
def test_only_admins_and_operators_set_budgets(
    client: TestClient,
    db: Database,
    make_key: Callable[..., Headers],
    acme: Org,
    scope: str,
    status: int,
) -> None:
    key = make_key(acme.id, scope)
    before = state_of(db, acme.id)
    assert_problem(put_budget(client, key, acme.id, acme.research, "5"), status)
    assert state_of(db, acme.id) == before


def test_the_month_of_an_event_is_its_utc_month_whatever_offset_it_was_sent_with(
    client: TestClient, db: Database, acme: Org
) -> None:
    set_budget(client, acme, "3")
    with clock.frozen_at(utc(2026, 4, 1, 12)):
        # 01:00 in Paris on April 1st is 23:00 UTC on March 31st: March's usage
        use(client, acme, "late", occurred_at="2026-04-01T01:00:00+02:00")
        assert set_budget(client, acme, "3")["used_this_month"] == "0"
        assert reason(client, acme, "3") == "ok"
    assert set_budget(client, acme, "3")["used_this_month"] == "1.4"  # off-peak in March
