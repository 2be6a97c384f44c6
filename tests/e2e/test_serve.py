"""`creditmeter serve` as a newcomer runs it: a real server process, real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import pg
from tests.conftest import IN_CI

KEY_RE = re.compile(r"cm_live_[A-Za-z0-9_-]{40,}")
TEST_KEY_RE = re.compile(r"export ORBITAL=(cm_test_[A-Za-z0-9_-]{40,})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(url: str, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    port = _free_port()
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "creditmeter.cli.main", "serve", "--demo", "--port", str(port)],
        env={**os.environ, "CREDITMETER_DATABASE_URL": url, "COLUMNS": "200"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        log.seek(0)
        output = log.read()
        keys = list(dict.fromkeys(KEY_RE.findall(output)))
        assert proc.poll() is None, output
        assert len(keys) == 2, output
        orbital = TEST_KEY_RE.search(output)
        assert orbital, output
        yield base, keys[0], orbital.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    if request.param == "sqlite":
        yield from _serve(f"sqlite:///{tmp_path / 'var' / 'creditmeter.db'}", tmp_path)
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
            yield from _serve(url, tmp_path)
    finally:
        ctx.__exit__(None, None, None)


def test_serve_migrates_seeds_the_demo_and_answers(server: tuple[str, str, str]) -> None:
    base, operator_key, orbital_key = server
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/", follow_redirects=True).url.path == "/docs"
    assert httpx.get(f"{base}/readyz").status_code == 200
    assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "creditmeter"
    assert httpx.get(f"{base}/docs").status_code == 200

    headers = {"Authorization": f"Bearer {operator_key}"}
    orgs = httpx.get(f"{base}/v1/organizations", headers=headers).json()["data"]
    names = {o["name"]: o["id"] for o in orgs}
    assert {"Acme AI", "Globex Research"} <= set(names)

    acme = httpx.get(f"{base}/v1/organizations/{names['Acme AI']}/balance", headers=headers).json()
    assert acme["paused"] is False
    assert acme["held"] == "150"  # a training run holds credits
    globex = httpx.get(
        f"{base}/v1/organizations/{names['Globex Research']}/balance", headers=headers
    ).json()
    assert globex["paused"] is True
    assert globex["arrears"] != "0"

    by_external_id = httpx.get(f"{base}/v1/organizations/demo-acme/balance", headers=headers)
    assert by_external_id.json() == acme

    orbital = {"Authorization": f"Bearer {orbital_key}"}
    invoices = httpx.get(f"{base}/v1/organizations/demo-orbital/invoices", headers=orbital)
    assert [i["status"] for i in invoices.json()["data"]] == ["paid"] * 3 + ["past_due"]
    pdf = httpx.get(f"{base}{invoices.json()['data'][0]['pdf_url']}", headers=orbital)
    assert (pdf.status_code, pdf.headers["content-type"]) == (200, "application/pdf")

    unauthenticated = httpx.get(f"{base}/v1/organizations")
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["content-type"].startswith("application/problem+json")
