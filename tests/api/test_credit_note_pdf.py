"""Credit notes on paper, on SQLite and PostgreSQL: the corrected invoice's PDF lists the notes
issued against it and where their money went, the next invoice's PDF shows the deduction it
carries, and each note has its own PDF (seller, customer, the invoice it corrects, date, reason,
credits, amount, number), readable by the same keys as the invoice."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pypdf
from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.billing.models import Invoice
from creditmeter.kit import clock
from creditmeter.kit.credits import MICROS_PER_CREDIT
from creditmeter.kit.db import Database
from tests.api.test_credit_notes import close, subscribe, use
from tests.conftest import utc

C = MICROS_PER_CREDIT
Headers = dict[str, str]


def pdf_text(content: bytes) -> str:
    """The PDF's text, whitespace collapsed (pypdf ends each table cell's line with a newline)."""
    reader = pypdf.PdfReader(io.BytesIO(content))
    return " ".join(" ".join(page.extract_text() for page in reader.pages).split())


def get_pdf(client: TestClient, url: str, headers: Headers, filename: str) -> str:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert f'filename="{filename}.pdf"' in response.headers["content-disposition"]
    assert response.content.startswith(b"%PDF-")
    return pdf_text(response.content)


def invoice_ids(db: Database, org: str) -> list[str]:
    with db.read() as session:
        return list(
            session.scalars(
                select(Invoice.id)
                .where(Invoice.organization_id == org)
                .order_by(Invoice.period_start)
            )
        )


def reverse(client: TestClient, operator: Headers, org: str, event: str, reason: str) -> None:
    response = client.post(
        f"/v1/organizations/{org}/usage/{event}/reverse", json={"reason": reason}, headers=operator
    )
    assert response.status_code == 200, response.text


def test_credit_notes_appear_on_the_invoices_and_as_their_own_documents(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org = make_org("Acme AI Research GmbH", "cust-0042")
    subscribe(db, org, "enterprise", utc(2026, 1, 1), allocation_micros=1000 * C)
    use(db, org, "jan-small", 40, utc(2026, 1, 5))  # paid by the allocation
    use(db, org, "jan-big", 1250, utc(2026, 1, 20))  # 290 credits of overage: USD 11.60
    close(db, utc(2026, 2, 1))
    with clock.frozen_at(utc(2026, 2, 3)):
        reverse(client, operator, org, "jan-big", "runaway job")
    with clock.frozen_at(utc(2026, 2, 9)):
        reverse(client, operator, org, "jan-small", "test traffic")
    close(db, utc(2026, 3, 1))
    january, february = invoice_ids(db, org)
    notes = client.get(f"/v1/organizations/{org}/credit-notes", headers=operator).json()["data"]
    assert [(n["number"], n["credits"], n["amount"]["amount_minor"]) for n in notes] == [
        ("CN-2026-000001", "1250", 1160),
        ("CN-2026-000002", "40", 0),
    ]
    assert notes[0]["pdf_url"] == f"/v1/credit-notes/{notes[0]['id']}/pdf"
    reader = make_key(org, "org:read")

    text = get_pdf(client, f"/v1/invoices/{january}/pdf", reader, "INV-2026-000001")
    for expected in [
        "Credit notes",
        "Issued against this invoice",
        "CN-2026-000001 3 February 2026 runaway job 1,250 USD 11.60",
        "CN-2026-000002 9 February 2026 test traffic 40 USD 0.00",
        "This invoice is unchanged",
        "CN-2026-000001: deducted USD 11.60 on INV-2026-000002 (1 March 2026).",
    ]:
        assert expected in text, (expected, text)
    assert "Deducted on this invoice" not in text

    text = get_pdf(client, f"/v1/invoices/{february}/pdf", reader, "INV-2026-000002")
    for expected in [
        "Credit note CN-2026-000001: runaway job",
        "-USD 11.60",
        "Deducted on this invoice",
        "CN-2026-000001 3 February 2026 INV-2026-000001 runaway job -USD 11.60",
        "Total USD 1,488.40",
    ]:
        assert expected in text, (expected, text)
    assert "Issued against this invoice" not in text

    text = get_pdf(client, notes[0]["pdf_url"], reader, "CN-2026-000001")
    for expected in [
        "Credit note",
        "CN-2026-000001",
        "Corrects invoice INV-2026-000001",
        "Example AI Platform, Inc.",
        "CREDIT TO",
        "Acme AI Research GmbH",
        "cust-0042",
        "Date of issue 3 February 2026",
        "Corrects invoice INV-2026-000001, issued 1 February 2026",
        "Billing period 1 January 2026 to 31 January 2026",
        "Reason runaway job",
        "Reversal of usage: usage event jan-big",
        "Usage corrected (usage event jan-big) 1,250",
        "of which returned to the credit balance 960",
        "of which billed as overage on INV-2026-000001 290 USD 11.60",
        "Credits returned 960",
        "The 290 credits billed as overage come back as money: USD 11.60",
        "Total credit USD 11.60",
        "INV-2026-000002 1 March 2026 USD 11.60",
    ]:
        assert expected in text, (expected, text)
    metadata = pypdf.PdfReader(io.BytesIO(client.get(notes[0]["pdf_url"], headers=reader).content))
    assert metadata.metadata is not None
    assert metadata.metadata.title == "Credit note CN-2026-000001"

    text = get_pdf(client, notes[1]["pdf_url"], operator, "CN-2026-000002")
    assert "Reason test traffic" in text
    assert "Credits returned to the credit balance (usage event jan-small) 40" in text
    assert "The credits were prepaid: 40 credits were returned" in text
    assert "Total credit USD 0.00" in text


def test_a_note_still_to_deduct_says_so(
    client: TestClient, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    org = make_org("Overage Co")
    subscribe(db, org, "enterprise", utc(2026, 1, 1), allocation_micros=1000 * C)
    use(db, org, "jan-big", 1250, utc(2026, 1, 20))
    close(db, utc(2026, 2, 1))
    with clock.frozen_at(utc(2026, 2, 3)):
        reverse(client, operator, org, "jan-big", "runaway job")
    [january] = invoice_ids(db, org)
    [note] = client.get(f"/v1/organizations/{org}/credit-notes", headers=operator).json()["data"]
    text = get_pdf(client, f"/v1/invoices/{january}/pdf", operator, "INV-2026-000001")
    assert "CN-2026-000001: USD 10.00 to be deducted from the next invoice." in text
    text = get_pdf(client, note["pdf_url"], operator, "CN-2026-000001")
    assert "Still to deduct from the next invoice USD 10.00" in text


def test_only_the_notes_owner_reads_its_pdf(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org, other = make_org("Pro Co"), make_org("Other Co")
    subscribe(db, org, "professional", utc(2026, 1, 1))
    use(db, org, "jan-run", 300, utc(2026, 1, 20))
    close(db, utc(2026, 2, 1))
    with clock.frozen_at(utc(2026, 2, 10)):
        reverse(client, operator, org, "jan-run", "duplicate run")
    [note] = client.get(f"/v1/organizations/{org}/credit-notes", headers=operator).json()["data"]
    url = note["pdf_url"]
    answers: dict[str, Any] = {
        "own admin": client.get(url, headers=make_key(org, "org:admin")).status_code,
        "own read": client.get(url, headers=make_key(org, "org:read")).status_code,
        "own ingest": client.get(url, headers=make_key(org, "org:ingest")).status_code,
        "own test key": client.get(
            url, headers=make_key(org, "org:admin", environment="test")
        ).status_code,
        "other admin": client.get(url, headers=make_key(other, "org:admin")).status_code,
        "no key": client.get(url).status_code,
    }
    assert answers == {
        "own admin": 200,
        "own read": 200,
        "own ingest": 403,
        "own test key": 404,
        "other admin": 404,
        "no key": 401,
    }
    hidden = client.get(url, headers=make_key(other, "org:admin")).json()
    missing = client.get("/v1/credit-notes/cn_nope/pdf", headers=operator).json()
    assert hidden["code"] == missing["code"] == "credit_note_not_found"
    too_long = client.get(f"/v1/credit-notes/{'x' * 300}/pdf", headers=operator)
    assert (too_long.status_code, too_long.json()["code"]) == (404, "credit_note_not_found")
