"""Fixtures of the webhook tests: a real receiver process (``tests/receivers/webhook_receiver.py``)
that checks every signature with the ``standardwebhooks`` package, settings that allow loopback
URLs, and helpers that publish events and run the delivery jobs at a chosen time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from creditmeter.api.app import create_app
from creditmeter.config import Settings
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.kit.ids import ulid
from creditmeter.notify import delivery, events, webhooks

RECEIVER = Path(__file__).resolve().parents[1] / "receivers" / "webhook_receiver.py"
Headers = dict[str, str]


@dataclass
class ReceiverProcess:
    base: str
    log: Path
    secrets: Path
    process: subprocess.Popen[str]


@pytest.fixture(scope="session")
def receiver_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    folder = tmp_path_factory.mktemp("receiver")
    log, secrets = folder / "requests.jsonl", folder / "secrets.json"
    log.touch()
    secrets.write_text("{}")
    process = subprocess.Popen(
        [sys.executable, str(RECEIVER), "--log", str(log), "--secrets", str(secrets)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line.startswith("listening on "), line
    try:
        yield ReceiverProcess(line.removeprefix("listening on "), log, secrets, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Receiver:
    """One test's view of the shared receiver: URLs carrying this test's token, and the requests
    that came with it."""

    shared: ReceiverProcess
    token: str

    def url(self, mode: str = "ok", **query: object) -> str:
        extra = "".join(f"&{k}={v}" for k, v in query.items())
        return f"{self.shared.base}/{mode}?t={self.token}{extra}"

    def trust(self, name: str, secret: str) -> None:
        """Let the receiver check signatures with this secret (recorded under ``name``)."""
        known = json.loads(self.shared.secrets.read_text())
        known[name] = secret
        self.shared.secrets.write_text(json.dumps(known))

    def requests(self, wait_for: int = 0, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [
                r
                for r in map(json.loads, self.shared.log.read_text().splitlines())
                if r["query"].get("t") == self.token
            ]
            if len(found) >= wait_for or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


@pytest.fixture
def receiver(receiver_process: ReceiverProcess) -> Receiver:
    return Receiver(receiver_process, ulid())


@pytest.fixture
def settings(db: Database) -> Settings:
    return Settings(database_url=db.url, webhook_allow_private=True, webhook_timeout_seconds=2.0)


@pytest.fixture
def app(db: Database, settings: Settings) -> Any:
    return create_app(settings, db=db)


@pytest.fixture
def strict_client(db: Database) -> Iterator[TestClient]:
    """A client of an app with the default settings: private addresses refused."""
    app = create_app(Settings(database_url=db.url), db=db)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def real_now() -> datetime:
    """A moment near the real time (the receiver checks the signature's timestamp against it)."""
    return datetime.now(UTC).replace(microsecond=0)


DATA: dict[str, Callable[[datetime], dict[str, Any]]] = {
    "balance.depleted": lambda at: {"available_credits": "0", "at": at},
    "organization.resumed": lambda at: {"available_credits": "10", "at": at},
    "credits.expired": lambda at: {"credits": "5", "lots": [{"lot_id": "lot_1", "credits": "5"}]},
}


def publish(
    db: Database,
    type_: str,
    organization_id: str | None,
    at: datetime,
    environment: str = "live",
) -> str:
    """Publish one event of ``type_`` (committed); returns its id."""
    with db.write() as session:
        event = events.publish(
            session,
            type_,
            organization_id=organization_id,
            environment=environment,
            data=DATA[type_](at),
            now=at,
        )
        assert event is not None
        return event.id


def run_jobs(db: Database, settings: Settings, at: datetime) -> list[outbox.Outcome]:
    """Run the delivery jobs due at ``at``, as the worker does, with the clock at ``at``."""
    with clock.frozen_at(at):
        return outbox.run(
            db,
            {delivery.WEBHOOK_DELIVERY: lambda job: delivery.run_delivery(db, settings, job)},
            now=at,
        )


def with_timeout(settings: Settings, seconds: float) -> Settings:
    return replace(settings, webhook_timeout_seconds=seconds)


@pytest.fixture
def org_admin(make_org: Callable[..., str], make_key: Callable[..., Headers]) -> Callable[..., Any]:
    """An organization and an org:admin key of it: ``(org_id, headers)``."""

    def _make(name: str = "Acme AI", environment: str = "live") -> tuple[str, Headers]:
        org = make_org(name)
        return org, make_key(org, "org:admin", environment=environment)

    return _make


def make_endpoint(
    db: Database,
    receiver: Receiver | None,
    organization_id: str | None,
    url: str,
    *,
    event_types: list[str] | None = None,
    environment: str = "live",
) -> str:
    """An endpoint made through the service (the receiver trusts its secret, by its id)."""
    with db.write() as session:
        endpoint, secret = webhooks.create_endpoint(
            session,
            organization_id=organization_id,
            environment=environment,
            url=url,
            description="",
            event_types=event_types or [],
            now=clock.now(),
        )
    if receiver is not None:
        receiver.trust(endpoint.id, secret)
    return endpoint.id
