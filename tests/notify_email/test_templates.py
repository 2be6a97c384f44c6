"""Every e-mailed type of the catalog has a subject and both bodies, each saying what happened with
the event's own values (amounts as the data gives them) and what to do; HTML is escaped; a broken
template falls back to the generic message instead of failing the change; the server says at start
where e-mail goes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from creditmeter.config import Settings
from creditmeter.notify import catalog, email_render, preferences
from creditmeter.notify.models import NotificationEvent

AT = datetime(2026, 3, 10, 12, tzinfo=UTC)
ALERT = {"id": "alr_1", "type": "credits_expiring_within", "name": "", "threshold": "7"}

#: A sample of each e-mailed type, and what its subject and text must say.
SAMPLES: dict[str, tuple[dict[str, Any], str, list[str]]] = {
    "alert.triggered": (
        {"alert": ALERT | {"project_id": None}, "value": "3", "available_credits": None, "at": AT},
        "Alert: credits_expiring_within (3 days; threshold 7 days)",
        ["Value now:    3 days", "Use the credits before they expire"],
    ),
    "alert.resolved": (
        {"alert": ALERT | {"project_id": None}, "value": "9", "available_credits": "1.5", "at": AT},
        "Resolved: credits_expiring_within (9 days)",
        ["Available credits: 1.5", "Nothing to do"],
    ),
    "organization.paused": (
        {"available_credits": "0", "at": AT, "reason": "insufficient_credits"},
        "operations paused: no credits left",
        ["Available credits: 0", "Buy credits"],
    ),
    "payment.failed": (
        {
            "payment_id": "pay_1",
            "invoice_id": "inv_1",
            "amount": "49.90",
            "currency": "EUR",
            "failure_code": "card_declined",
            "failure_message": "Your card was declined.",
            "attempt": 2,
            "next_attempt_at": AT,
        },
        "a payment of 49.90 EUR failed",
        ["Your card was declined.", "Next attempt: 2026-03-10 12:00 UTC", "/v1/invoices/inv_1/pay"],
    ),
    "invoice.issued": (
        {
            "invoice_id": "inv_1",
            "number": "INV-2026-000007",
            "status": "open",
            "total": "1200.00",
            "amount_due": "1200.00",
            "currency": "USD",
            "period_start": AT,
            "period_end": AT,
            "pdf_url": "/v1/invoices/inv_1/pdf",
        },
        "invoice INV-2026-000007 (1200.00 USD)",
        ["Total:      1200.00 USD", "The PDF is attached"],
    ),
    "invoice.past_due": (
        {
            "invoice_id": "inv_1",
            "number": "INV-2026-000007",
            "status": "past_due",
            "total": "1200.00",
            "amount_due": "1200.00",
            "currency": "USD",
            "period_start": None,
            "period_end": None,
            "pdf_url": "/v1/invoices/inv_1/pdf",
        },
        "invoice INV-2026-000007 is past due (1200.00 USD)",
        ["Amount due: 1200.00 USD", "may be suspended"],
    ),
    "organization.suspended": (
        {"invoice_id": "inv_1", "reason": "invoice INV-2026-000007 unpaid"},
        "suspended for non-payment",
        ["invoice INV-2026-000007 unpaid", "/v1/invoices/inv_1/pay"],
    ),
    "purchase.failed": (
        {
            "purchase_id": "pur_1",
            "package": "standard",
            "credits": "10000",
            "amount": "90.00",
            "currency": "USD",
            "status": "failed",
            "failure_code": "insufficient_funds",
        },
        "a purchase of 10000 credits failed",
        ["Price:   90.00 USD", "insufficient_funds"],
    ),
    "auto_top_up.failed": (
        {
            "purchase_id": None,
            "package": "standard",
            "failure_code": "card_declined",
            "reason": "the card was declined",
            "disabled": True,
        },
        "auto top-up failed and was turned off",
        ["the card was declined", "turned OFF", "/auto-top-up"],
    ),
    "credits.expiring": (
        {
            "credits": "250.5",
            "within_days": 7,
            "lots": [{"lot_id": "lot_1", "credits": "250.5", "expires_at": AT}],
        },
        "250.5 credits expire within 7 days",
        ["250.5 credits (lot lot_1) expire 2026-03-10 12:00 UTC"],
    ),
}


def event_of(type_: str, data: dict[str, Any], environment: str = "live") -> NotificationEvent:
    return NotificationEvent(
        id="evt_1",
        type=type_,
        version=1,
        organization_id="org_1",
        environment=environment,
        occurred_at=AT,
        created_at=AT,
        data=catalog.check_data(type_, data),
    )


def test_every_e_mailed_type_has_a_subject_and_both_templates() -> None:
    assert email_render.emailed_types_without_templates() == []
    assert sorted(SAMPLES) == sorted(preferences.emailed_types())
    assert email_render.emailed_types_without_templates(["credits.granted"]) == ["credits.granted"]


@pytest.mark.parametrize("type_", sorted(SAMPLES))
def test_each_message_says_what_happened_and_what_to_do(type_: str) -> None:
    data, subject, phrases = SAMPLES[type_]
    rendered = email_render.render(
        event_of(type_, data), "Acme AI", "you are an owner of Acme AI", "https://u/x", "https://u"
    )
    assert rendered.subject == f"Acme AI: {subject}"
    for phrase in phrases:
        assert phrase in rendered.text
    assert "Unsubscribe from these e-mails: https://u/x" in rendered.text
    assert 'href="https://u/x"' in rendered.html
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")


def test_html_is_escaped_and_subjects_are_one_line_with_test_marked() -> None:
    data, _, _ = SAMPLES["organization.paused"]
    rendered = email_render.render(
        event_of("organization.paused", data, "test"),
        "<script>x</script>\r\nBcc: a@b",
        "r",
        None,
        "https://u",
    )
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;" in rendered.html
    assert rendered.subject.startswith("[test] <script>x</script> Bcc: a@b: ")
    assert "\n" not in rendered.subject
    assert "remove this address from the alert rule" in rendered.text


def test_a_broken_template_sends_the_generic_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(email_render.SUBJECTS, "organization.paused", "{{ data.x.y.z }}")
    data, _, _ = SAMPLES["organization.paused"]
    with caplog.at_level(logging.ERROR):
        rendered = email_render.render(
            event_of("organization.paused", data), "Acme AI", "r", None, "https://u"
        )
    assert rendered.subject == "Acme AI: organization.paused"
    assert "available_credits: 0" in rendered.text
    assert "generic message" in caplog.text


def test_the_server_says_at_start_where_e_mail_goes(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from creditmeter.cli.serve import say_email

    with caplog.at_level(logging.INFO):
        say_email(Settings())
    line = capsys.readouterr().err.strip()
    assert line == (
        "e-mail: no SMTP server configured (CREDITMETER_SMTP_HOST); messages are kept in the "
        "outbox: GET /v1/organizations/{id}/emails"
    )
    assert line in caplog.text
    say_email(Settings(smtp_host="smtp.example.com", smtp_port=465, smtp_tls="ssl"))
    assert "e-mail: SMTP smtp.example.com:465 (ssl)" in capsys.readouterr().err
