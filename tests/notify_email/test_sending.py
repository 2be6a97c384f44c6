"""Sending over a real SMTP server (aiosmtpd on loopback): a multipart message with text and HTML
to the right recipients, the invoice's PDF attached, the unsubscribe headers; without an SMTP
server messages are held and sent once one is configured; a server that is down fails the job,
which the outbox retries with backoff until its last attempt marks the message failed."""

from __future__ import annotations

import io
import ssl
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pypdf
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.billing import cycle, invoices, pdf
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.models import Invoice
from creditmeter.billing.plans import load_catalog
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.notify import email, smtp
from creditmeter.notify.email import send_email_job
from creditmeter.notify.models import NotificationPreference
from tests.conftest import utc
from tests.notify_email.conftest import (
    ADMIN,
    OWNER,
    PAUSED,
    PUBLIC_URL,
    SmtpServer,
    _start,
    emails_of,
    free_port,
    publish,
    run_emails,
    smtp_settings,
)

CATALOG = load_catalog()


def invoice_pdf(session: Session, invoice_id: str) -> tuple[str, bytes]:
    """Billing's invoice PDF as an attachment: what the worker registers as ``invoice_pdf``."""
    view = invoices.get(session, invoice_id)
    return f"{view.invoice.number}.pdf", pdf.render(view, CATALOG.zone, pdf.notes_of(session, view))


def test_a_paused_organization_s_owners_and_admins_get_a_multipart_message(
    db: Database, acme: dict[str, str], smtp_server: SmtpServer
) -> None:
    event_id = publish(db, "organization.paused", acme["org"], PAUSED)
    outcomes = run_emails(db, smtp_settings(db, smtp_server))
    assert [o.result for o in outcomes] == ["sent", "sent"]
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [ADMIN, OWNER]
    assert all(len(r.rcpt_tos) == 1 for r in smtp_server.received)
    [message] = smtp_server.collector.to(OWNER)
    assert message["Subject"] == "Acme AI: operations paused: no credits left"
    assert message["From"] == "Acme Credits <billing@credits.example.com>"
    assert message["To"] == OWNER
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "-0.25" in text.get_content()
    assert "-0.25" in html.get_content()
    with db.read() as session:
        token = session.scalar(
            select(NotificationPreference.unsubscribe_token).where(
                NotificationPreference.member_id == acme[OWNER]
            )
        )
    link = f"{PUBLIC_URL}/v1/unsubscribe/{token}"
    assert message["List-Unsubscribe"] == f"<{link}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert link in text.get_content()
    rows = emails_of(db, event_id)
    assert {(r.status, r.attempts, r.last_error) for r in rows} == {("sent", 1, None)}
    assert {r.sent_at for r in rows} == {clock.now()}
    assert {m["Message-ID"] for m in smtp_server.collector.to(OWNER)} == {
        f"<{r.id}@credits.example.com>" for r in rows if r.to_address == OWNER
    }


def test_a_message_runs_once_even_if_its_job_runs_again(
    db: Database, acme: dict[str, str], smtp_server: SmtpServer
) -> None:
    publish(db, "organization.paused", acme["org"], PAUSED)
    settings = smtp_settings(db, smtp_server)
    run_emails(db, settings)
    row = emails_of(db)[0]
    again = outbox.Claimed(0, email.EMAIL_SEND, None, None, {"email_id": row.id}, 1, 8, "t")
    assert send_email_job(db, settings, again) == "already sent"
    assert len(smtp_server.received) == 2


def test_an_issued_invoice_is_sent_with_its_pdf_attached(
    db: Database, acme: dict[str, str], smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(email.ATTACHMENTS, "invoice_pdf", invoice_pdf)
    org = acme["org"]
    with db.write() as session:
        subs.subscribe(
            session, CATALOG, org, "live", subs.SubscriptionRequest("standard"), utc(2026, 1, 16)
        )
    [result] = cycle.run_due(db, utc(2026, 2, 1), org, catalog=CATALOG)
    assert result.ok
    with db.read() as session:
        invoice = session.scalars(select(Invoice).where(Invoice.organization_id == org)).one()
    # Billing publishes invoice.issued when it issues the invoice (same cause: this publish then
    # adds nothing); the test does not depend on it.
    if not _issued(db):
        _publish_issued(db, org, invoice)
    [row, _] = _issued(db)
    assert row.attachments == [{"kind": "invoice_pdf", "id": invoice.id}]
    assert row.subject.startswith(f"Acme AI: invoice {invoice.number} (")
    run_emails(db, smtp_settings(db, smtp_server))
    [message] = [m for m in smtp_server.collector.to(OWNER) if "invoice" in m["Subject"]]
    assert message.get_content_type() == "multipart/mixed"
    assert message.get_body(("plain",)) is not None
    assert message.get_body(("html",)) is not None
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == f"{invoice.number}.pdf"
    content = attachment.get_content()
    assert content.startswith(b"%PDF")
    assert invoice.number in pypdf.PdfReader(io.BytesIO(content)).pages[0].extract_text()


def _publish_issued(db: Database, org: str, invoice: Invoice) -> None:
    publish(
        db,
        "invoice.issued",
        org,
        {
            "invoice_id": invoice.id,
            "number": invoice.number,
            "status": invoice.status,
            "total": "12.34",
            "amount_due": "12.34",
            "currency": invoice.currency,
            "period_start": invoice.period_start,
            "period_end": invoice.period_end,
            "pdf_url": f"/v1/invoices/{invoice.id}/pdf",
        },
        source_key=f"invoice.issued:{invoice.id}",
    )


def _issued(db: Database) -> list[Any]:
    return [r for r in emails_of(db) if r.subject.startswith("Acme AI: invoice ")]


def test_a_registered_attachment_kind_is_rendered_when_sent_and_a_missing_one_fails(
    db: Database,
    acme: dict[str, str],
    smtp_server: SmtpServer,
    fake_attachment: Callable[[str, bytes], None],
) -> None:
    with db.write() as session:
        email.queue_direct(
            session,
            organization_id=acme["org"],
            environment="live",
            to=["ops@partner.test"],
            subject="Report",
            text="attached",
            html="<p>attached</p>",
            dedupe_key="report:1",
            now=clock.now(),
            attachments=[{"kind": "report_csv", "id": "rep_1"}],
        )
    settings = smtp_settings(db, smtp_server)
    [outcome] = run_emails(db, settings)
    assert (
        outcome.error == "LookupError: no renderer registered for attachments of kind 'report_csv'"
    )
    [row] = emails_of(db)
    assert (row.status, row.attempts) == ("queued", 1)
    assert smtp_server.received == []
    fake_attachment("report_csv", b"a,b\n1,2\n")
    with clock.frozen_at(clock.now() + timedelta(minutes=1)):
        [outcome] = run_emails(db, settings)
    assert outcome.result == "sent"
    [message] = smtp_server.collector.to("ops@partner.test")
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "rep_1.bin"
    assert attachment.get_content() == b"a,b\n1,2\n"
    assert "List-Unsubscribe" not in message  # not a member: no token


def test_without_smtp_messages_are_held_then_sent_once_a_server_is_configured(
    db: Database, acme: dict[str, str], smtp_server: SmtpServer
) -> None:
    publish(db, "organization.paused", acme["org"], PAUSED)
    outcomes = run_emails(db, smtp_settings(db, None))
    assert [o.result for o in outcomes] == ["held", "held"]
    assert [o.state for o in outcomes] == ["done", "done"]  # not an error
    assert {(r.status, r.attempts) for r in emails_of(db)} == {("held", 0)}
    with db.write() as session:
        assert email.release_held(session, clock.now()) == 2
        assert email.release_held(session, clock.now()) == 0
    assert {r.status for r in emails_of(db)} == {"queued"}
    outcomes = run_emails(db, smtp_settings(db, smtp_server))
    assert [o.result for o in outcomes] == ["sent", "sent"]
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [ADMIN, OWNER]
    assert {r.status for r in emails_of(db)} == {"sent"}


def test_smtp_down_fails_the_job_which_is_retried_then_the_message_is_failed(
    db: Database, acme: dict[str, str]
) -> None:
    """Nothing listens on the port: each attempt raises, the outbox retries with backoff, and after
    the eighth the job is dead and the message ``failed``. A server that comes back later sends
    nothing more by itself (an operator retries the dead job)."""
    publish(db, "organization.paused", acme["org"], PAUSED)
    down = smtp_settings(db, None, smtp_host="127.0.0.1", smtp_port=free_port())
    moment = clock.now()
    for attempt in range(1, 9):
        with clock.frozen_at(moment):
            outcomes = run_emails(db, down)
        assert [o.state for o in outcomes] == ["pending" if attempt < 8 else "dead"] * 2
        assert all("ConnectionRefusedError" in (o.error or "") for o in outcomes)
        rows = emails_of(db)
        assert {(r.status, r.attempts) for r in rows} == {
            ("queued" if attempt < 8 else "failed", attempt)
        }
        assert all("ConnectionRefusedError" in (r.last_error or "") for r in rows)
        with clock.frozen_at(moment):
            assert run_emails(db, down) == []  # not due again before its backoff
        moment += outbox.backoff(attempt) + timedelta(seconds=1)


def test_login_when_a_username_is_set(db: Database, acme: dict[str, str]) -> None:
    controller, server = _start()
    try:
        publish(db, "organization.paused", acme["org"], PAUSED)
        wrong = smtp_settings(db, server, smtp_username="mailer", smtp_password="nope")
        outcomes = run_emails(db, wrong)
        assert all("SMTPAuthenticationError" in (o.error or "") for o in outcomes)
        right = smtp_settings(db, server, smtp_username="mailer", smtp_password="s3cret")
        with clock.frozen_at(clock.now() + timedelta(minutes=1)):
            assert [o.result for o in run_emails(db, right)] == ["sent", "sent"]
        assert server.logins[-1] == ("mailer", "s3cret")
    finally:
        controller.stop()


def test_starttls_is_required_when_configured_never_sent_in_clear(
    db: Database, acme: dict[str, str], smtp_server: SmtpServer
) -> None:
    publish(db, "organization.paused", acme["org"], PAUSED)
    outcomes = run_emails(db, smtp_settings(db, smtp_server, smtp_tls="starttls"))
    assert all("SMTPNotSupportedError" in (o.error or "") for o in outcomes)
    assert smtp_server.received == []


def test_an_unknown_tls_mode_fails_every_send_with_a_clear_error(
    db: Database, acme: dict[str, str], smtp_server: SmtpServer
) -> None:
    publish(db, "organization.paused", acme["org"], PAUSED)
    outcomes = run_emails(db, smtp_settings(db, smtp_server, smtp_tls="tls"))
    assert all("CREDITMETER_SMTP_TLS is 'tls'" in (o.error or "") for o in outcomes)
    assert smtp_server.received == []


def test_deliver_speaks_smtp_directly(smtp_server: SmtpServer, db: Database) -> None:
    settings = smtp_settings(db, smtp_server)
    message = smtp.build_message(
        settings, smtp.Outgoing("em_1", "a@b.test", "Hi", "text", "<p>html</p>", [], None)
    )
    smtp.deliver(settings, message)
    [received] = smtp_server.received
    assert received.rcpt_tos == ["a@b.test"]
    assert received.message["Message-ID"] == "<em_1@credits.example.com>"
    with pytest.raises(ssl.SSLError):  # implicit TLS to a plain server: no handshake
        smtp.deliver(smtp_settings(db, smtp_server, smtp_tls="ssl"), message)
    assert len(smtp_server.received) == 1
