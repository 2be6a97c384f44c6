"""The monthly cycle close for many organizations, in-process, versus one raw aggregation query over the
same usage events.

creditmeter side: a scratch database (a SQLite file or a PostgreSQL database, migrated to head) with N
organizations (default 10,000; ``--quick`` 1,000), each with two projects, a sandbox card
(``4242424242424242``, so the charge succeeds) and a subscription started at 00:00 on the first day of
the closed month (October 2026): 70% ``standard``, 20% ``professional``, 10% ``enterprise`` with a
small allocation (10 credits, ``overage_in_arrears``), so some organizations end the month in arrears
and their close bills overage. Then M usage events (default 1,000,000; ``--quick`` 100,000) spread
uniformly over the organizations and over the month, through the batched ingest service in-process
(``metering.ingest.ingest``, 5,000 events per transaction, the clock frozen at the last event of each
batch): every event is priced, debited from the organization's lots through the journal and recorded,
exactly as ``POST /v1/usage/batch`` does. 88% inference, 11% data processing, 1% training, a few dozen
quantity shapes each; 80% of the events name a project.

The figure: with the clock at the boundary (2026-11-01 00:00 UTC), ``billing.cycle.run_due`` for all
organizations, as the worker runs it: statement, expiry (and overage), allocation, invoice and charge
for each, batched (chunks of ``cycle.CHUNK`` organizations, one transaction per step per
chunk). The baseline, in the same run on the same database: one aggregation query with the raw
driver, ``SELECT organization_id, operation, project_id, sum(credits_micros), count(*) FROM
usage_events WHERE occurred_at >= :start AND occurred_at < :end GROUP BY 1, 2, 3``, every row fetched, timed before and
after the close (mean). Target: the close takes at most 1.5x the query.

Afterwards the run is checked: every close returned without error; every organization has exactly one
invoice for the closed month and exactly one new plan lot effective at the boundary; the finalized
statements hold exactly the credits and events of the month; ``creditmeter verify`` exits 0. The time of
each close step, summed over the organizations, is printed too; ``--profile FILE`` runs the close under
cProfile (slower: a diagnostic, not the figure) and prints where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import random
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import distinct, event, func, select

from benchmarks import common
from creditmeter.billing import cycle
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.models import CycleClose, Invoice, UsageStatementLine
from creditmeter.billing.payments import methods as payment_methods
from creditmeter.billing.payments.provider import CardSource
from creditmeter.billing.payments.sandbox import SandboxProvider
from creditmeter.billing.plans import load_catalog
from creditmeter.billing.statements import OPERATION
from creditmeter.kit import clock
from creditmeter.kit.credits import MICROS_PER_CREDIT
from creditmeter.kit.db import Database, driver_timestamp
from creditmeter.kit.migrate import upgrade
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.models import Lot
from creditmeter.metering.domain import EventInput
from creditmeter.metering.ingest import IngestContext, ingest
from creditmeter.orgs import service as orgs
from creditmeter.pricing.ratecard import load_rate_card

#: The closed month, [START, BOUNDARY); the close runs with the clock at BOUNDARY.
START = datetime(2026, 10, 1, tzinfo=UTC)
BOUNDARY = datetime(2026, 11, 1, tzinfo=UTC)
TARGET = 1.5
BATCH = 5_000
#: Organizations created and subscribed per seeding transaction.
ORG_CHUNK = 200
PROJECTS = ("chatbot", "pipeline")
CARD = "4242424242424242"
QUERY = (
    "SELECT organization_id, operation, project_id, sum(credits_micros), count(*) "
    "FROM usage_events WHERE occurred_at >= {start} AND occurred_at < {end} GROUP BY 1, 2, 3"
)


def plan_of(i: int) -> subs.SubscriptionRequest:
    """70% standard, 20% professional, 10% enterprise (10 credits a month, no expiry, overage in
    arrears)."""
    kind = i % 10
    if kind == 9:
        return subs.SubscriptionRequest("enterprise", 10 * MICROS_PER_CREDIT, "never")
    return subs.SubscriptionRequest("professional" if kind >= 7 else "standard")


def seed_organizations(db: Database, n: int) -> list[str]:
    """``n`` organizations with two projects, a subscription from START and a default card."""
    catalog = load_catalog()
    ids: list[str] = []
    with clock.frozen_at(START):
        for first in range(0, n, ORG_CHUNK):
            with db.write() as session:
                for i in range(first, min(first + ORG_CHUNK, n)):
                    org = orgs.create_organization(session, f"bench org {i}", f"bench-{i}", START)
                    for name in PROJECTS:
                        orgs.create_project(session, org.id, name, START)
                    subs.subscribe(session, catalog, org.id, "live", plan_of(i), START)
                    ids.append(org.id)
        provider = SandboxProvider(db)
        card = CardSource(number=CARD, exp_month=12, exp_year=2030)
        for org_id in ids:
            payment_methods.add(db, provider, org_id, "live", card, True, START)
    return ids


def _shapes(rng: random.Random) -> list[tuple[str, dict[str, str]]]:
    """Weighted operation shapes: (operation, quantities), with repeats for the weights."""
    inference = [
        ("inference", {"input_tokens": str(rng.randint(200, 200_000)), "output_tokens": str(rng.randint(50, 40_000))})
        for _ in range(88)
    ]  # fmt: skip
    processing = [
        ("data_processing", {"cpu_seconds": str(rng.randint(60, 3_600)), "data_gb": str(rng.randint(1, 20))})
        for _ in range(11)
    ]  # fmt: skip
    training = [("training", {"gpu_seconds": "3600", "accelerator": "a100"})]
    return inference + processing + training


def events_of(
    org_ids: list[str], m: int, seed: int = 4
) -> Iterator[tuple[datetime, list[EventInput]]]:
    """Batches of BATCH events in time order over the month, each with the moment the clock shows
    when it is ingested (its last event's time)."""
    rng = random.Random(seed)
    shapes = _shapes(rng)
    span = (BOUNDARY - START).total_seconds() - 1
    for first in range(0, m, BATCH):
        batch = []
        at = START
        for k in range(first, min(first + BATCH, m)):
            at = START + timedelta(seconds=span * (k + 1) / m)
            operation, quantities = shapes[rng.randrange(len(shapes))]
            p = rng.random()
            batch.append(
                EventInput(
                    id=f"ev{k}",
                    organization=org_ids[rng.randrange(len(org_ids))],
                    operation=operation,
                    quantities=quantities,
                    project=PROJECTS[0] if p < 0.5 else PROJECTS[1] if p < 0.8 else None,
                    occurred_at=at,
                )
            )
        yield at, batch


def seed_usage(db: Database, org_ids: list[str], m: int) -> int:
    """Ingest ``m`` events through the batched ingest service; returns how many applied."""
    rate_card = load_rate_card()
    applied = 0
    for now, batch in events_of(org_ids, m):
        ctx = IngestContext("live", None, now, rate_card, timedelta(days=35), timedelta(0), "USD")
        with clock.frozen_at(now), db.write() as session:
            results = ingest(session, ctx, batch)
        applied += sum(1 for r in results if r.status == "applied")
    return applied


def raw_query(url: str) -> tuple[float, list[tuple[Any, ...]]]:
    """Seconds for the baseline aggregation with the raw driver, every row fetched; and the rows."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url.split("///", 1)[1])) as conn:
            sql = QUERY.format(start="?", end="?")
            args = (driver_timestamp("sqlite", START), driver_timestamp("sqlite", BOUNDARY))
            t0 = time.perf_counter()
            rows = conn.execute(sql, args).fetchall()
            return time.perf_counter() - t0, rows
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        sql = QUERY.format(start="%s", end="%s")
        t0 = time.perf_counter()
        rows = conn.execute(sql, (START, BOUNDARY)).fetchall()
        return time.perf_counter() - t0, rows


class StepClock:
    """Seconds spent in each close step, summed over the organizations (``after_step`` is called per
    close once its step's chunk transaction has committed, so the first close of a chunk carries the
    chunk's time; the charge step includes the charges, made before it is recorded, and the first
    step's share the gap between two chunks: the previous chunk's summary read)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def __call__(self, _item: cycle.Due, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] += now - self.last
        self.last = now

    def describe(self, closes: int) -> str:
        total = sum(self.seconds.values()) or 1.0
        return ", ".join(
            f"{step} {s / closes * 1000:.2f} ms ({s / total:.0%})"
            for step, s in self.seconds.items()
        )


class StatementCount:
    """Statements, commits (write transactions) and rollbacks (ended reads) the close sends to the database (SQLAlchemy engine events; the cost
    of a counter is noise next to a statement)."""

    def __init__(self, db: Database) -> None:
        self.statements = self.commits = self.rollbacks = 0
        self.engines = {db.engine, db.hot_engine}

    def _statement(self, *_args: Any) -> None:
        self.statements += 1

    def _commit(self, *_args: Any) -> None:
        self.commits += 1

    def _rollback(self, *_args: Any) -> None:
        self.rollbacks += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        for engine in self.engines:
            event.listen(engine, "before_cursor_execute", self._statement)
            event.listen(engine, "commit", self._commit)
            event.listen(engine, "rollback", self._rollback)
        try:
            yield
        finally:
            for engine in self.engines:
                event.remove(engine, "before_cursor_execute", self._statement)
                event.remove(engine, "commit", self._commit)
                event.remove(engine, "rollback", self._rollback)


def run_close(
    db: Database, profile: str | None
) -> tuple[float, list[cycle.CloseResult], StepClock, StatementCount]:
    catalog = load_catalog()
    steps = StepClock()
    count = StatementCount(db)
    profiler = cProfile.Profile() if profile else None
    with clock.frozen_at(BOUNDARY), count.counting():
        steps.last = start = time.perf_counter()
        if profiler:
            profiler.enable()
        results = cycle.run_due(db, BOUNDARY, catalog=catalog, after_step=steps)
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - start
    if profiler and profile:
        profiler.dump_stats(profile)
        stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
        print(f"  cProfile of the close (written to {profile}), top 25 by cumulative time:")
        stats.sort_stats("cumulative").print_stats(25)
        print("  top 25 by own time:")
        stats.sort_stats("tottime").print_stats(25)
    return elapsed, results, steps, count


def check(
    db: Database, url: str, n: int, m: int, results: list[cycle.CloseResult], rows: list[Any]
) -> list[str]:
    """Problems found after the close (an empty list: every organization closed once, cleanly)."""
    problems = []
    failed = [r for r in results if not r.ok]
    if len(results) != n or failed:
        problems.append(f"{len(results):,} closes ran, expected {n:,}; {len(failed):,} failed")
        problems += [f"  {r.due.organization_id}: {r.error}" for r in failed[:5]]
    with db.read() as session:
        invoices, invoiced = session.execute(
            select(func.count(Invoice.id), func.count(distinct(Invoice.organization_id))).where(
                Invoice.period_start == START
            )
        ).one()
        lots, allocated = session.execute(
            select(func.count(Lot.id), func.count(distinct(Lot.organization_id))).where(
                Lot.source == LotSource.PLAN.value, Lot.effective_at == BOUNDARY
            )
        ).one()
        stated, counted = session.execute(
            select(
                func.coalesce(func.sum(UsageStatementLine.credits_micros), 0),
                func.coalesce(func.sum(UsageStatementLine.event_count), 0),
            ).where(
                UsageStatementLine.period_start == START,
                UsageStatementLine.dimension == OPERATION,
            )
        ).one()
    if not invoices == invoiced == n:
        problems.append(
            f"{invoices:,} invoices for {invoiced:,} organizations, expected {n:,} each"
        )
    if not lots == allocated == n:
        problems.append(f"{lots:,} new plan lots for {allocated:,} organizations, expected {n:,}")
    used = sum(int(r[3]) for r in rows)
    events = sum(int(r[4]) for r in rows)
    if (stated, counted) != (used, events) or events != m:
        problems.append(
            f"statements hold {counted:,} events / {stated:,} micro-credits; the month holds "
            f"{events:,} / {used:,}; {m:,} were ingested"
        )
    ok, output = common.verify(url)
    if not ok:
        problems.append(f"creditmeter verify failed:\n{output}")
    return problems


def _timed(what: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    value = fn()
    print(f"  seeded {what} in {time.perf_counter() - t0:,.1f} s", flush=True)
    return value


def run_one(kind: str, n: int, m: int, profile: str | None) -> common.Result:
    with common.database(kind) as url:
        upgrade(url)
        db = Database(url)
        try:
            print(f"cycle close, {kind}: {n:,} organizations, {m:,} usage events in {START:%B %Y}")
            org_ids = _timed(f"{n:,} organizations", lambda: seed_organizations(db, n))
            applied = _timed(f"{m:,} events", lambda: seed_usage(db, org_ids, m))
            before, rows = raw_query(url)
            elapsed, results, steps, count = run_close(db, profile)
            after, rows_after = raw_query(url)
            problems = [] if applied == m else [f"{applied:,} of {m:,} events applied"]
            if rows_after != rows:
                problems.append("the aggregation changed across the close")
            problems += check(db, url, n, m, results, rows)
            with db.read() as session:
                overage = session.scalar(select(func.count()).where(CycleClose.overage_micros > 0))
        finally:
            db.dispose()
    baseline = (before + after) / 2
    paid = sum(1 for r in results if r.ok and r.total_minor > 0)
    print(
        f"  raw aggregation: {len(rows):,} groups, {before:.3f} s before and {after:.3f} s after "
        f"the close (mean {baseline:.3f} s); close: {elapsed / max(n, 1) * 1000:.2f} ms per "
        f"organization ({paid:,} invoices charged, {overage:,} with overage billed; "
        f"{sum(r.expired_micros > 0 for r in results):,} organizations had credits expire)"
    )
    print(
        f"  per organization: {count.statements / max(n, 1):.1f} statements, "
        f"{count.commits / max(n, 1):.1f} commits, {count.rollbacks / max(n, 1):.1f} read "
        f"transactions; {steps.describe(max(n, 1))}"
    )
    note = "checked: one invoice and one plan lot each, statements = events, verify exit 0"
    if profile:
        note += "; run under cProfile, so slower than without"
    result = common.report(
        common.Result(
            f"cycle_close {kind} (ms)",
            elapsed * 1000,
            baseline * 1000,
            "ms",
            TARGET,
            lower_is_better=True,
            note=note if not problems else "CORRECTNESS CHECK FAILED",
            valid=not problems,
        ),
        "raw aggregation query (mean)",
        f"cycle.run_due, {n:,} organizations",
    )
    for p in problems:
        print(f"  !! {p}")
    return result


def main(argv: list[str] | None = None) -> list[common.Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--organizations", type=int, default=None, help="default 10,000")
    parser.add_argument("--events", type=int, default=None, help="default 1,000,000")
    parser.add_argument("--quick", action="store_true", help="1,000 organizations, 100,000 events")
    parser.add_argument("--database", default="both", help="sqlite, postgresql or both")
    parser.add_argument("--profile", default=None, help="cProfile the close into this file")
    args = parser.parse_args(argv)
    n = args.organizations or (1_000 if args.quick else 10_000)
    m = args.events or (100_000 if args.quick else 1_000_000)
    return [run_one(kind, n, m, args.profile) for kind in common.parse_databases(args.database)]


if __name__ == "__main__":
    main()
