"""Paths name an organization by its id or its external id, and a project by its id or its name, as
bodies and the CLI do; another organization's external id is as unknown to an organization key as an
organization that does not exist. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.orgs import service as orgs
from tests.api.test_bad_input import assert_problem
from tests.metering import TOKENS, Headers, event, grant


def project(db: Database, org: str, name: str) -> str:
    with db.write() as session:
        return orgs.create_project(session, org, name, clock.now()).id


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def test_an_external_id_reaches_the_same_organization_as_its_id(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    acme = make_org("Acme AI", "acme")
    grant(client, operator, "acme", "100")  # a write through the external id
    by_id = ok(client.get(f"/v1/organizations/{acme}/balance", headers=operator))
    by_ref = ok(client.get("/v1/organizations/acme/balance", headers=operator))
    assert by_ref == by_id
    assert by_ref["organization_id"] == acme
    assert by_ref["available"] == "100"
    assert ok(client.get("/v1/organizations/acme", headers=operator))["id"] == acme
    for tail in ("ledger", "grants", "projects", "members", "api-keys", "invoices"):
        same = client.get(f"/v1/organizations/acme/{tail}", headers=operator)
        assert same.status_code == 200, (tail, same.text)
        assert same.json() == ok(client.get(f"/v1/organizations/{acme}/{tail}", headers=operator))


def test_odd_external_ids_are_found_and_unknown_ones_are_a_plain_404(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    spaced = make_org("Spaced", "acme corp")
    accented = make_org("Accented", "zürich-ä")
    slashed = make_org("Slashed", "eu/acme")
    assert ok(client.get("/v1/organizations/acme%20corp", headers=operator))["id"] == spaced
    assert (
        ok(client.get("/v1/organizations/z%C3%BCrich-%C3%A4", headers=operator))["id"] == accented
    )
    # A "/" in an external id cannot be told from the path's own: the id reaches that one.
    assert client.get("/v1/organizations/eu/acme/balance", headers=operator).status_code == 404
    assert ok(client.get(f"/v1/organizations/{slashed}", headers=operator))["id"] == slashed

    nobody = client.get("/v1/organizations/nobody/balance", headers=operator)
    assert_problem(nobody, 404, "not_found")
    assert "nobody" in nobody.json()["detail"]
    assert_problem(client.get(f"/v1/organizations/{'x' * 5000}/balance", headers=operator), 404)
    assert_problem(client.get("/v1/organizations/a%00b/balance", headers=operator), 404)


def test_an_id_shaped_reference_is_taken_as_an_id(
    client: TestClient, operator: Headers, make_org: Callable[..., str]
) -> None:
    """An external id shaped like an organization id never shadows the organization with that id."""
    first = make_org("First")
    make_org("Impostor", first)
    assert ok(client.get(f"/v1/organizations/{first}", headers=operator))["name"] == "First"


def test_an_organization_key_cannot_reach_another_organization_by_its_external_id(
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    acme = make_org("Acme AI", "acme")
    globex = make_org("Globex", "globex")
    project(db_of(client), globex, "research")
    acme_admin = make_key(acme, "org:admin")
    assert ok(client.get("/v1/organizations/acme/balance", headers=acme_admin))["available"] == "0"

    for path, method, body in (
        ("balance", "GET", None),
        ("ledger", "GET", None),
        ("grants", "POST", {"credits": "5", "source": "promo", "reason": "x"}),
        ("projects/research/budget", "GET", None),
        ("projects/research/budget", "PUT", {"monthly_credits": "1"}),
    ):
        hidden = client.request(
            method, f"/v1/organizations/globex/{path}", headers=acme_admin, json=body
        )
        missing = client.request(
            method, f"/v1/organizations/nobody/{path}", headers=acme_admin, json=body
        )
        assert hidden.status_code == missing.status_code == 404, (path, hidden.text)
        assert hidden.headers["content-type"] == missing.headers["content-type"]
        assert hidden.json() == {
            **missing.json(),
            "detail": missing.json()["detail"].replace("nobody", "globex"),
        }
        assert globex not in hidden.text  # the id behind the external id never shows
    assert ok(client.get("/v1/organizations/globex/balance", headers=operator))["available"] == "0"


def test_a_project_budget_by_name_read_and_set(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    acme = make_org("Acme AI", "acme")
    research = project(db, acme, "research")
    grant(client, operator, acme, "100")
    admin, reader, engine = (make_key(acme, s) for s in ("org:admin", "org:read", "org:ingest"))

    none_yet = ok(client.get("/v1/organizations/acme/projects/research/budget", headers=reader))
    assert none_yet["project_id"] == research
    assert (none_yet["monthly_credits"], none_yet["used_this_month"]) == (None, "0")

    path = "/v1/organizations/acme/projects/research/budget"
    set_ = ok(client.put(path, json={"monthly_credits": "500"}, headers=admin))
    assert (set_["project_id"], set_["monthly_credits"]) == (research, "500")
    used = event("e-1", "acme", project="research", quantities=dict(TOKENS))
    ok(client.post("/v1/usage", json=used, headers=engine), 201)

    by_name = ok(client.get(path, headers=reader))
    by_ids = ok(client.get(f"/v1/organizations/{acme}/projects/{research}/budget", headers=admin))
    mixed = ok(client.get(f"/v1/organizations/{acme}/projects/research/budget", headers=operator))
    assert by_name == by_ids == mixed
    assert (by_name["monthly_credits"], by_name["used_this_month"]) == ("500", "0.005")
    assert by_name["month"] == clock.now().strftime("%Y-%m")

    assert_problem(client.get(path, headers=engine), 403, "insufficient_scope")
    unknown = client.get("/v1/organizations/acme/projects/nope/budget", headers=admin)
    assert_problem(unknown, 404, "not_found")
    assert "nope" in unknown.json()["detail"]
    removed = ok(client.put(path, json={"monthly_credits": None}, headers=admin))
    assert removed["monthly_credits"] is None
    assert ok(client.get(path, headers=admin))["monthly_credits"] is None


def test_a_project_of_another_organization_is_not_found_by_name(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    make_org("Acme AI", "acme")
    globex = make_org("Globex", "globex")
    project(db, globex, "research")
    response = client.get("/v1/organizations/acme/projects/research/budget", headers=operator)
    assert_problem(response, 404, "not_found")


def db_of(client: TestClient) -> Database:
    database: Database = client.app.state.db  # type: ignore[attr-defined]
    return database


def test_a_budget_on_a_test_clock_reads_the_clock_month(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    """Usage of an organization on a test clock counts in the clock's month: so does its budget."""
    org = make_org("Rehearsal", "rehearsal")
    project(db, org, "assistant")
    made = client.post(
        "/v1/test-clocks", json={"frozen_time": "2026-01-15T12:00:00Z"}, headers=operator
    )
    clock_id = ok(made, 201)["id"]
    attach = {"test_clock": clock_id}
    ok(client.post("/v1/organizations/rehearsal/test-clock", json=attach, headers=operator))
    grant(client, operator, org, "10", environment="test")
    admin = make_key(org, "org:admin", environment="test")
    engine = make_key(org, "org:ingest", environment="test")
    path = "/v1/organizations/rehearsal/projects/assistant/budget"
    assert ok(client.put(path, json={"monthly_credits": "5"}, headers=admin))["month"] == "2026-01"
    used = event("r-1", "rehearsal", project="assistant", quantities=dict(TOKENS))
    ok(client.post("/v1/usage", json=used, headers=engine), 201)
    read = ok(client.get(path, headers=admin))
    assert (read["month"], read["monthly_credits"], read["used_this_month"]) == (
        "2026-01",
        "5",
        "0.005",
    )
