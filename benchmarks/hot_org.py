"""One hot organization: 8 concurrent writers all sending usage for the same organization, versus the same
load spread over 8 organizations (writer i sends for organization i), against one server in one run.

Each writer is a thread with its own keep-alive connection sending ``POST /v1/usage/batch`` bodies of
``--batch`` events (default 100) one after another. Every organization's debits serialize on its balance
row (PostgreSQL row lock; on SQLite every write transaction already serializes on the database), so the
question is whether one busy organization costs more than eight: lock waits, retries, or a longer
critical section per organization. The two loads alternate twice (hot, spread, spread, hot) so drift on a
shared machine falls on both alike.

Target: the hot organization at least 0.8x the spread load's events/s.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from benchmarks import common

WRITERS = 8


def load(
    base: str, key: str, org_for_writer: list[str], batches: int, batch: int, tag: str
) -> tuple[float, int]:
    """Events/s of WRITERS threads sending ``batches`` batches each; and how many were applied."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    bodies = [
        [
            orjson.dumps(
                {
                    "events": [
                        {
                            "id": f"{tag}-{w}-{b}-{i}",
                            "organization": org_for_writer[w],
                            "operation": "inference",
                            "quantities": common.INFERENCE,
                        }
                        for i in range(batch)
                    ]
                }
            )
            for b in range(batches)
        ]
        for w in range(WRITERS)
    ]
    applied = [0] * WRITERS
    errors: list[BaseException] = []
    barrier = threading.Barrier(WRITERS + 1)

    def writer(w: int) -> None:
        try:
            with httpx.Client(base_url=base, headers=headers, timeout=600) as http:
                http.get("/healthz")  # open the connection before the clock starts
                barrier.wait()
                for body in bodies[w]:
                    r = http.post("/v1/usage/batch", content=body)
                    r.raise_for_status()
                    applied[w] += sum(
                        1 for x in orjson.loads(r.content)["results"] if x["status"] == "applied"
                    )
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"hot_org writer failed: {errors[0]!r}")
    return WRITERS * batches * batch / elapsed, sum(applied)


def run_one(kind: str, batches: int, batch: int, workers: int) -> common.Result:
    with common.database(kind) as url, common.serve(url, workers=workers) as server:
        key = common.operator_key(url)
        org_ids = common.create_organizations(server.base, key, WRITERS)
        hot_orgs = [org_ids[0]] * WRITERS
        load(server.base, key, org_ids, 2, batch, "warm")
        runs: dict[str, list[float]] = {"hot": [], "spread": []}
        applied = 0
        for n, name in enumerate(("hot", "spread", "spread", "hot")):
            rate, ok = load(
                server.base, key, hot_orgs if name == "hot" else org_ids, batches, batch, f"r{n}"
            )
            runs[name].append(rate)
            applied += ok
        expected = 4 * WRITERS * batches * batch + 2 * WRITERS * batch
        recorded = common.sql_scalar(url, "SELECT count(*) FROM usage_events")
        verified, output = common.verify(url)
    hot = sum(runs["hot"]) / 2
    spread = sum(runs["spread"]) / 2
    print(
        f"hot organization, {kind}: {WRITERS} writer threads x {batches} batches of {batch} events, "
        f"{workers} server worker process(es); runs hot/spread/spread/hot: "
        + ", ".join(f"{r:,.0f}" for r in (runs["hot"][0], *runs["spread"], runs["hot"][1]))
        + " events/s"
    )
    problems = []
    if recorded != expected or applied != 4 * WRITERS * batches * batch:
        problems.append(f"{recorded:,} events recorded, {applied:,} applied, expected {expected:,}")
    if not verified:
        problems.append(f"creditmeter verify failed: {output[-2000:]}")
    result = common.report(
        common.Result(
            f"hot_org {kind} (events/s)",
            hot,
            spread,
            "events/s",
            0.8,
            note="checked: event count, verify exit 0" if not problems else "CHECK FAILED",
            valid=not problems,
        ),
        "same load over 8 organizations",
        "one hot organization",
    )
    for p in problems:
        print(f"  !! {p}")
    return result


def main(argv: list[str] | None = None) -> list[common.Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=None, help="per writer; default 60")
    parser.add_argument("--quick", action="store_true", help="15 batches per writer")
    parser.add_argument("--batch", type=int, default=100, help="events per batch")
    parser.add_argument("--database", default="both", help="sqlite, postgresql or both")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    args = parser.parse_args(argv)
    batches = args.batches or (15 if args.quick else 60)
    return [
        run_one(kind, batches, args.batch, args.workers)
        for kind in common.parse_databases(args.database)
    ]


if __name__ == "__main__":
    main()
