"""Alerts and notifications end to end, with real processes: a ``creditmeter serve`` (API and worker),
a webhook receiver that verifies every signature with the ``standardwebhooks`` library, and an SMTP
server (aiosmtpd). Usage is driven across thresholds down and up on two organizations; each crossing
reaches its organization's endpoint and recipients once, nothing reaches the other organization's
endpoint, and a server SIGKILLed in the middle of deliveries delivers every queued event after its
restart. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.e2e.test_crash_safety import _cli, _free_port, database_url  # noqa: F401
from tests.notify_email.conftest import Collector

RECEIVER = Path(__file__).resolve().parent.parent / "receivers" / "webhook_receiver.py"
#: One H100 hour of training costs 6.76 credits under the default rate card at 12:00 UTC.
Headers = dict[str, str]


@dataclass
class Served:
    url: str
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] = field(init=False)
    base: str = field(init=False)

    def start(self) -> None:
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "creditmeter.cli.main", "serve", "--port", str(port),
                 "--no-access-log"],
                env={**os.environ, "CREDITMETER_DATABASE_URL": self.url, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        for _ in range(300):
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the server did not become ready:\n{self.log.read_text()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Receiver:
    base: str
    log: Path
    secrets: Path

    def trust(self, name: str, secret: str) -> None:
        known = json.loads(self.secrets.read_text())
        known[name] = secret
        self.secrets.write_text(json.dumps(known))

    def requests(self, token: str) -> list[dict[str, Any]]:
        return [
            r
            for r in map(json.loads, self.log.read_text().splitlines())
            if r["query"].get("t") == token
        ]

    def wait(
        self, token: str, done: Callable[[list[dict[str, Any]]], bool], seconds: float = 60
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while True:
            got = self.requests(token)
            if done(got) or time.monotonic() > deadline:
                return got
            time.sleep(0.1)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    log, secrets = tmp_path / "requests.jsonl", tmp_path / "secrets.json"
    log.touch()
    secrets.write_text("{}")
    proc = subprocess.Popen(
        [sys.executable, str(RECEIVER), "--log", str(log), "--secrets", str(secrets)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    try:
        yield Receiver(line.removeprefix("listening on "), log, secrets)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def smtp() -> Iterator[tuple[int, Collector]]:
    collector = Collector()
    port = _free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, collector
    finally:
        controller.stop()


@pytest.fixture
def served(
    database_url: str,  # noqa: F811
    tmp_path: Path,
    smtp: tuple[int, Collector],
) -> Iterator[Served]:
    server = Served(
        database_url,
        tmp_path / "serve.log",
        {
            "CREDITMETER_WEBHOOK_ALLOW_PRIVATE": "1",
            "CREDITMETER_SMTP_HOST": "127.0.0.1",
            "CREDITMETER_SMTP_PORT": str(smtp[0]),
            "CREDITMETER_SMTP_TLS": "none",
            "CREDITMETER_NOTIFY_LEASE_SECONDS": "4",
            "CREDITMETER_WEBHOOK_TIMEOUT_SECONDS": "3",
        },
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def operator_headers(url: str) -> Headers:
    created = _cli(url, "api-key", "create", "--operator", "--name", "notifications e2e")
    assert created.returncode == 0, created.stderr
    return {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}


class Org:
    def __init__(self, http: httpx.Client, receiver: Receiver, name: str, owner: str) -> None:
        self.http = http
        self.id = self._ok(http.post("/v1/organizations", json={"name": name}))["id"]
        self._ok(self.post("members", {"email": owner, "role": "owner"}))
        self.token = f"tok{self.id[-10:]}"
        endpoint = self._ok(
            self.post("webhook-endpoints", {"url": f"{receiver.base}/ok?t={self.token}"})
        )
        receiver.trust(self.id, endpoint["secret"])
        self.events = 0

    @staticmethod
    def _ok(response: httpx.Response) -> dict[str, Any]:
        assert response.is_success, response.text
        return dict(response.json())

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(f"/v1/organizations/{self.id}/{path}", json=body)

    def grant(self, credits: str) -> None:
        self._ok(self.post("grants", {"credits": credits, "source": "promo", "reason": "e2e"}))

    def rule(self, threshold: str, recipients: list[str] | None = None) -> str:
        body = {"type": "credits_below", "threshold": threshold, "recipients": recipients or []}
        return str(self._ok(self.post("alerts", body))["id"])

    def spend(self, credits: int) -> None:
        """Usage worth ``credits`` credits: inference at 0.002 credits per 1,000 input tokens."""
        self.events += 1
        body = {
            "id": f"use-{self.events}",
            "organization": self.id,
            "operation": "inference",
            "quantities": {"input_tokens": str(credits * 500_000)},
        }
        self._ok(self.http.post("/v1/usage", json=body))


def crossings(requests: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(type, alert id) of the distinct events received (de-duplicated on webhook-id)."""
    seen: dict[str, tuple[str, str]] = {}
    for r in requests:
        if r["type"] in {"alert.triggered", "alert.resolved"}:
            seen[r["event_id"]] = (r["type"], r["alert_id"])
    return Counter(seen.values())


def test_each_crossing_reaches_its_organization_once_and_survives_a_kill(
    served: Served, receiver: Receiver, smtp: tuple[int, Collector]
) -> None:
    headers = operator_headers(served.url)
    with httpx.Client(base_url=served.base, headers=headers, timeout=30) as http:
        a = Org(http, receiver, "Alpha", "owner@alpha.example")
        b = Org(http, receiver, "Beta", "owner@beta.example")
        for org in (a, b):
            org.grant("1000")
        a500, a200 = a.rule("500"), a.rule("200", ["ops@alpha.example"])
        b500 = b.rule("500")
        a.spend(550)  # 450: a500 fires
        a.spend(300)  # 150: a200 fires
        b.spend(700)  # 300: b500 fires
        a.spend(10)  # 140: nothing new
        a.grant("860")  # 1000: both resolve
        a.spend(520)  # 480: a500 fires again
        expected_a = Counter(
            {("alert.triggered", a500): 2, ("alert.triggered", a200): 1,
             ("alert.resolved", a500): 1, ("alert.resolved", a200): 1}
        )  # fmt: skip
        got_a = receiver.wait(a.token, lambda got: crossings(got) == expected_a)
        got_b = receiver.wait(b.token, lambda got: crossings(got) == {("alert.triggered", b500): 1})
        assert crossings(got_a) == expected_a
        assert crossings(got_b) == Counter({("alert.triggered", b500): 1})
        assert {r["organization_id"] for r in got_a} == {a.id}
        assert {r["organization_id"] for r in got_b} == {b.id}
        for r in got_a:
            assert r["verified_with"] == [a.id]
        for r in got_b:
            assert r["verified_with"] == [b.id]

        collector = smtp[1]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            len(collector.to("ops@alpha.example")) < 2
            or len(collector.to("owner@alpha.example")) < 3
            or len(collector.to("owner@beta.example")) < 1
        ):
            time.sleep(0.1)
        time.sleep(1.5)  # one more pass of the worker: nothing further may come
        # a200's recipients get its trigger and its resolution; the owners (no recipients named)
        # get a500's two triggers and one resolution; Beta's owner only Beta's alert.
        assert len(collector.to("ops@alpha.example")) == 2
        assert len(collector.to("owner@alpha.example")) == 3
        assert len(collector.to("owner@beta.example")) == 1
        for message in collector.to("owner@beta.example"):
            body = message.get_body(("plain",))
            assert body is not None
            assert "Alpha" not in body.get_content()

        # A burst of 24 crossings in one write, delivered to a slow endpoint; the server is killed
        # while they are in flight and restarted on the same database.
        c = Org(http, receiver, "Gamma", "owner@gamma.example")
        slow = c._ok(
            c.post(
                "webhook-endpoints", {"url": f"{receiver.base}/slow?seconds=0.4&t=slow{c.token}"}
            )
        )
        receiver.trust(f"{c.id}-slow", slow["secret"])
        c.grant("1000")
        rules = {c.rule(str(900 - 30 * n)) for n in range(24)}
        c.spend(950)  # 50 left: all 24 lines crossed by one write
    slow_token = f"slow{c.token}"
    started = receiver.wait(slow_token, lambda got: len(got) >= 3, seconds=30)
    assert len(started) >= 3
    served.kill()
    before = {r["event_id"] for r in receiver.requests(slow_token)}
    served.start()
    got = receiver.wait(
        slow_token,
        lambda got: {r["alert_id"] for r in got if r["type"] == "alert.triggered"} >= rules,
        seconds=90,
    )
    received = {r["alert_id"] for r in got if r["type"] == "alert.triggered"}
    assert received >= rules, f"{len(rules - received)} of 24 alerts lost across the kill"
    assert len(before) < len({r["event_id"] for r in got})  # some were sent after the restart
    verify = _cli(served.url, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
