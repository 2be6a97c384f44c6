"""Crash safety: SIGKILL the server in the middle of batched ingest, restart it on the same database,
resend every batch as a client would (same ids, same bodies), and prove that each event was applied
exactly once and that no micro-credit was lost or created. SQLite and PostgreSQL, real processes."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from creditmeter.kit.credits import parse_credits
from creditmeter.kit.db import Database
from tests import pg
from tests.conftest import IN_CI

BATCHES = 40
PER_BATCH = 500
ORGS = 10
#: Credits granted to each organization; the first gets only SMALL_GRANT and runs into arrears.
GRANT = "1000"
SMALL_GRANT = "5"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "creditmeter.cli.main", *args],
        env={**os.environ, "CREDITMETER_DATABASE_URL": url, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=False,
    )


@dataclass
class Server:
    url: str
    log: Path
    proc: subprocess.Popen[bytes] = field(init=False)
    base: str = field(init=False)

    def start(self) -> None:
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "creditmeter.cli.main", "serve"),
                    *("--port", str(port), "--no-worker", "--no-access-log"),
                ],
                env={**os.environ, "CREDITMETER_DATABASE_URL": self.url},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        for _ in range(300):
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the server did not become ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'creditmeter.db'}"
        return
    try:
        ctx = pg.server()
        admin = ctx.__enter__()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL unavailable in CI: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        with pg.scratch_database(admin) as url:
            yield url
    finally:
        ctx.__exit__(None, None, None)


def _batches(org_ids: list[str]) -> list[dict[str, Any]]:
    """40 batches of 500 events of varied size over the organizations (some cache hits)."""
    rng = random.Random(20240601)
    batches = []
    for b in range(BATCHES):
        events = []
        for i in range(PER_BATCH):
            event: dict[str, Any] = {
                "id": f"crash-{b}-{i}",
                "organization": rng.choice(org_ids),
                "operation": "inference",
                "quantities": {
                    "input_tokens": str(rng.randint(1, 50_000)),
                    "output_tokens": str(rng.randint(0, 20_000)),
                },
            }
            if rng.random() < 0.2:
                event["cache_hit"] = True
            events.append(event)
        batches.append({"events": events})
    return batches


@dataclass
class Sender:
    """A client sending the batches one after another until the connection breaks."""

    base: str
    headers: dict[str, str]
    batches: list[dict[str, Any]]
    first: int = 0
    responses: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)
    took: list[float] = field(default_factory=list)
    failed_at: int | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=60) as http:
            for index in range(self.first, len(self.batches)):
                body = self.batches[index]
                self.started[index] = time.monotonic()
                try:
                    r = http.post("/v1/usage/batch", json=body)
                except httpx.TransportError:
                    self.failed_at = index
                    return
                assert r.status_code == 200, r.text
                self.took.append(time.monotonic() - self.started[index])
                self.responses[index] = r.json()["results"]


def _ingest_until_killed(server: Server, sender: Sender, fraction: float) -> int:
    """Send batches from ``sender.first`` on and SIGKILL the server ``fraction`` of the way through the
    ninth batch of this run (by the time batches have been taking), so the kill lands while a batch
    is being parsed, priced or committed. Returns the batch that was in flight."""
    thread = threading.Thread(target=sender.run)
    thread.start()
    deadline = time.monotonic() + 60
    while len(sender.responses) < 8 and thread.is_alive():
        assert time.monotonic() < deadline, "the first batches took too long"
        time.sleep(0.002)
    mean = sum(sender.took) / len(sender.took)
    current = sender.first + len(sender.responses)
    while current not in sender.started and thread.is_alive():
        time.sleep(0.001)
    if current in sender.started:
        time.sleep(max(0.0, sender.started[current] + mean * fraction - time.monotonic()))
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    thread.join(timeout=60)
    assert server.proc.returncode == -signal.SIGKILL
    assert sender.failed_at is not None, "the kill did not interrupt the ingest"
    return sender.failed_at


def test_a_killed_server_applies_every_resent_event_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    server = Server(database_url, tmp_path / "serve.log")
    server.start()
    try:
        created = _cli(database_url, "api-key", "create", "--operator", "--name", "crash test")
        assert created.returncode == 0, created.stderr
        headers = {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}
        granted: dict[str, int] = {}
        with httpx.Client(base_url=server.base, headers=headers, timeout=30) as http:
            for n in range(ORGS):
                org = http.post("/v1/organizations", json={"name": f"crash org {n}"}).json()["id"]
                credits = SMALL_GRANT if n == 0 else GRANT
                lot = http.post(
                    f"/v1/organizations/{org}/grants",
                    json={"credits": credits, "source": "purchase", "reason": "crash test"},
                )
                assert lot.status_code == 201, lot.text
                granted[org] = parse_credits(credits)
        batches = _batches(list(granted))

        # Two crashes: one early in a batch, one late (likelier to land around the commit). After
        # the first the client resumes from the batch it lost; after the second it resends them all.
        acknowledged: dict[int, list[dict[str, Any]]] = {}
        first = 0
        for fraction in (0.5, 0.9):
            sender = Sender(server.base, headers, batches, first)
            first = _ingest_until_killed(server, sender, fraction)
            acknowledged |= sender.responses
            server.start()  # on the same database, as after a crash
        assert first < BATCHES

        resent: dict[int, list[dict[str, Any]]] = {}
        with httpx.Client(base_url=server.base, headers=headers, timeout=60) as http:
            for index, body in enumerate(batches):  # every batch, as a client that lost track would
                r = http.post("/v1/usage/batch", json=body)
                assert r.status_code == 200, r.text
                resent[index] = r.json()["results"]

            consumed: dict[str, int] = defaultdict(int)
            for index, results in resent.items():
                statuses = Counter(r["status"] for r in results)
                # one batch is one transaction: after the crash it is all there or not at all
                assert len(statuses) == 1, (index, statuses)
                status = next(iter(statuses))
                if index in acknowledged:
                    assert status == "duplicate", index
                    assert [r["credits"] for r in results] == [
                        r["credits"] for r in acknowledged[index]
                    ]
                elif index > first:  # never sent before
                    assert status == "applied", index
                for event, result in zip(batches[index]["events"], results, strict=True):
                    assert result["id"] == event["id"]
                    consumed[event["organization"]] += parse_credits(result["credits"])

            balances = {org: http.get(f"/v1/organizations/{org}/balance").json() for org in granted}
        for org, grant in granted.items():  # no micro-credit lost or created
            balance = balances[org]
            assert parse_credits(balance["available"]) == grant - consumed[org], (org, balance)
        assert parse_credits(balances[next(iter(granted))]["arrears"]) > 0  # the small one ran dry

        db = Database(database_url)
        try:
            with db.read() as s:
                total = s.execute(text("SELECT count(*) FROM usage_events")).scalar_one()
                distinct = s.execute(
                    text(
                        "SELECT count(*) FROM (SELECT DISTINCT organization_id, event_id "
                        "FROM usage_events) AS d"
                    )
                ).scalar_one()
                per_org = dict(
                    s.execute(
                        text(
                            "SELECT organization_id, sum(credits_micros) FROM usage_events "
                            "GROUP BY organization_id"
                        )
                    ).all()
                )
        finally:
            db.dispose()
        assert total == distinct == BATCHES * PER_BATCH
        assert {org: int(v) for org, v in per_org.items()} == dict(consumed)

        verified = _cli(database_url, "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        server.stop()


def test_concurrent_clients_sharing_transactions_survive_two_kills_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    """Four clients send batches at the same time, so the server writes several of them in one
    transaction (group commit); the server is SIGKILLed twice while they send. Each client retries
    a batch until it is answered, as a client would. Afterwards every event is recorded once, a
    resend of everything answers all duplicates with the credits first answered, and the balances
    are the grants minus the recorded credits."""
    server = Server(database_url, tmp_path / "serve.log")
    server.start()
    try:
        created = _cli(database_url, "api-key", "create", "--operator", "--name", "crash test")
        assert created.returncode == 0, created.stderr
        headers = {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}
        granted: dict[str, int] = {}
        with httpx.Client(base_url=server.base, headers=headers, timeout=30) as http:
            for n in range(3):
                org = http.post("/v1/organizations", json={"name": f"busy org {n}"}).json()["id"]
                lot = http.post(
                    f"/v1/organizations/{org}/grants",
                    json={"credits": GRANT, "source": "purchase", "reason": "crash test"},
                )
                assert lot.status_code == 201, lot.text
                granted[org] = parse_credits(GRANT)
        batches = [{"events": batch["events"][:100]} for batch in _batches(list(granted)) * 4]
        for n, batch in enumerate(batches):
            batch["events"] = [{**e, "id": f"{n}-{e['id']}"} for e in batch["events"]]
        answered: dict[int, list[dict[str, Any]]] = {}
        live = {"base": server.base}

        def client(first: int) -> None:
            with httpx.Client(headers=headers, timeout=60) as http:
                for index in range(first, len(batches), 4):
                    for _ in range(600):
                        try:
                            r = http.post(f"{live['base']}/v1/usage/batch", json=batches[index])
                        except httpx.TransportError:
                            time.sleep(0.05)  # the server is down: try again
                            continue
                        assert r.status_code == 200, r.text
                        answered[index] = r.json()["results"]
                        break

        clients = [threading.Thread(target=client, args=(w,)) for w in range(4)]
        for t in clients:
            t.start()
        for _ in range(2):
            deadline = time.monotonic() + 60
            target = len(answered) + 15
            while len(answered) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(timeout=10)
            server.start()
            live["base"] = server.base
        for t in clients:
            t.join(timeout=300)
        assert len(answered) == len(batches)

        consumed: dict[str, int] = defaultdict(int)
        with httpx.Client(base_url=server.base, headers=headers, timeout=60) as http:
            for index, body in enumerate(batches):
                again = http.post("/v1/usage/batch", json=body).json()["results"]
                assert {r["status"] for r in again} == {"duplicate"}, index
                assert [r["credits"] for r in again] == [r["credits"] for r in answered[index]]
                for event, result in zip(body["events"], again, strict=True):
                    consumed[event["organization"]] += parse_credits(result["credits"])
            for org, grant in granted.items():
                balance = http.get(f"/v1/organizations/{org}/balance").json()
                assert parse_credits(balance["available"]) == grant - consumed[org], balance
        db = Database(database_url)
        try:
            with db.read() as s:
                total = s.execute(text("SELECT count(*) FROM usage_events")).scalar_one()
        finally:
            db.dispose()
        assert total == sum(len(b["events"]) for b in batches)
        verified = _cli(database_url, "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        server.stop()
