"""The background worker's tick, in-process on both databases (the demo seed: test_demo.py)."""

from __future__ import annotations

from datetime import timedelta

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.verify import verify
from creditmeter.worker.runner import Worker, tick
from tests.conftest import utc

C = 1_000_000


def test_a_worker_tick_expires_due_lots_once(db: Database, make_org) -> None:
    """Standard plan credits left at the end of the cycle are gone at the boundary, once."""
    org = make_org()
    start, end = utc(2026, 1, 1), utc(2026, 2, 1)
    with db.write() as s:
        ledger.grant(
            s, org, "live", ledger.GrantRequest(1000 * C, LotSource.PLAN, "Jan", start, end), start
        )
        ledger.debit(s, org, "live", 400 * C, "inference", "usage", start + timedelta(days=3))
    with clock.frozen_at(end):
        assert tick(db) == 1
        assert tick(db) == 0
    with db.read() as s:
        view = ledger.get_balance(s, org, "live", end)
        assert view.available_micros == 0
        assert verify(s) == []


def test_the_worker_thread_runs_and_stops(db: Database) -> None:
    worker = Worker(db, interval_seconds=0.01)
    worker.start()
    worker.stop()
    worker.join(timeout=5)
    assert not worker.is_alive()
