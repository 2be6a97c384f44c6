"""The docs describe the product as it is: the README's first five minutes and then the SDK example of
docs/metering.md run as written against a served app (SQLite and PostgreSQL), and nothing a user
reads names internal issues or files that are not in the repository."""

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
from typer.main import get_command
from typer.testing import CliRunner

from creditmeter.api.app import create_app
from creditmeter.cli.main import app as cli_app
from creditmeter.config import Settings
from tests import pg
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: References a reader cannot follow: internal issue numbers and files outside the repository.
INTERNAL = re.compile(
    r"\bissues?\s*#?\d|\blater issues?\b|\bthe issue's\b|DESIGN\.md|STYLE\.md|shared/|"
    r"credits-product-doc",
    re.IGNORECASE,
)


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else None]


# --- nothing internal -------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_the_docs_name_no_internal_issue_or_outside_file(path: Path) -> None:
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if INTERNAL.search(line)
    ]
    assert not found, "\n".join(found)


def test_the_api_docs_and_cli_help_name_no_internal_issue(tmp_path: Path) -> None:
    spec = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}")).openapi()
    assert not INTERNAL.findall(str(spec))
    runner = CliRunner()
    commands: list[list[str]] = [[]]
    root = get_command(cli_app)
    stack: list[tuple[list[str], object]] = [([], root)]
    while stack:
        path, command = stack.pop()
        for name, sub in getattr(command, "commands", {}).items():
            commands.append([*path, name])
            stack.append(([*path, name], sub))
    for args in commands:
        shown = runner.invoke(cli_app, [*args, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, (args, shown.output)
        assert not INTERNAL.findall(shown.output), (args, shown.output)


# --- the README's first five minutes, then the SDK --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = _free_port()
    log = (tmp_path / "serve.log").open("w+")
    env = {**os.environ, "CREDITMETER_DATABASE_URL": url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "creditmeter.cli.main", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
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
        assert proc.poll() is None, log.read()
        yield base, url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(base URL, database URL) of a real server on a fresh database."""
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


def test_the_readme_walk_then_the_sdk_example_run_as_written(
    served: tuple[str, str], tmp_path: Path
) -> None:
    base, database_url = served
    readme = section((ROOT / "README.md").read_text(), "## Your first five minutes")
    steps = "\n".join(fenced(readme, "sh"))
    assert "export OP=$(.venv/bin/creditmeter api-key create" in steps
    sdk = section((ROOT / "docs" / "metering.md").read_text(), "## The Python SDK")
    [example] = fenced(sdk, "python")
    assert 'Client("http://127.0.0.1:8000", os.environ["OP"])' in example

    # As written, but for the test server's port and this environment's CLI.
    cli = str(Path(sys.executable).parent / "creditmeter")
    (tmp_path / "example.py").write_text(example.replace("http://127.0.0.1:8000", base))
    script = "set -euo pipefail\n" + steps.replace("http://127.0.0.1:8000", base).replace(
        ".venv/bin/creditmeter", cli
    )
    script += f'\necho "--- sdk"\n"{sys.executable}" example.py\necho "OP=$OP" >&2\n'
    done = subprocess.run(
        ["bash", "-c", script],
        check=False,
        cwd=tmp_path,
        env={**os.environ, "CREDITMETER_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    walk, sdk_output = done.stdout.split("--- sdk\n")
    assert "https://creditmeter.dev/problems/" not in walk, walk  # no request was refused
    assert '"external_id":"acme"' in walk
    assert '"status":"succeeded"' in walk  # the package was paid for
    assert "ledger verified" in walk
    assert '"type":"alert.triggered"' in walk  # the alert fired and the worker published it
    lines = sdk_output.splitlines()
    assert lines[0] == "applied 0.0042"
    assert lines[1] == "3"
    assert re.fullmatch(r"\d+(\.\d+)?", lines[2]), sdk_output  # the settled training run's credits

    [operator_key] = re.findall(r"^OP=(cm_live_\S+)$", done.stderr, re.MULTILINE)
    again = subprocess.run(
        [sys.executable, "example.py"],
        check=False,
        cwd=tmp_path,
        env={**os.environ, "OP": operator_key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "duplicate 0.0042"
