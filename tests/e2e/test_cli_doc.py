"""docs/cli.md's samples are the CLI's real output: its `$ creditmeter …` commands run in order on a
fresh database, in a 100-column terminal, at the sample's time, with ids drawn from a fixed sequence,
and print exactly what the page shows (keys, which are random, aside)."""

from __future__ import annotations

import random
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from creditmeter.cli.main import app
from creditmeter.kit import clock, ids
from tests.conftest import utc

ROOT = Path(__file__).resolve().parents[2]
#: The sections whose samples are checked (in the page's order: each builds on the one before).
SECTIONS = (
    "## org create, org list",
    "## grant",
    "## balance",
    "## api-key create, api-key revoke",
)
#: When the samples were taken.
AT = utc(2026, 11, 25, 17, 39)
EXIT = re.compile(r"\s+\[exit (\d+)\]$")
KEY = re.compile(r"cm_(live|test)_[A-Za-z0-9_-]{43}")


def samples() -> Iterator[tuple[str, list[str], int]]:
    """(command, the lines it prints, its exit code) of every `$ creditmeter` line, in order."""
    page = (ROOT / "docs" / "cli.md").read_text()
    for heading in SECTIONS:
        start = page.index(heading)
        end = page.find("\n## ", start + 1)
        text = page[start : end if end != -1 else None]
        for block in re.findall(r"^```\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            command: str | None = None
            lines: list[str] = []
            code = 0
            for line in block.splitlines():
                if line.startswith("$ "):
                    if command is not None:
                        yield command, lines, code
                    command, lines, code = None, [], 0
                    if line.startswith("$ creditmeter "):  # others (`export OP=$(…)`) are skipped
                        command, code = _exit(line[2:])
                elif command is not None:
                    text, shown_code = _exit(line)
                    lines.append(text)
                    code = shown_code or code
            if command is not None:
                yield command, lines, code


def _exit(line: str) -> tuple[str, int]:
    """A line without its `[exit N]` note, and N (0 without one)."""
    found = EXIT.search(line)
    return (EXIT.sub("", line), int(found.group(1))) if found else (line, 0)


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(20261125)
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    counter = iter(range(10**6))

    def ulid() -> str:  # time-ordered like the real ones: a rising prefix, then random characters
        return f"01M8{next(counter):06d}" + "".join(rng.choice(alphabet) for _ in range(16))

    monkeypatch.setattr(ids, "ulid", ulid)


def test_the_cli_page_shows_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixed_ids: None
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CREDITMETER_DATABASE_URL", raising=False)
    runner = CliRunner()
    env = {"COLUMNS": "100"}
    assert runner.invoke(app, ["db", "upgrade"], env=env, prog_name="creditmeter").exit_code == 0
    checked = 0
    with clock.frozen_at(AT):
        for command, expected, code in samples():
            args = shlex.split(command)[1:]
            quiet = args[-1] == "2>/dev/null"
            result = runner.invoke(
                app, args[:-1] if quiet else args, env=env, prog_name="creditmeter"
            )
            said = [] if quiet else result.stderr.splitlines()
            shown = result.stdout.splitlines() + [s for s in said if not s.startswith("database:")]
            actual = [KEY.sub("cm_KEY", line.rstrip()) for line in shown]
            assert (result.exit_code, actual) == (
                code,
                [KEY.sub("cm_KEY", line.rstrip()) for line in expected],
            ), f"$ {command}\n" + "\n".join(actual)
            checked += 1
    assert checked >= 10
