"""What the HTTP benchmarks share: a real ``creditmeter serve`` process on a scratch database, an operator
key, funded organizations, the result line every benchmark prints, and peak-RSS reading.

Every figure is printed next to a baseline measured in the same run, as a ratio: these machines are
shared and noisy, so absolute numbers move from run to run while ratios mostly do not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.pg` finds or starts PostgreSQL for the tests; reuse it
    sys.path.insert(0, str(ROOT))

from tests import pg  # noqa: E402

DATABASES = ("sqlite", "postgresql")
#: Credits granted to each benchmark organization: enough that no benchmark ever runs one dry.
PLENTY = "1000000000"
INFERENCE = {"input_tokens": "1200", "output_tokens": "300"}


@dataclass(frozen=True)
class Result:
    """One benchmark figure against its same-run baseline and its target."""

    name: str
    figure: float
    baseline: float
    unit: str
    target: float
    #: True when a smaller ratio is better (e.g. peak RSS growth, p99 latency against a bound).
    lower_is_better: bool = False
    note: str = ""
    #: False when the run's correctness check failed: the figure does not count.
    valid: bool = True

    @property
    def ratio(self) -> float:
        return self.figure / self.baseline if self.baseline else float("inf")

    @property
    def passed(self) -> bool:
        if not self.valid:
            return False
        return self.ratio <= self.target if self.lower_is_better else self.ratio >= self.target

    def verdict(self) -> str:
        if not self.valid:
            return "INVALID (the run's correctness check failed)"
        if self.passed:
            return "PASS"
        if self.lower_is_better:
            return f"MISS ({self.ratio / self.target:.2f}x over the bound)"
        return f"MISS (reaches {self.ratio / self.target:.0%} of the target)"

    def summary(self) -> str:
        sign = "<=" if self.lower_is_better else ">="
        return (
            f"{self.name:<44} {self.figure:>12,.1f} {self.unit:<9} baseline {self.baseline:>12,.1f}"
            f"  ratio {self.ratio:6.3f}x  target {sign} {self.target:g}x  {self.verdict()}"
        )


RESULTS: list[Result] = []


def report(result: Result, baseline_label: str, figure_label: str) -> Result:
    """Print one figure, its baseline, the ratio, the target and PASS/MISS; remember it for run.py."""
    sign = "<=" if result.lower_is_better else ">="
    print(f"  {figure_label:<34}: {result.figure:14,.1f} {result.unit}")
    print(f"  {baseline_label:<34}: {result.baseline:14,.1f} {result.unit}")
    print(
        f"  {'ratio':<34}: {result.ratio:14.3f}x   target {sign} {result.target:g}x   "
        f"{result.verdict()}"
    )
    if result.note:
        print(f"  {'':<34}  ({result.note})")
    RESULTS.append(result)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``creditmeter ARGS`` against the database at ``url``."""
    return subprocess.run(
        [sys.executable, "-m", "creditmeter.cli.main", *args],
        env={**os.environ, "CREDITMETER_DATABASE_URL": url, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=False,
    )


@contextlib.contextmanager
def pg_admin() -> Iterator[str]:
    """The admin URL of a reachable PostgreSQL server (127.0.0.1:5432, or a throwaway cluster)."""
    with pg.server() as admin:
        yield admin


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    """A SQLAlchemy URL of an empty scratch database: a SQLite file in a temporary directory or a
    uniquely named PostgreSQL database, removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="creditmeter-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'creditmeter.db'}"
        return
    with pg_admin() as admin, pg.scratch_database(admin) as url:
        yield url


@dataclass
class Server:
    base: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def serve(url: str, workers: int = 1, worker: bool = False) -> Iterator[Server]:
    """``creditmeter serve --no-access-log`` on a free port (``--no-worker`` unless ``worker``),
    stopped with SIGINT (then SIGKILL) afterwards."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w+b", prefix="creditmeter-serve-", suffix=".log") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "creditmeter.cli.main",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--no-access-log",
                *([] if worker else ["--no-worker"]),
            ],
            env={**os.environ, "CREDITMETER_DATABASE_URL": url},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(f"http://127.0.0.1:{port}", proc, Path(log.name))
        try:
            _wait_ready(server)
            yield server
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.base}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"creditmeter serve did not start:\n{server.log.read_text()[-3000:]}")


def operator_key(url: str) -> str:
    """A new operator key (``creditmeter api-key create --operator`` prints only the secret)."""
    done = cli(url, "api-key", "create", "--operator", "--name", "bench")
    if done.returncode != 0:
        raise RuntimeError(f"api-key create failed: {done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def create_organizations(base: str, key: str, count: int, credits: str = PLENTY) -> list[str]:
    """``count`` organizations, each granted ``credits``, through the API; returns their ids."""
    headers = {"Authorization": f"Bearer {key}"}
    ids = []
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for i in range(count):
            r = client.post("/v1/organizations", json={"name": f"bench org {i}"})
            r.raise_for_status()
            org_id = r.json()["id"]
            g = client.post(
                f"/v1/organizations/{org_id}/grants",
                json={"credits": credits, "source": "purchase", "reason": "benchmark"},
            )
            g.raise_for_status()
            ids.append(org_id)
    return ids


def verify(url: str) -> tuple[bool, str]:
    """``creditmeter verify``: (exit code 0, its output)."""
    done = cli(url, "verify")
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def sql_scalar(url: str, sql: str) -> int:
    """One integer from the benchmark's database, read with the raw driver."""
    if url.startswith("sqlite"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(url.split("///", 1)[1])) as conn:
            return int(conn.execute(sql).fetchone()[0] or 0)
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0] or 0) if row else 0


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's --workers children), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(peak RSS, current RSS) of one process in KiB: ``VmHWM`` and ``VmRSS`` of /proc/PID/status
    (psutil has no peak figure on Linux, so it is not needed)."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmHWM", "VmRSS"}:
            fields[key] = int(value.split()[0])
    return fields.get("VmHWM", 0), fields.get("VmRSS", 0)


def peak_kib(pid: int) -> tuple[int, int]:
    """(peak RSS, current RSS) summed over a server process and its children, in KiB."""
    peak = current = 0
    for p in tree_pids(pid):
        hwm, rss = memory_kib(p)
        peak += hwm
        current += rss
    return peak, current


def describe_machine() -> str:
    cpus = os.cpu_count()
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return f"{cpus} CPUs, load average {load}, Python {sys.version.split()[0]}"


def parse_databases(value: str) -> Sequence[str]:
    if value == "both":
        return DATABASES
    if value not in DATABASES:
        raise SystemExit(f"--database must be sqlite, postgresql or both, not {value!r}")
    return (value,)
