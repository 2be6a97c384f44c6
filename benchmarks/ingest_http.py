"""Batched usage ingest over HTTP against a real ``creditmeter serve`` process, versus a raw driver baseline.

creditmeter side: a server process on a scratch database (a SQLite file or a PostgreSQL database), 100
organizations with plenty of credits, then N usage events (default 1,000,000) sent as
``POST /v1/usage/batch`` bodies of 5,000 events by a few client threads over keep-alive connections.
Every event is validated, priced by the rate card, checked for a duplicate id, debited from the
organization's lots through the double-entry journal and recorded, all in the request's transaction.

Baseline, measured in the same run on the same machine and disk: the least a metering store could do,
with the driver directly, no HTTP, no JSON, no pricing, no journal and no idempotency index.
- SQLite (``sqlite3``, WAL, synchronous=NORMAL like the server): per event, INSERT the event and
  ``UPDATE balances SET available = available - ? WHERE org = ? AND available >= ?``; 1,000 events per
  transaction.
- PostgreSQL (``psycopg``): per 1,000 events, one ``executemany`` INSERT of the events plus one guarded
  UPDATE per organization, in one transaction.

Targets: at least 0.6x the baseline on SQLite and 0.5x on PostgreSQL. Afterwards the run is
checked: every event answered ``applied``, ``usage_events`` holds exactly N rows, the credits debited
equal the credits the responses reported, and ``creditmeter verify`` exits 0.
"""

from __future__ import annotations

import argparse
import queue
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from benchmarks import common
from creditmeter.kit.credits import parse_credits

BATCH = 5_000
BASELINE_TXN = 1_000
ORGS = 100
#: Micro-credits the baseline debits per event (the value does not change its speed).
BASELINE_CREDITS = 3_600
TARGETS = {"sqlite": 0.6, "postgresql": 0.5}


def plan(n: int, orgs: int, seed: int = 11) -> list[int]:
    """Which organization (by index) each event belongs to: uniformly random, reproducible."""
    rng = random.Random(seed)
    return [rng.randrange(orgs) for _ in range(n)]


def _quantities_json() -> str:
    return orjson.dumps(common.INFERENCE).decode()


def sqlite_baseline(events: list[int], orgs: int) -> float:
    """Seconds for the raw sqlite3 baseline over ``events``."""
    quantities = _quantities_json()
    with tempfile.TemporaryDirectory(prefix="creditmeter-baseline-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "baseline.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE balances (org INTEGER PRIMARY KEY, available INTEGER NOT NULL)")
        conn.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, org INTEGER NOT NULL, event_id TEXT "
            "NOT NULL, operation TEXT NOT NULL, quantities TEXT NOT NULL, credits INTEGER NOT NULL)"
        )
        conn.executemany("INSERT INTO balances VALUES (?, ?)", [(i, 10**18) for i in range(orgs)])
        start = time.perf_counter()
        for first in range(0, len(events), BASELINE_TXN):
            conn.execute("BEGIN IMMEDIATE")
            for i in range(first, min(first + BASELINE_TXN, len(events))):
                org = events[i]
                conn.execute(
                    "INSERT INTO events (org, event_id, operation, quantities, credits) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (org, f"e{i}", "inference", quantities, BASELINE_CREDITS),
                )
                conn.execute(
                    "UPDATE balances SET available = available - ? WHERE org = ? AND available >= ?",
                    (BASELINE_CREDITS, org, BASELINE_CREDITS),
                )
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        conn.close()
    assert count == len(events), (count, len(events))
    return elapsed


def postgres_baseline(events: list[int], orgs: int) -> float:
    """Seconds for the raw psycopg baseline over ``events`` (in its own scratch database)."""
    import psycopg

    quantities = _quantities_json()
    with common.database("postgresql") as url:
        conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(conninfo) as conn:
            conn.execute(
                "CREATE TABLE balances (org INTEGER PRIMARY KEY, available BIGINT NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE events (id BIGSERIAL PRIMARY KEY, org INTEGER NOT NULL, event_id TEXT "
                "NOT NULL, operation TEXT NOT NULL, quantities JSONB NOT NULL, credits BIGINT NOT "
                "NULL)"
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO balances VALUES (%s, %s)", [(i, 10**18) for i in range(orgs)]
                )
            conn.commit()
            start = time.perf_counter()
            for first in range(0, len(events), BASELINE_TXN):
                chunk = range(first, min(first + BASELINE_TXN, len(events)))
                totals: dict[int, int] = defaultdict(int)
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO events (org, event_id, operation, quantities, credits) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        [
                            (events[i], f"e{i}", "inference", quantities, BASELINE_CREDITS)
                            for i in chunk
                        ],
                    )
                    for i in chunk:
                        totals[events[i]] += BASELINE_CREDITS
                    for org in sorted(totals):
                        cur.execute(
                            "UPDATE balances SET available = available - %s "
                            "WHERE org = %s AND available >= %s",
                            (totals[org], org, totals[org]),
                        )
                conn.commit()
            elapsed = time.perf_counter() - start
            row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    assert row[0] == len(events), (row, len(events))
    return elapsed


def batch_bodies(org_ids: list[str], events: list[int], batch: int, prefix: str) -> list[bytes]:
    """The request bodies, encoded before the clock starts (the client's JSON is not the server's
    cost)."""
    bodies = []
    for first in range(0, len(events), batch):
        bodies.append(
            orjson.dumps(
                {
                    "events": [
                        {
                            "id": f"{prefix}{i}",
                            "organization": org_ids[events[i]],
                            "operation": "inference",
                            "quantities": common.INFERENCE,
                        }
                        for i in range(first, min(first + batch, len(events)))
                    ]
                }
            )
        )
    return bodies


def send(
    base: str, key: str, bodies: list[bytes], threads: int
) -> tuple[float, list[bytes], list[float]]:
    """POST every body to /v1/usage/batch from ``threads`` keep-alive clients; (seconds, responses,
    seconds each request took, in request order)."""
    work: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
    for item in enumerate(bodies):
        work.put(item)
    responses: list[bytes] = [b""] * len(bodies)
    took: list[float] = [0.0] * len(bodies)
    errors: list[BaseException] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def client() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=3600) as http:
            while not errors:
                try:
                    index, body = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    t0 = time.perf_counter()
                    r = http.post("/v1/usage/batch", content=body)
                    took[index] = time.perf_counter() - t0
                    r.raise_for_status()
                    responses[index] = r.content
                except BaseException as exc:
                    errors.append(exc)
                    raise

    pool = [threading.Thread(target=client) for _ in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"ingest failed: {errors[0]!r}")
    return elapsed, responses, took


def trend(took: list[float], batch: int, threads: int) -> str:
    """Throughput of the first and the last tenth of the requests: does ingest slow down as the
    tables grow?"""
    tenth = max(1, len(took) // 10)
    first, last = sum(took[:tenth]), sum(took[-tenth:])
    return (
        f"first tenth of the batches {tenth * batch * threads / first:,.0f} events/s, "
        f"last tenth {tenth * batch * threads / last:,.0f} events/s"
    )


def tally(responses: list[bytes]) -> tuple[dict[str, int], int]:
    """Statuses counted and the micro-credits the responses reported."""
    statuses: dict[str, int] = defaultdict(int)
    credits = 0
    for raw in responses:
        for result in orjson.loads(raw)["results"]:
            statuses[result["status"]] += 1
            if "credits" in result:
                credits += parse_credits(result["credits"])
    return dict(statuses), credits


def check(url: str, n: int, orgs: int, statuses: dict[str, int], credits: int) -> list[str]:
    """Problems found after the run (an empty list: every event applied exactly once)."""
    problems = []
    if statuses != {"applied": n}:
        problems.append(f"statuses {statuses}, expected {n:,} applied")
    count = common.sql_scalar(url, "SELECT count(*) FROM usage_events")
    if count != n:
        problems.append(f"usage_events holds {count:,} rows, expected {n:,}")
    recorded = common.sql_scalar(url, "SELECT sum(credits_micros) FROM usage_events")
    available = common.sql_scalar(
        url,
        "SELECT sum(lots_micros - arrears_micros - held_micros) FROM balances "
        "WHERE environment = 'live'",
    )
    granted = orgs * parse_credits(common.PLENTY)
    if not recorded == credits == granted - available:
        problems.append(
            f"credits: responses {credits}, events {recorded}, debited {granted - available}"
        )
    ok, output = common.verify(url)
    if not ok:
        problems.append(f"creditmeter verify failed:\n{output}")
    return problems


def run_one(
    kind: str, n: int, batch: int, threads: int, workers: int
) -> common.Result:  # one database
    events = plan(n, ORGS)
    baseline = sqlite_baseline if kind == "sqlite" else postgres_baseline
    base_label = "raw sqlite3 baseline" if kind == "sqlite" else "raw psycopg baseline"
    before = baseline(events, ORGS)
    with common.database(kind) as url, common.serve(url, workers=workers) as server:
        key = common.operator_key(url)
        org_ids = common.create_organizations(server.base, key, ORGS)
        bodies = batch_bodies(org_ids, events, batch, "e")
        elapsed, responses, took = send(server.base, key, bodies, threads)
        statuses, credits = tally(responses)
        problems = check(url, n, ORGS, statuses, credits)
    after = baseline(events, ORGS)
    base_s = (before + after) / 2
    print(
        f"ingest over HTTP, {kind}: {n:,} events over {ORGS} organizations, batches of {batch:,}, "
        f"{threads} client thread(s) with keep-alive, {workers} server worker process(es); "
        f"baseline {BASELINE_TXN:,} events per transaction, run before and after (mean; "
        f"{n / before:,.0f} and {n / after:,.0f} events/s)"
    )
    print(f"  {trend(took, batch, threads)}")
    result = common.report(
        common.Result(
            f"ingest_http {kind} (events/s)",
            n / elapsed,
            n / base_s,
            "events/s",
            TARGETS[kind],
            note="checked: all applied, event count, credits, verify exit 0"
            if not problems
            else "CORRECTNESS CHECK FAILED",
            valid=not problems,
        ),
        base_label,
        "creditmeter POST /v1/usage/batch",
    )
    for p in problems:
        print(f"  !! {p}")
    return result


def main(argv: list[str] | None = None) -> list[common.Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=None, help="default 1,000,000")
    parser.add_argument("--quick", action="store_true", help="100,000 events")
    parser.add_argument("--database", default="both", help="sqlite, postgresql or both")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--threads", type=int, default=2, help="client threads")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    args = parser.parse_args(argv)
    n = args.events or (100_000 if args.quick else 1_000_000)
    results = []
    for kind in common.parse_databases(args.database):
        results.append(run_one(kind, n, args.batch, args.threads, args.workers))
    return results


if __name__ == "__main__":
    main()
