"""Fixtures of the e-mail tests: a real SMTP server (aiosmtpd on a free loopback port, in its own
thread) that keeps what it receives, an organization with one member of each role, and helpers to
publish events and run the ``email_send`` jobs as the worker does."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import select

from creditmeter.config import Settings
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.notify import events
from creditmeter.notify.email import EMAIL_SEND, send_email_job
from creditmeter.notify.models import Email
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Role
from tests.conftest import utc

PUBLIC_URL = "https://credits.example.com"
T0 = utc(2026, 3, 10, 12)
#: The members the organization fixture makes, by role.
OWNER, ADMIN, MEMBER, VIEWER = (
    "olivia@acme.test",
    "adam@acme.test",
    "mel@acme.test",
    "vic@acme.test",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Collector:
    """The aiosmtpd handler: keeps every message it accepts."""

    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [r.message for r in self.received if address in r.rcpt_tos]


@dataclass
class SmtpServer:
    host: str
    port: int
    collector: Collector
    logins: list[tuple[str, str]]

    @property
    def received(self) -> list[Received]:
        return self.collector.received


def _start(**kwargs: Any) -> tuple[Controller, SmtpServer]:
    collector = Collector()
    logins: list[tuple[str, str]] = []

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        logins.append((login, password))
        return AuthResult(success=(login, password) == ("mailer", "s3cret"), handled=False)

    port = free_port()
    controller = Controller(
        collector,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
        **kwargs,
    )
    controller.start()
    return controller, SmtpServer("127.0.0.1", port, collector, logins)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server on loopback that accepts every message (and AUTH as mailer/s3cret)."""
    controller, server = _start()
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture(autouse=True)
def public_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """Links in bodies are made when messages are queued, from the environment's settings."""
    monkeypatch.setenv("CREDITMETER_PUBLIC_URL", PUBLIC_URL)
    return PUBLIC_URL


@pytest.fixture(autouse=True)
def march() -> Iterator[None]:
    with clock.frozen_at(T0):
        yield


def smtp_settings(db: Database, server: SmtpServer | None, **changes: Any) -> Settings:
    """The worker's settings: sending to ``server`` in plain SMTP (None: no SMTP configured)."""
    values: dict[str, Any] = {
        "database_url": db.url,
        "smtp_host": server.host if server else None,
        "smtp_port": server.port if server else 587,
        "smtp_tls": "none",
        "email_from": "Acme Credits <billing@credits.example.com>",
        "public_url": PUBLIC_URL,
    }
    return Settings(**(values | changes))


@pytest.fixture
def acme(db: Database) -> dict[str, str]:
    """Acme AI with one member of each role; returns the organization's id and the member ids by
    address."""
    with db.write() as session:
        org = orgs.create_organization(session, "Acme AI", "acme", clock.now()).id
        ids = {"org": org}
        for address, role in [
            (OWNER, Role.OWNER),
            (ADMIN, Role.ADMIN),
            (MEMBER, Role.MEMBER),
            (VIEWER, Role.VIEWER),
        ]:
            ids[address] = orgs.add_member(session, org, address, role, clock.now()).id
    return ids


def publish(
    db: Database,
    type_: str,
    org: str | None,
    data: dict[str, Any],
    environment: str = "live",
    source_key: str | None = None,
) -> str | None:
    with db.write() as session:
        event = events.publish(
            session,
            type_,
            organization_id=org,
            environment=environment,
            data=data,
            now=clock.now(),
            source_key=source_key,
        )
        return event.id if event else None


def run_emails(db: Database, settings: Settings, now: datetime | None = None) -> list[Any]:
    """Run the due ``email_send`` jobs as the worker does (outside any transaction)."""
    return outbox.run(
        db,
        {EMAIL_SEND: lambda job: send_email_job(db, settings, job)},
        now=now or clock.now(),
    )


def emails_of(db: Database, event_id: str | None = None) -> list[Email]:
    with db.read() as session:
        query = select(Email).order_by(Email.to_address)
        if event_id is not None:
            query = query.where(Email.event_id == event_id)
        return list(session.scalars(query))


def alert_data(rule_id: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "alert": {
            "id": rule_id,
            "type": "credits_below",
            "name": "Low balance",
            "threshold": "100",
            "project_id": None,
        },
        "value": "87.5",
        "available_credits": "87.5",
        "at": T0,
    }
    return data | changes


PAUSED = {"available_credits": "-0.25", "at": T0, "reason": "insufficient_credits"}


@pytest.fixture
def fake_attachment(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, bytes], None]:
    """Register an attachment renderer for a kind (undone after the test)."""
    from creditmeter.notify import email as email_module

    def register(kind: str, content: bytes) -> None:
        monkeypatch.setitem(
            email_module.ATTACHMENTS, kind, lambda session, ref: (f"{ref}.bin", content)
        )

    return register
