"""A soak of batched ingest over HTTP: does the server stay as fast, and as small, as its tables grow?

One ``creditmeter serve`` process (one worker) on a scratch database (a SQLite file or a PostgreSQL
database), 100 funded organizations, then N usage events (default 10,000,000; ``--quick`` 200,000) sent
as ``POST /v1/usage/batch`` bodies of 5,000 events by two client threads over keep-alive connections,
the bodies generated as the run goes (the same cost for every window, so it cancels out of the ratio).
The run is cut into ten windows of N/10 events each.

Figures, each against a baseline measured in the same run by the same server:
- throughput: events/s of the last window (the last 1M of 10M) against the first window (the first 1M).
  Target: at least 0.9x (ingest flat with table size: no lookup reads an organization's history, no
  cache grows with the tables).
- CPU per event (a second line, steadier than wall time on a shared machine): CPU seconds the server
  process and the database spent per event in the last window against the first (on PostgreSQL the
  CPU of every backend of the benchmark's database, read from /proc). Same target as throughput.
- peak RSS: the server's peak resident memory (``VmHWM``) after the whole run against its peak after
  the first window. Target: at most 1.2x.

Afterwards the run is checked: every event answered ``applied``, ``usage_events`` holds exactly N rows,
the credits debited equal the credits the answers reported, and ``creditmeter verify`` exits 0. The
events/s of every window are printed, so a slow drift shows even when the end points pass.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from benchmarks import common
from benchmarks.ingest_http import check
from creditmeter.kit.credits import parse_credits

BATCH = 5_000
ORGS = 100
WINDOWS = 10
THREADS = 2
FLAT_TARGET = 0.9
RSS_TARGET = 1.2


def body(org_ids: list[str], first: int, count: int, seed: int) -> bytes:
    """Events ``first..first+count-1``: a random organization each, token counts from a few hundred
    shapes (so pricing sees distinct shapes, as real traffic does)."""
    rng = random.Random(seed * 1_000_003 + first)
    return orjson.dumps(
        {
            "events": [
                {
                    "id": f"s{i}",
                    "organization": org_ids[rng.randrange(len(org_ids))],
                    "operation": "inference",
                    "quantities": {
                        "input_tokens": str(100 * rng.randint(1, 20)),
                        "output_tokens": str(50 * rng.randint(1, 10)),
                    },
                }
                for i in range(first, first + count)
            ]
        }
    )


class Tally:
    """What the answers said, summed as they arrive (nothing kept per event)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, int] = {}
        self.credits = 0

    def add(self, raw: bytes) -> None:
        statuses: dict[str, int] = {}
        credits = 0
        for result in orjson.loads(raw)["results"]:
            statuses[result["status"]] = statuses.get(result["status"], 0) + 1
            if "credits" in result:
                credits += parse_credits(result["credits"])
        with self.lock:
            for status, count in statuses.items():
                self.statuses[status] = self.statuses.get(status, 0) + count
            self.credits += credits


def window(base: str, key: str, org_ids: list[str], first: int, last: int, tally: Tally) -> float:
    """Send events ``first..last-1`` from THREADS keep-alive clients; the seconds it took."""
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for start in range(first, last, BATCH):
        work.put(start)
    errors: list[BaseException] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def client() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=3600) as http:
            while not errors:
                try:
                    start = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    r = http.post(
                        "/v1/usage/batch",
                        content=body(org_ids, start, min(BATCH, last - start), seed=7),
                    )
                    r.raise_for_status()
                    tally.add(r.content)
                except BaseException as exc:
                    errors.append(exc)
                    raise

    pool = [threading.Thread(target=client) for _ in range(THREADS)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise RuntimeError(f"ingest failed: {errors[0]!r}")
    return time.perf_counter() - t0


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings (a process that started in between counts whole: a
    connection the pool opened during the window)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def busy_pids(url: str, server_pid: int) -> list[int]:
    """The server's processes and, on PostgreSQL, the backends connected to its database."""
    pids = common.tree_pids(server_pid)
    if url.startswith("postgresql"):
        import psycopg

        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(conninfo) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchall()
        pids += [int(r[0]) for r in rows]
    return pids


def run_one(kind: str, n: int) -> list[common.Result]:
    size = n // WINDOWS
    rates: list[float] = []
    cpu: list[float] = []  # CPU seconds per event of each window
    db_cpu: list[float] = []  # of which the database backends' (PostgreSQL)
    tally = Tally()
    with common.database(kind) as url, common.serve(url, workers=1) as server:
        key = common.operator_key(url)
        org_ids = common.create_organizations(server.base, key, ORGS)
        started = time.perf_counter()
        for w in range(WINDOWS):
            server_pids = common.tree_pids(server.pid)
            before = cpu_seconds(busy_pids(url, server.pid))
            seconds = window(server.base, key, org_ids, w * size, (w + 1) * size, tally)
            after = cpu_seconds(busy_pids(url, server.pid))
            rates.append(size / seconds)
            cpu.append(spent(before, after) / size)
            backends = {p for p in after if p not in server_pids}
            db_cpu.append(spent(before, {p: c for p, c in after.items() if p in backends}) / size)
            if w == 0:
                peak_first = common.peak_kib(server.pid)[0]
            print(
                f"  window {w + 1:>2}/{WINDOWS}: events {w * size:>11,}..{(w + 1) * size:,}  "
                f"{rates[-1]:>9,.0f} events/s  {cpu[-1] * 1e6:6.1f} CPU µs/event "
                f"(database {db_cpu[-1] * 1e6:5.1f})  "
                f"peak RSS {common.peak_kib(server.pid)[0] / 1024:,.0f} MiB  "
                f"({time.perf_counter() - started:,.0f} s)",
                flush=True,
            )
        peak_last = common.peak_kib(server.pid)[0]
        problems = check(url, n, ORGS, tally.statuses, tally.credits)
    print(
        f"soak, {kind}: {n:,} events over HTTP, {ORGS} organizations, batches of {BATCH:,}, "
        f"{THREADS} client threads, one server worker process; {WINDOWS} windows of {size:,} events"
    )
    for p in problems:
        print(f"  !! {p}")
    note = (
        "checked: all applied, event count, credits, verify exit 0"
        if not problems
        else "CORRECTNESS CHECK FAILED"
    )
    flat = common.report(
        common.Result(
            f"soak {kind} last/first {size:,} (events/s)",
            rates[-1],
            rates[0],
            "events/s",
            FLAT_TARGET,
            note=note,
            valid=not problems,
        ),
        f"events/s of the first {size:,}",
        f"events/s of the last {size:,}",
    )
    steady = common.report(
        common.Result(
            f"soak {kind} CPU/event first/last {size:,} (x)",
            1 / cpu[-1],
            1 / cpu[0],
            "events/CPU s",
            FLAT_TARGET,
            note=note,
            valid=not problems,
        ),
        f"events per CPU second, first {size:,}",
        f"events per CPU second, last {size:,}",
    )
    memory = common.report(
        common.Result(
            f"soak {kind} peak RSS {n:,} vs {size:,} (MiB)",
            peak_last / 1024,
            peak_first / 1024,
            "MiB",
            RSS_TARGET,
            lower_is_better=True,
            note=note,
            valid=not problems,
        ),
        f"peak RSS after {size:,} events",
        f"peak RSS after {n:,} events",
    )
    return [flat, steady, memory]


def main(argv: list[str] | None = None) -> list[common.Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=None, help="default 10,000,000")
    parser.add_argument("--quick", action="store_true", help="200,000 events")
    parser.add_argument("--database", default="both", help="sqlite, postgresql or both")
    args = parser.parse_args(argv)
    n = args.events or (200_000 if args.quick else 10_000_000)
    if n % (WINDOWS * BATCH):
        parser.error(f"--events must be a multiple of {WINDOWS * BATCH:,}")
    results: list[common.Result] = []
    for kind in common.parse_databases(args.database):
        results += run_one(kind, n)
    return results


if __name__ == "__main__":
    main()
