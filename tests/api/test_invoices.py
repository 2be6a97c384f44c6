"""Invoices over HTTP: the list (cursor pagination), one invoice with its lines and usage summary,
and its PDF read back; who may read which invoice; bad input is a 4xx that changes nothing."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pypdf
import pytest
from fastapi.testclient import TestClient

from creditmeter.billing import cycle
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.plans import load_catalog
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id
from creditmeter.orgs import service as orgs
from tests.conftest import utc
from tests.metering import assert_clean, assert_problem, event, state_of

Headers = dict[str, str]
CATALOG = load_catalog()


def subscribe(db: Database, org: str, plan: str, moment: datetime, env: str = "live") -> None:
    with db.write() as session:
        subs.subscribe(session, CATALOG, org, env, subs.SubscriptionRequest(plan), moment)


@pytest.fixture
def billed(
    client: TestClient,
    db: Database,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> dict[str, Any]:
    """Acme AI: Standard from January 16, Professional from January 20, usage in two projects and
    without one, January closed on February 1."""
    org = make_org("Acme AI Research GmbH", "cust-0042")
    with db.write() as session:
        orgs.create_project(session, org, "Research", utc(2026, 1, 1))
        orgs.create_project(session, org, "Chatbot", utc(2026, 1, 1))
    subscribe(db, org, "standard", utc(2026, 1, 16))
    subscribe(db, org, "professional", utc(2026, 1, 20))
    ingest = make_key(org, "org:ingest")
    with clock.frozen_at(utc(2026, 1, 25, 12)):
        for i, (project, operation) in enumerate(
            [("Research", "training"), ("Research", "inference"), ("Chatbot", "inference"),
             (None, "inference")]
        ):  # fmt: skip
            body = event(f"ev-{i}", org, operation)
            if project:
                body["project"] = project
            response = client.post("/v1/usage", json=body, headers=ingest)
            assert response.status_code == 201, response.text
    [result] = cycle.run_due(db, utc(2026, 2, 1), org, catalog=CATALOG)
    assert result.ok
    return {"org": org, "invoice_number": result.invoice_number}


def only_invoice(client: TestClient, headers: Headers, org: str) -> dict[str, Any]:
    response = client.get(f"/v1/organizations/{org}/invoices", headers=headers)
    assert response.status_code == 200, response.text
    [invoice] = response.json()["data"]
    return invoice  # type: ignore[no-any-return]


def test_an_invoice_shows_its_lines_totals_and_usage_summary(
    client: TestClient, db: Database, make_key: Callable[..., Headers], billed: dict[str, Any]
) -> None:
    org = billed["org"]
    reader = make_key(org, "org:read")
    listed = only_invoice(client, reader, org)
    assert listed["number"] == "INV-2026-000001"
    assert listed["period"] == {
        "label": "2026-01",
        "start": "2026-01-01T00:00:00Z",
        "end": "2026-02-01T00:00:00Z",
    }
    assert listed["total"] == {"amount_minor": 2529 + 5806, "currency": "USD"}
    assert listed["amount_due"] == listed["total"]
    assert (listed["status"], listed["issued_at"], listed["due_at"]) == (
        "open",
        "2026-02-01T00:00:00Z",
        "2026-02-15T00:00:00Z",
    )
    assert "lines" not in listed

    body = client.get(f"/v1/invoices/{listed['id']}", headers=reader).json()
    assert [(line["kind"], line["amount"]["amount_minor"]) for line in body["lines"]] == [
        ("proration", 2529),
        ("proration", 5806),
    ]
    assert sum(line["amount"]["amount_minor"] for line in body["lines"]) == 8335
    assert body["lines"][0]["credits"] == "516.129032"
    assert body["seller"]["name"] == "Example AI Platform, Inc."
    assert body["customer"] == {
        "id": org,
        "name": "Acme AI Research GmbH",
        "external_id": "cust-0042",
    }
    usage = body["usage_summary"]
    assert [(u["operation"], u["events"], u["credits"]) for u in usage["by_operation"]] == [
        ("inference", 3, "0.015"),
        ("training", 1, "6.76"),
    ]
    assert usage["by_operation"][0]["quantities"] == {
        "input_tokens": "3000",
        "output_tokens": "1500",
    }
    by_project = {u["project_name"]: (u["events"], u["credits"]) for u in usage["by_project"]}
    assert by_project == {
        "Research": (2, "6.765"),
        "Chatbot": (1, "0.005"),
        "(no project)": (1, "0.005"),
    }
    assert_clean(db)


def test_the_pdf_is_a_real_invoice(
    client: TestClient, make_key: Callable[..., Headers], billed: dict[str, Any]
) -> None:
    org = billed["org"]
    reader = make_key(org, "org:read")
    invoice = only_invoice(client, reader, org)
    response = client.get(invoice["pdf_url"], headers=reader)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert 'filename="INV-2026-000001.pdf"' in response.headers["content-disposition"]
    assert response.content.startswith(b"%PDF-")
    reader_pdf = pypdf.PdfReader(io.BytesIO(response.content))
    assert reader_pdf.metadata is not None
    assert reader_pdf.metadata.title == "Invoice INV-2026-000001"
    text = " ".join(page.extract_text() for page in reader_pdf.pages)
    for expected in [
        "INV-2026-000001",
        "Example AI Platform, Inc.",
        "Acme AI Research GmbH",
        "cust-0042",
        "1 January 2026 to 31 January 2026",
        "Issue date 1 February 2026",
        "Due date 15 February 2026",
        "USD 25.29",
        "USD 58.06",
        "Total USD 83.35",
        "OPEN",
        "Usage summary",
        "Research",
        "training",
    ]:
        assert expected in text, expected


def test_the_pdf_without_unicode_fonts_replaces_what_latin_1_lacks(
    db: Database, make_org: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from creditmeter.billing import invoices, pdf

    org = make_org("東京 AI Café")
    subscribe(db, org, "standard", utc(2026, 1, 1))
    cycle.run_due(db, utc(2026, 2, 1), org, catalog=CATALOG)
    monkeypatch.setattr(pdf, "_dejavu", lambda: None)
    with db.read() as session:
        [inv] = invoices.list_for(session, org, "live", None, 10)[0]
        content = pdf.render(invoices.view(session, inv), CATALOG.zone)
    text = pypdf.PdfReader(io.BytesIO(content)).pages[0].extract_text()
    assert "?? AI Café" in text
    assert "USD 49.00" in text


def test_invoices_are_listed_with_cursor_pagination(
    client: TestClient, db: Database, make_org: Callable[..., str], operator: Headers
) -> None:
    org = make_org()
    subscribe(db, org, "standard", utc(2026, 1, 1))
    cycle.run_due(db, utc(2026, 4, 1), org, catalog=CATALOG)
    url = f"/v1/organizations/{org}/invoices"
    first = client.get(url, params={"limit": 2}, headers=operator).json()
    assert [i["period"]["label"] for i in first["data"]] == ["2026-01", "2026-02"]
    assert first["has_more"] is True
    second = client.get(
        url, params={"limit": 2, "cursor": first["next_cursor"]}, headers=operator
    ).json()
    assert [i["number"] for i in second["data"]] == ["INV-2026-000003"]
    assert (second["has_more"], second["next_cursor"]) == (False, None)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"cursor": "not a cursor"}, "invalid_cursor"),
        ({"cursor": "b3JnX3h4eA"}, "invalid_cursor"),  # a cursor of another listing
        ({"limit": 0}, None),
        ({"limit": 501}, None),
        ({"environment": "staging"}, None),
    ],
)
def test_bad_list_parameters_are_422_and_change_nothing(
    client: TestClient,
    db: Database,
    operator: Headers,
    billed: dict[str, Any],
    params: dict[str, Any],
    code: str | None,
) -> None:
    org = billed["org"]
    before = state_of(db, org)
    response = client.get(f"/v1/organizations/{org}/invoices", params=params, headers=operator)
    assert_problem(response, 422, code)
    assert state_of(db, org) == before


def test_who_may_read_an_invoice(
    client: TestClient,
    db: Database,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
    operator: Headers,
    billed: dict[str, Any],
) -> None:
    org = billed["org"]
    invoice_id = only_invoice(client, operator, org)["id"]
    other = make_org("Globex")
    admin, read, ingest = (
        make_key(org, scope) for scope in ("org:admin", "org:read", "org:ingest")
    )
    strangers = (make_key(other, "org:admin"), make_key(org, "org:admin", environment="test"))
    other_reader = make_key(other, "org:read")
    before = state_of(db, org)
    for path in (f"/v1/invoices/{invoice_id}", f"/v1/invoices/{invoice_id}/pdf"):
        assert client.get(path, headers=operator).status_code == 200
        assert client.get(path, headers=admin).status_code == 200
        assert client.get(path, headers=read).status_code == 200
        assert_problem(client.get(path, headers=ingest), 403, "insufficient_scope")
        # Another organization's key, and this organization's test key: the same 404 as for an
        # invoice that does not exist.
        for stranger in strangers:
            hidden = assert_problem(client.get(path, headers=stranger), 404, "invoice_not_found")
            missing_path = path.replace(invoice_id, new_id("inv"))
            missing = assert_problem(client.get(missing_path, headers=stranger), 404)
            assert hidden["title"] == missing["title"]
            assert hidden["detail"].replace(invoice_id, "X") == missing["detail"].replace(
                missing_path.split("/")[3], "X"
            )
        assert_problem(client.get(path), 401)
    assert_problem(
        client.get(f"/v1/organizations/{org}/invoices", headers=other_reader),
        404,
        "not_found",
    )
    assert_problem(client.get("/v1/invoices/" + "x" * 300, headers=operator), 404)
    assert state_of(db, org) == before


def test_a_test_environment_key_lists_its_test_invoices(
    client: TestClient,
    db: Database,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org()
    subscribe(db, org, "standard", utc(2026, 1, 1), env="test")
    subscribe(db, org, "professional", utc(2026, 1, 1))
    cycle.run_due(db, utc(2026, 2, 1), org, catalog=CATALOG)
    test_invoice = only_invoice(client, make_key(org, "org:read", environment="test"), org)
    live_invoice = only_invoice(client, make_key(org, "org:read"), org)
    assert (test_invoice["number"], test_invoice["total"]["amount_minor"]) == (
        "INV-TEST-2026-000001",
        4900,
    )
    assert (live_invoice["number"], live_invoice["total"]["amount_minor"]) == (
        "INV-2026-000001",
        19900,
    )
