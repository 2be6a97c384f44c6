"""The background worker's tick and the demo seed, in-process on both databases."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from creditmeter import demo
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.verify import verify
from creditmeter.metering.models import UsageEvent
from creditmeter.metering.verify import CHECKS
from creditmeter.orgs import service as orgs
from creditmeter.pricing.ratecard import load_rate_card
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


def test_the_demo_seed_is_real_and_idempotent(db: Database) -> None:
    now = utc(2026, 11, 25, 12)
    card = load_rate_card()
    with db.write() as s:
        first = demo.seed(s, now, card)
    with db.write() as s:
        second = demo.seed(s, now, card)
    assert (first.acme_id, first.globex_id) == (second.acme_id, second.globex_id)
    assert first.operator_key != second.operator_key
    with db.read() as s:
        acme = ledger.get_balance(s, first.acme_id, "live", now)
        globex = ledger.get_balance(s, first.globex_id, "live", now)
        assert len(orgs.list_projects(s, first.acme_id, None, 10)[0]) == 3
        assert len(orgs.list_members(s, first.acme_id, None, 10)[0]) == 4
        events = s.scalar(select(func.count()).where(UsageEvent.organization_id == first.acme_id))
        consumed = s.scalar(
            select(func.sum(UsageEvent.credits_micros)).where(
                UsageEvent.organization_id == first.acme_id
            )
        )
        assert verify(s, extra_checks=CHECKS) == []
    assert events > 14 * 24
    granted = 6250 * C
    assert acme.held_micros == 150 * C
    assert acme.available_micros == granted - consumed - 150 * C
    assert not acme.paused
    assert globex.paused
    assert globex.arrears_micros > 0
