"""Holds for long operations (DESIGN.md §2 "Hold"): reserve an estimate up front, extend it, settle it
with the actual usage (recorded like any event; its cost may exceed the hold; the rest is released)
or release it. Held credits are unavailable to others; an expired hold stops counting at once and the
worker releases it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.metering import holds
from creditmeter.metering.domain import EventInput
from creditmeter.metering.ingest import IngestContext, ingest
from creditmeter.metering.models import Hold, UsageEvent
from creditmeter.orgs import service as orgs
from creditmeter.pricing import load_rate_card
from creditmeter.worker.runner import tick
from tests.metering import (
    H100_HOUR,
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
    project: str


@pytest.fixture
def make_tenant(
    db: Database,
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> Callable[..., Org]:
    def _make(name: str = "Acme", credits: str | None = "10") -> Org:
        org = make_org(name, f"{name.lower()}-ext")
        with db.write() as s:
            project = orgs.create_project(s, org, "Research", clock.now()).id
        if credits:
            grant(client, operator, org, credits)
        return Org(org, make_key(org, "org:ingest"), project)

    return _make


@pytest.fixture
def acme(make_tenant: Callable[..., Org]) -> Org:
    return make_tenant()


def place(client: TestClient, headers: Headers, org: str, **body: Any) -> Any:
    return client.post(
        "/v1/holds", json={"organization": org, "operation": "training", **body}, headers=headers
    )


def placed(client: TestClient, headers: Headers, org: str, **body: Any) -> dict[str, Any]:
    response = place(client, headers, org, **body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def settle(client: TestClient, headers: Headers, hold_id: str, event_id: str, **body: Any) -> Any:
    return client.post(
        f"/v1/holds/{hold_id}/settle",
        json={"id": event_id, "quantities": H100_HOUR, **body},
        headers=headers,
    )


def extend(client: TestClient, headers: Headers, hold_id: str, **body: Any) -> Any:
    return client.post(f"/v1/holds/{hold_id}/extend", json=body, headers=headers)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def hold_row(db: Database, hold_id: str) -> Hold:
    with db.read() as s:
        hold = s.get(Hold, hold_id)
        assert hold is not None
        s.expunge(hold)
    return hold


# --- placing -----------------------------------------------------------------------------------


def test_a_hold_reserves_credits_that_no_one_else_can_use(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="4", ttl_seconds=600)

    assert hold["id"].startswith("hold_")
    assert (hold["credits"], hold["status"], hold["operation"]) == ("4", "active", "training")
    assert (hold["organization_id"], hold["project_id"]) == (acme.id, None)
    assert hold["expires_at"] == iso(T0 + timedelta(seconds=600))
    assert summary(client, acme.key, acme.id) == ("6", "0", "4", False)
    assert authorize(client, acme.key, acme.id, credits="6")["allowed"] is True
    assert authorize(client, acme.key, acme.id, credits="6.000001")["reason"] == (
        "insufficient_credits"
    )
    assert client.get(f"/v1/holds/{hold['id']}", headers=acme.key).json() == hold
    assert_clean(db)


def test_a_hold_of_estimated_quantities_reserves_their_price_for_an_hour_by_default(
    client: TestClient, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, quantities=H100_HOUR)
    assert hold["credits"] == "6.76"
    assert hold["expires_at"] == iso(T0 + timedelta(hours=1))
    assert summary(client, acme.key, acme.id) == ("3.24", "0", "6.76", False)


def test_a_hold_of_the_whole_balance_is_allowed_and_pauses_others(
    client: TestClient, acme: Org
) -> None:
    placed(client, acme.key, acme.id, credits="10")
    assert summary(client, acme.key, acme.id) == ("0", "0", "10", True)
    assert_problem(
        place(client, acme.key, acme.id, credits="0.000001"), 402, "insufficient_credits"
    )


def test_a_hold_that_cannot_be_covered_is_402_and_reserves_nothing(
    client: TestClient, db: Database, acme: Org
) -> None:
    placed(client, acme.key, acme.id, credits="7")
    before = state_of(db, acme.id)
    body = assert_problem(place(client, acme.key, acme.id, credits="3.000001"), 402,
                          "insufficient_credits")  # fmt: skip
    assert "nothing was reserved" in body["detail"]
    assert_problem(place(client, acme.key, acme.id, quantities=H100_HOUR), 402,
                   "insufficient_credits")  # fmt: skip
    assert state_of(db, acme.id) == before


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"credits": "1", "ttl_seconds": 0}, 422, None),
        ({"credits": "1", "ttl_seconds": 30 * 24 * 3600 + 1}, 422, None),
        ({"credits": "1", "ttl_seconds": "60"}, 422, None),
        ({"credits": "0"}, 422, None),
        ({"credits": "-2"}, 422, None),
        ({"credits": 2.5}, 422, None),
        ({"credits": "1", "project": "Nope"}, 422, "unknown_project"),
        ({"credits": "1", "operation": "rendering"}, 422, "unknown_operation"),
        ({"quantities": {"gpu_seconds": "60"}}, 422, "unknown_class"),
        ({"quantities": {"gpu_seconds": "-60", "accelerator": "h100"}}, 422, "invalid_quantity"),
        ({"credits": "1", "organization": "org_01HZZZZZZZZZZZZZZZZZZZZZZZ"}, 404,
         "unknown_organization"),
    ],
)  # fmt: skip
def test_bad_holds_are_clear_4xx_problems_and_reserve_nothing(
    client: TestClient,
    db: Database,
    acme: Org,
    body: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    before = state_of(db, acme.id)
    payload = {"organization": acme.id, "operation": "training", **body}
    assert_problem(client.post("/v1/holds", json=payload, headers=acme.key), status, code)
    assert state_of(db, acme.id) == before


def test_a_paused_organization_cannot_place_a_hold(
    client: TestClient, db: Database, acme: Org
) -> None:
    for i in range(2):
        client.post("/v1/usage", json=event(f"run-{i}", acme.id, "training"), headers=acme.key)
    assert_problem(place(client, acme.key, acme.id, credits="0.01"), 402, "insufficient_credits")


# --- extending ---------------------------------------------------------------------------------


def test_extending_adds_credits_and_resets_the_expiry_from_now(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="2", ttl_seconds=600)
    later = T0 + timedelta(minutes=8)
    with clock.frozen_at(later):
        more = extend(client, acme.key, hold["id"], credits="3")
        assert more.status_code == 200, more.text
        assert (more.json()["credits"], more.json()["expires_at"]) == ("5", hold["expires_at"])
        assert summary(client, acme.key, acme.id) == ("5", "0", "5", False)

        longer = extend(client, acme.key, hold["id"], ttl_seconds=900)
        assert longer.json()["expires_at"] == iso(later + timedelta(seconds=900))
        assert longer.json()["credits"] == "5"

        both = extend(client, acme.key, hold["id"], credits="1", ttl_seconds=60)
        assert (both.json()["credits"], both.json()["expires_at"]) == (
            "6",
            iso(later + timedelta(seconds=60)),
        )
    assert summary(client, acme.key, acme.id) == ("4", "0", "6", False)
    assert_clean(db)


def test_extending_beyond_the_balance_is_402_and_changes_nothing(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="6")
    before = state_of(db, acme.id)
    response = extend(client, acme.key, hold["id"], credits="4.000001", ttl_seconds=7200)
    assert_problem(response, 402, "insufficient_credits")
    assert state_of(db, acme.id) == before
    assert extend(client, acme.key, hold["id"], credits="4").json()["credits"] == "10"


def test_extending_needs_credits_or_a_ttl(client: TestClient, acme: Org) -> None:
    hold = placed(client, acme.key, acme.id, credits="1")
    assert_problem(extend(client, acme.key, hold["id"]), 422)
    assert_problem(extend(client, acme.key, hold["id"], credits="0"), 422)
    assert_problem(extend(client, acme.key, hold["id"], ttl_seconds=0), 422)


def test_a_hold_that_is_over_cannot_be_extended(
    client: TestClient, db: Database, acme: Org
) -> None:
    released = placed(client, acme.key, acme.id, credits="1")
    client.delete(f"/v1/holds/{released['id']}", headers=acme.key)
    assert_problem(extend(client, acme.key, released["id"], ttl_seconds=60), 409, "hold_released")

    settled = placed(client, acme.key, acme.id, credits="1")
    settle(client, acme.key, settled["id"], "run-1")
    assert_problem(extend(client, acme.key, settled["id"], credits="1"), 409, "hold_settled")

    lapsing = placed(client, acme.key, acme.id, credits="1", ttl_seconds=60)
    with clock.frozen_at(T0 + timedelta(seconds=61)):
        before = state_of(db, acme.id)
        assert_problem(
            extend(client, acme.key, lapsing["id"], ttl_seconds=600), 409, "hold_expired"
        )
        assert state_of(db, acme.id) == before


# --- settling ----------------------------------------------------------------------------------


def test_settling_records_the_usage_and_releases_the_rest(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="8")

    response = settle(client, acme.key, hold["id"], "run-1", metadata={"job": "llama-ft"})

    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["id"], body["status"], body["credits"]) == ("run-1", "applied", "6.76")
    assert body["balance"] == {"available": "3.24", "arrears": "0", "paused": False}
    assert summary(client, acme.key, acme.id) == ("3.24", "0", "0", False)
    assert client.get(f"/v1/holds/{hold['id']}", headers=acme.key).json()["status"] == "settled"
    with db.read() as s:
        recorded = s.scalars(select(UsageEvent).where(UsageEvent.event_id == "run-1")).one()
        assert (recorded.hold_id, recorded.operation, recorded.credits_micros) == (
            hold["id"],
            "training",
            6_760_000,
        )
        assert recorded.event_metadata == {"job": "llama-ft"}
    assert_clean(db)


def test_the_actual_cost_may_exceed_the_hold(client: TestClient, db: Database, acme: Org) -> None:
    hold = placed(client, acme.key, acme.id, credits="1")
    assert settle(client, acme.key, hold["id"], "run-1").json()["credits"] == "6.76"
    assert summary(client, acme.key, acme.id) == ("3.24", "0", "0", False)
    assert_clean(db)


def test_a_settlement_beyond_the_balance_goes_to_arrears_and_pauses(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="5")
    three_hours = {"gpu_seconds": "10800", "accelerator": "h100"}  # 1 + 3 x 5.76 = 18.28

    body = settle(client, acme.key, hold["id"], "run-1", quantities=three_hours).json()

    assert body["credits"] == "18.28"
    assert body["balance"] == {"available": "-8.28", "arrears": "8.28", "paused": True}
    assert summary(client, acme.key, acme.id) == ("-8.28", "8.28", "0", True)
    grant(client, operator, acme.id, "10")
    assert summary(client, acme.key, acme.id) == ("1.72", "0", "0", False)
    assert_clean(db)


def test_settling_twice_with_the_same_event_id_is_idempotent(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="8")
    first = settle(client, acme.key, hold["id"], "run-1").json()
    before = state_of(db, acme.id)

    again = settle(client, acme.key, hold["id"], "run-1")

    assert again.status_code == 200, again.text
    assert again.json()["status"] == "duplicate"
    assert {k: again.json()[k] for k in ("id", "credits", "breakdown")} == {
        k: first[k] for k in ("id", "credits", "breakdown")
    }
    assert again.json()["balance"] == first["balance"]
    assert state_of(db, acme.id) == before


def test_settling_a_settled_hold_with_another_event_is_409(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="8")
    settle(client, acme.key, hold["id"], "run-1")
    before = state_of(db, acme.id)
    assert_problem(settle(client, acme.key, hold["id"], "run-2"), 409, "hold_already_settled")
    # the same event id with other quantities is another event
    other = settle(client, acme.key, hold["id"], "run-1", quantities={"cpu_seconds": "1"})
    assert_problem(other, 409, "event_id_conflict")
    assert state_of(db, acme.id) == before


def test_an_unpriceable_settlement_is_422_and_the_hold_stays(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="8")
    before = state_of(db, acme.id)
    bad = settle(client, acme.key, hold["id"], "run-1", quantities={"gpu_seconds": "-1"})
    assert_problem(bad, 422, "invalid_quantity")
    assert_problem(settle(client, acme.key, hold["id"], "run-1", member="nobody@x.example"), 422,
                   "unknown_member")  # fmt: skip
    assert state_of(db, acme.id) == before
    assert settle(client, acme.key, hold["id"], "run-1").status_code == 201


def test_a_usage_event_naming_the_hold_settles_it(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="8")
    response = client.post(
        "/v1/usage", json=event("run-1", acme.id, "training", hold=hold["id"]), headers=acme.key
    )
    assert response.status_code == 201, response.text
    assert summary(client, acme.key, acme.id) == ("3.24", "0", "0", False)
    assert hold_row(db, hold["id"]).status == "settled"
    assert_problem(settle(client, acme.key, hold["id"], "run-2"), 409, "hold_already_settled")
    assert_clean(db)


# --- releasing ---------------------------------------------------------------------------------


def test_releasing_gives_the_credits_back_and_twice_is_harmless(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="4")

    released = client.delete(f"/v1/holds/{hold['id']}", headers=acme.key)

    assert released.status_code == 200, released.text
    assert (released.json()["status"], released.json()["credits"]) == ("released", "4")
    assert summary(client, acme.key, acme.id) == ("10", "0", "0", False)
    before = state_of(db, acme.id)
    again = client.delete(f"/v1/holds/{hold['id']}", headers=acme.key)
    assert (again.status_code, again.json()["status"]) == (200, "released")
    assert state_of(db, acme.id) == before
    assert_problem(settle(client, acme.key, hold["id"], "run-1"), 409, "hold_released")
    assert state_of(db, acme.id) == before
    assert_clean(db)


def test_a_settled_hold_cannot_be_released(client: TestClient, db: Database, acme: Org) -> None:
    hold = placed(client, acme.key, acme.id, credits="8")
    settle(client, acme.key, hold["id"], "run-1")
    before = state_of(db, acme.id)
    assert_problem(client.delete(f"/v1/holds/{hold['id']}", headers=acme.key), 409, "hold_settled")
    assert state_of(db, acme.id) == before


def test_unknown_holds_are_404(client: TestClient, acme: Org) -> None:
    missing = "hold_01HZZZZZZZZZZZZZZZZZZZZZZZ"
    assert_problem(client.get(f"/v1/holds/{missing}", headers=acme.key), 404)
    assert_problem(client.delete(f"/v1/holds/{missing}", headers=acme.key), 404)
    assert_problem(extend(client, acme.key, missing, ttl_seconds=60), 404)
    assert_problem(settle(client, acme.key, missing, "run-1"), 404)


# --- expiry ------------------------------------------------------------------------------------


def test_an_expired_hold_stops_counting_at_once_and_the_worker_releases_it(
    client: TestClient, db: Database, acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="4", ttl_seconds=60)
    lasting = placed(client, acme.key, acme.id, credits="1", ttl_seconds=3600)

    with clock.frozen_at(T0 + timedelta(seconds=59)):
        assert authorize(client, acme.key, acme.id)["available"] == "5"
    with clock.frozen_at(T0 + timedelta(seconds=60)):
        # not yet swept: the gate, new holds and the balance already ignore it
        assert authorize(client, acme.key, acme.id)["available"] == "9"
        assert summary(client, acme.key, acme.id) == ("9", "0", "1", False)
        assert client.get(f"/v1/holds/{hold['id']}", headers=acme.key).json()["status"] == (
            "expired"
        )
        tick(db)
        assert hold_row(db, hold["id"]).status == "expired"
        assert hold_row(db, lasting["id"]).status == "active"
        assert summary(client, acme.key, acme.id) == ("9", "0", "1", False)
        before = state_of(db, acme.id)
        tick(db)  # twice is once
        assert state_of(db, acme.id) == before
        # releasing an expired hold changes nothing
        assert client.delete(f"/v1/holds/{hold['id']}", headers=acme.key).status_code == 200
        assert state_of(db, acme.id) == before
    assert_clean(db)


def test_the_balance_endpoint_ignores_an_expired_hold_at_once(
    client: TestClient, db: Database, acme: Org
) -> None:
    placed(client, acme.key, acme.id, credits="4", ttl_seconds=60)
    with clock.frozen_at(T0 + timedelta(seconds=60)):
        assert (
            summary(client, acme.key, acme.id)[0]
            == authorize(client, acme.key, acme.id)["available"]
        )


def test_a_new_hold_may_use_what_an_expired_one_reserved(
    client: TestClient, db: Database, acme: Org
) -> None:
    placed(client, acme.key, acme.id, credits="8", ttl_seconds=60)
    with clock.frozen_at(T0 + timedelta(minutes=2)):
        hold = placed(client, acme.key, acme.id, credits="9")
        assert summary(client, acme.key, acme.id) == ("1", "0", "9", False)
        assert hold["credits"] == "9"
    assert_clean(db)


@pytest.mark.parametrize("swept", [True, False], ids=["swept", "not yet swept"])
def test_the_usage_of_an_expired_hold_is_still_recorded(
    client: TestClient, db: Database, acme: Org, swept: bool
) -> None:
    hold = placed(client, acme.key, acme.id, credits="8", ttl_seconds=60)
    with clock.frozen_at(T0 + timedelta(minutes=5)):
        if swept:
            tick(db)
        response = settle(client, acme.key, hold["id"], "run-1")
        assert response.status_code == 201, response.text
        assert response.json()["balance"] == {"available": "3.24", "arrears": "0", "paused": False}
        assert summary(client, acme.key, acme.id) == ("3.24", "0", "0", False)
        tick(db)
        assert summary(client, acme.key, acme.id) == ("3.24", "0", "0", False)
    assert_clean(db)


def test_usage_recorded_while_a_hold_lapsed_reports_the_balance_without_it(
    client: TestClient, db: Database, acme: Org
) -> None:
    placed(client, acme.key, acme.id, credits="8", ttl_seconds=60)
    with clock.frozen_at(T0 + timedelta(minutes=5)):
        body = client.post("/v1/usage", json=event("e1", acme.id), headers=acme.key).json()
        assert body["balance"] == {"available": "9.995", "arrears": "0", "paused": False}
        assert authorize(client, acme.key, acme.id)["available"] == "9.995"
    assert_clean(db)


# --- project budgets ---------------------------------------------------------------------------


def test_holds_respect_the_projects_budget(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    client.put(
        f"/v1/organizations/{acme.id}/projects/{acme.project}/budget",
        json={"monthly_credits": "5"},
        headers=operator,
    )
    assert_problem(place(client, acme.key, acme.id, project="Research", credits="5.000001"), 402,
                   "project_budget_exceeded")  # fmt: skip
    first = placed(client, acme.key, acme.id, project="Research", credits="4")
    assert first["project_id"] == acme.project
    # what is held counts against the budget
    assert_problem(place(client, acme.key, acme.id, project=acme.project, credits="1.5"), 402,
                   "project_budget_exceeded")  # fmt: skip
    assert_problem(extend(client, acme.key, first["id"], credits="1.5"), 402,
                   "project_budget_exceeded")  # fmt: skip
    assert authorize(client, acme.key, acme.id, project="Research", credits="1.5")["reason"] == (
        "project_budget_exceeded"
    )
    # the rest of the organization keeps running
    assert placed(client, acme.key, acme.id, credits="5")["credits"] == "5"
    # settled usage counts instead of the hold
    settle(client, acme.key, first["id"], "run-1", quantities={"cpu_seconds": "50000"})  # 2
    assert placed(client, acme.key, acme.id, project="Research", credits="1")["credits"] == "1"
    assert_clean(db)


def test_an_expired_hold_stops_counting_against_the_budget_at_once(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    client.put(
        f"/v1/organizations/{acme.id}/projects/{acme.project}/budget",
        json={"monthly_credits": "5"},
        headers=operator,
    )
    placed(client, acme.key, acme.id, project="Research", credits="4", ttl_seconds=60)
    with clock.frozen_at(T0 + timedelta(minutes=2)):
        allowed = authorize(client, acme.key, acme.id, project="Research", credits="4")
        assert (allowed["allowed"], allowed["reason"]) == (True, "ok")


# --- environments ------------------------------------------------------------------------------


def test_a_test_keys_hold_reserves_test_credits_and_is_invisible_to_live_keys(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_key: Callable[..., Headers],
    acme: Org,
) -> None:
    sandbox = make_key(acme.id, "org:ingest", environment="test")
    grant(client, operator, acme.id, "3", environment="test")
    assert_problem(place(client, sandbox, acme.id, credits="4"), 402, "insufficient_credits")
    hold = placed(client, sandbox, acme.id, credits="2")
    assert summary(client, sandbox, acme.id) == ("1", "0", "2", False)
    assert summary(client, acme.key, acme.id) == ("10", "0", "0", False)
    assert_problem(client.get(f"/v1/holds/{hold['id']}", headers=acme.key), 404)
    assert_problem(client.delete(f"/v1/holds/{hold['id']}", headers=acme.key), 404)
    assert settle(client, sandbox, hold["id"], "run-1").json()["balance"]["available"] == "-3.76"
    assert summary(client, acme.key, acme.id) == ("10", "0", "0", False)
    assert_clean(db)


def test_a_read_only_key_cannot_hold(
    client: TestClient, db: Database, make_key: Callable[..., Headers], acme: Org
) -> None:
    hold = placed(client, acme.key, acme.id, credits="1")
    reader = make_key(acme.id, "org:read")
    before = state_of(db, acme.id)
    assert_problem(place(client, reader, acme.id, credits="1"), 403, "insufficient_scope")
    assert_problem(extend(client, reader, hold["id"], credits="1"), 403, "insufficient_scope")
    assert_problem(settle(client, reader, hold["id"], "run-1"), 403, "insufficient_scope")
    assert_problem(client.delete(f"/v1/holds/{hold['id']}", headers=reader), 403)
    assert state_of(db, acme.id) == before


def test_concurrent_holds_never_reserve_more_than_is_available(
    client: TestClient, db: Database, acme: Org
) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def hold_three() -> None:
        response = place(client, acme.key, acme.id, credits="3")
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=hold_three) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(statuses) == [201] * 3 + [402] * 5
    assert summary(client, acme.key, acme.id) == ("1", "0", "9", False)
    assert_clean(db)


def test_a_retried_hold_or_extension_with_an_idempotency_key_reserves_once(
    client: TestClient, db: Database, acme: Org
) -> None:
    body = {"organization": acme.id, "operation": "training", "credits": "3"}
    keyed = {**acme.key, "Idempotency-Key": "run-42/hold"}
    first = client.post("/v1/holds", json=body, headers=keyed)
    again = client.post("/v1/holds", json=body, headers=keyed)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert summary(client, acme.key, acme.id) == ("7", "0", "3", False)
    other = client.post("/v1/holds", json={**body, "credits": "4"}, headers=keyed)
    assert_problem(other, 409)

    hold_id = first.json()["id"]
    more = {**acme.key, "Idempotency-Key": "run-42/extend-1"}
    for _ in range(2):
        response = client.post(f"/v1/holds/{hold_id}/extend", json={"credits": "2"}, headers=more)
        assert (response.status_code, response.json()["credits"]) == (200, "5")
    assert summary(client, acme.key, acme.id) == ("5", "0", "5", False)
    assert_clean(db)


@pytest.mark.parametrize(
    ("meanwhile", "code"),
    [("release", "hold_released"), ("settle", "hold_already_settled")],
)
def test_a_hold_ended_while_its_settlement_waits_for_the_lock_is_not_released_twice(
    client: TestClient, db: Database, acme: Org, meanwhile: str, code: str
) -> None:
    """What POST /v1/holds/{id}/settle does (read the hold, then ingest under the organization's
    lock), with a release or another settlement of the same hold committing in between, as it can
    on PostgreSQL."""
    if db.dialect == "sqlite":
        pytest.skip("PostgreSQL-only race: SQLite takes its write lock at the first statement")
    placed(client, acme.key, acme.id, credits="4")  # another operation's hold
    hold = placed(client, acme.key, acme.id, credits="3")
    ctx = IngestContext("live", acme.id, T0, load_rate_card(), timedelta(days=35),
                        timedelta(minutes=5), "USD")  # fmt: skip
    settlement = EventInput(
        "run-1", acme.id, "training", dict(H100_HOUR), hold=hold["id"], occurred_at=T0
    )
    with db.write() as session:
        # the settlement has read the hold (and keeps it, as the route does) ...
        read = holds.get(session, hold["id"], acme.id, "live")
        # ... and waits for the lock while the hold is ended by another request
        if meanwhile == "release":
            ended = client.delete(f"/v1/holds/{hold['id']}", headers=acme.key)
        else:
            ended = settle(client, acme.key, hold["id"], "run-0", quantities={"cpu_seconds": "1"})
        assert ended.status_code in {200, 201}, ended.text
        [result] = ingest(session, ctx, [settlement], with_balance=True)
        assert read.status != "active"  # what the settlement sees once it has the lock

    assert result.status == "rejected"
    assert result.error is not None
    assert result.error.code == code
    # the other hold still reserves its 4 credits; the hold was given back once
    available = "6" if meanwhile == "release" else "4.99998"  # run-0 cost 1.00002
    assert summary(client, acme.key, acme.id) == (available, "0", "4", False)
    assert_clean(db)
