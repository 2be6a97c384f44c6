"""One message over SMTP: the MIME message (``multipart/alternative`` text + HTML, then the
attachments) and its delivery with ``smtplib``. No database here: the ``email_send`` handler
(:func:`creditmeter.notify.email.send_email_job`) reads the message, calls these outside any
transaction and records the outcome.

The ``Message-ID`` is derived from the stored message (``<em_…@domain>``), the same on every
attempt: a message delivered twice (the worker stopped between the server's acceptance and the
write that records it) shows once in mail clients.
"""

from __future__ import annotations

import mimetypes
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

from creditmeter.config import Settings

TIMEOUT_SECONDS = 30.0
TLS_MODES = ("starttls", "ssl", "none")


class SmtpConfigurationError(ValueError):
    """``smtp_tls`` names no mode: every message fails (and is retried) until it is fixed."""


@dataclass(frozen=True)
class Outgoing:
    """One message as sent: read from its row (and its member's token) in a short transaction."""

    email_id: str
    to: str
    subject: str
    text: str
    html: str
    files: list[tuple[str, bytes]]
    unsubscribe_url: str | None


def build_message(settings: Settings, outgoing: Outgoing) -> EmailMessage:
    """The MIME message: text and HTML alternatives, attachments after them, a ``Message-ID`` that
    is the same on every attempt, and RFC 8058 one-click unsubscribe headers for members."""
    message = EmailMessage()
    message["From"] = settings.email_from
    message["To"] = outgoing.to
    message["Subject"] = outgoing.subject
    message["Date"] = formatdate(usegmt=True)
    domain = parseaddr(settings.email_from)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = f"<{outgoing.email_id}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"
    if outgoing.unsubscribe_url:
        message["List-Unsubscribe"] = f"<{outgoing.unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(outgoing.text)
    message.add_alternative(outgoing.html, subtype="html")
    for filename, content in outgoing.files:
        kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        maintype, _, subtype = kind.partition("/")
        message.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return message


def deliver(settings: Settings, message: EmailMessage) -> None:
    """Send over SMTP as configured: STARTTLS (required, never falls back to clear text), implicit
    TLS, or plain; log in when a username is set; 30 s timeout. Raises on any failure."""
    mode = settings.smtp_tls
    if mode not in TLS_MODES:
        raise SmtpConfigurationError(
            f"CREDITMETER_SMTP_TLS is {mode!r}; use one of {', '.join(TLS_MODES)}"
        )
    assert settings.smtp_host is not None
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if mode == "ssl":
        client = smtplib.SMTP_SSL(
            settings.smtp_host, settings.smtp_port, timeout=TIMEOUT_SECONDS, context=context
        )
    else:
        client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=TIMEOUT_SECONDS)
    with client:
        client.ehlo()
        if mode == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if settings.smtp_username:
            client.login(settings.smtp_username, settings.smtp_password or "")
        client.send_message(message)
