"""Peak memory of the server as usage accumulates: the peak RSS (``VmHWM``) of a ``creditmeter serve``
process after a first checkpoint of ingested events and again after ten times as many.

One server worker process (so the figure is one process's), one client sending ``POST
/v1/usage/batch`` bodies of 5,000 events over 100 organizations, generated as it goes. The server must
not keep anything per event in memory (caches that grow with the tables, ORM identity maps, result
lists), so the peak after 10x the events should stay within 20% of the peak after the first checkpoint.
The baseline is the server itself at the first checkpoint, in the same run.

Scales: the issue's figures are 1M and 10M events (``--full``; hours on SQLite at the ingest rates in
docs/performance.md). The default is 100k and 1M, ``--quick`` 20k and 200k.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from benchmarks import common

BATCH = 5_000
ORGS = 100
TARGET = 1.2


def _body(org_ids: list[str], first: int, count: int) -> bytes:
    return orjson.dumps(
        {
            "events": [
                {
                    "id": f"m{i}",
                    "organization": org_ids[i % len(org_ids)],
                    "operation": "inference",
                    "quantities": common.INFERENCE,
                }
                for i in range(first, first + count)
            ]
        }
    )


def ingest(http: httpx.Client, org_ids: list[str], first: int, last: int) -> float:
    """Send events ``first..last-1``; returns the events/s."""
    start = time.perf_counter()
    for i in range(first, last, BATCH):
        r = http.post("/v1/usage/batch", content=_body(org_ids, i, min(BATCH, last - i)))
        r.raise_for_status()
    return (last - first) / (time.perf_counter() - start)


def peak_kib(pid: int) -> tuple[int, int]:
    """(peak RSS, current RSS) summed over the server process and any children, in KiB."""
    peak = current = 0
    for p in common.tree_pids(pid):
        hwm, rss = common.memory_kib(p)
        peak += hwm
        current += rss
    return peak, current


def run_one(kind: str, first: int, second: int) -> common.Result:
    with common.database(kind) as url, common.serve(url, workers=1) as server:
        key = common.operator_key(url)
        org_ids = common.create_organizations(server.base, key, ORGS)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        with httpx.Client(base_url=server.base, headers=headers, timeout=3600) as http:
            startup = peak_kib(server.pid)
            rate1 = ingest(http, org_ids, 0, first)
            at_first = peak_kib(server.pid)
            rate2 = ingest(http, org_ids, first, second)
            at_second = peak_kib(server.pid)
        count = common.sql_scalar(url, "SELECT count(*) FROM usage_events")
    print(
        f"peak RSS of the server, {kind}: one worker process, batches of {BATCH:,} over {ORGS} "
        f"organizations; after start {startup[0] / 1024:,.0f} MiB; ingest ran at {rate1:,.0f} then "
        f"{rate2:,.0f} events/s; current RSS {at_first[1] / 1024:,.0f} -> "
        f"{at_second[1] / 1024:,.0f} MiB; {count:,} events recorded"
    )
    return common.report(
        common.Result(
            f"rss {kind} peak after {second:,} (MiB)",
            at_second[0] / 1024,
            at_first[0] / 1024,
            "MiB",
            TARGET,
            lower_is_better=True,
            note="flat means within 20%" if count == second else "EVENT COUNT WRONG",
            valid=count == second,
        ),
        f"peak RSS after {first:,} events",
        f"peak RSS after {second:,} events",
    )


def main(argv: list[str] | None = None) -> list[common.Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="20k and 200k events")
    scale.add_argument("--full", action="store_true", help="1M and 10M events (the issue's)")
    parser.add_argument("--events", type=int, default=None, help="first checkpoint (x10 second)")
    parser.add_argument("--database", default="sqlite", help="sqlite, postgresql or both")
    args = parser.parse_args(argv)
    first = args.events or (20_000 if args.quick else 1_000_000 if args.full else 100_000)
    return [run_one(kind, first, first * 10) for kind in common.parse_databases(args.database)]


if __name__ == "__main__":
    main()
