"""Ledger write path on SQLite: debits through ``ledger.service.debit`` versus a raw ``sqlite3`` baseline.

Both sides process the same debits spread over the same organizations, 1,000 per transaction. The
baseline inserts one row per debit and does a guarded balance update (the least a ledger could do);
creditmeter plans each debit over lots in burn order and writes a balanced journal transaction with its
postings, lot remainders and the materialized balance. The figure is debits per second and the ratio
against the baseline measured in the same run (these machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.kit.migrate import upgrade
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.orgs import service as orgs

TXN_SIZE = 1_000


def _debits(n: int, orgs_count: int, seed: int = 7) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randrange(orgs_count), rng.randrange(1, 5_000_000)) for _ in range(n)]


def baseline(path: Path, debits: list[tuple[int, int]], orgs_count: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE balances (org INTEGER PRIMARY KEY, available INTEGER NOT NULL)")
    conn.execute(
        "CREATE TABLE debits (id INTEGER PRIMARY KEY, org INTEGER NOT NULL, amount INTEGER NOT NULL)"
    )
    conn.executemany("INSERT INTO balances VALUES (?, ?)", [(i, 10**15) for i in range(orgs_count)])
    start = time.perf_counter()
    for i in range(0, len(debits), TXN_SIZE):
        conn.execute("BEGIN IMMEDIATE")
        for org, amount in debits[i : i + TXN_SIZE]:
            conn.execute("INSERT INTO debits (org, amount) VALUES (?, ?)", (org, amount))
            conn.execute(
                "UPDATE balances SET available = available - ? WHERE org = ? AND available >= ?",
                (amount, org, amount),
            )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def creditmeter(
    path: Path, debits: list[tuple[int, int]], orgs_count: int, *, batched: bool
) -> float:
    url = f"sqlite:///{path}"
    upgrade(url)
    db = Database(url)
    now = clock.now()
    with db.write() as s:
        ids = [orgs.create_organization(s, f"org {i}", None, now).id for i in range(orgs_count)]
        for org_id in ids:
            for source in (LotSource.PLAN, LotSource.PURCHASE):
                ledger.grant(
                    s,
                    org_id,
                    "live",
                    ledger.GrantRequest(10**15, source, "bench", now, None),
                    now,
                )
    start = time.perf_counter()
    for i in range(0, len(debits), TXN_SIZE):
        with db.write() as s:
            if batched:
                by_org: dict[int, list[ledger.DebitRequest]] = defaultdict(list)
                for org, amount in debits[i : i + TXN_SIZE]:
                    by_org[org].append(ledger.DebitRequest(amount, "inference", "bench"))
                for org, requests in by_org.items():
                    ledger.debit_many(s, ids[org], "live", requests, now)
            else:
                for org, amount in debits[i : i + TXN_SIZE]:
                    ledger.debit(s, ids[org], "live", amount, "inference", "bench", now)
    elapsed = time.perf_counter() - start
    db.dispose()
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--debits", type=int, default=50_000)
    parser.add_argument("--orgs", type=int, default=100)
    args = parser.parse_args(argv)
    debits = _debits(args.debits, args.orgs)
    with tempfile.TemporaryDirectory() as tmp:
        base = baseline(Path(tmp) / "baseline.db", debits, args.orgs)
        single = creditmeter(Path(tmp) / "single.db", debits, args.orgs, batched=False)
        batched = creditmeter(Path(tmp) / "batched.db", debits, args.orgs, batched=True)
    n = len(debits)
    print(f"ledger debit, SQLite, {n:,} debits over {args.orgs} organizations, {TXN_SIZE:,} per tx")
    print(f"  raw sqlite3 baseline          : {n / base:12,.0f} debits/s")
    print(f"  ledger.debit, one by one      : {n / single:12,.0f} debits/s  ({base / single:.3f}x)")
    print(
        f"  ledger.debit_many, per org    : {n / batched:12,.0f} debits/s  ({base / batched:.3f}x)"
    )


if __name__ == "__main__":
    main()
