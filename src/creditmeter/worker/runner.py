"""The background worker: runs inside ``creditmeter serve`` (unless ``--no-worker``) or on its own as
``creditmeter worker``. Each tick is one write transaction per job; a failing tick is logged and retried
at the next tick, never lost silently.

Every tick first runs the cycle closes that are due (``billing.cycle``): on time at each month
boundary, and after downtime boundary by boundary, in order. Each close is one transaction per
step and organization, so a failing organization is logged and retried at the next tick while the
others close."""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from creditmeter.billing import cycle
from creditmeter.billing.plans import load_catalog
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.metering import holds

log = logging.getLogger("creditmeter.worker")


def tick(db: Database, plans_path: str | None = None) -> int:
    """Run every due job once. Returns the number of organizations whose lots expired."""
    now = clock.now()
    try:
        close_cycles(db, now, plans_path)
    except Exception:  # the other jobs of the tick still run; the closes retry at the next tick
        log.exception("cycle closes could not run; retrying at the next tick")
    with db.write() as session:
        lapsed = holds.expire_due(session, now)
    if lapsed:
        log.info("released %s expired hold(s)", lapsed)
    with db.write() as session:
        expired = ledger.expire_due(session, now)
    for org, env, micros in expired:
        log.info("expired %s micro-credits of %s (%s)", micros, org, env)
    return len(expired)


def close_cycles(db: Database, now: datetime, plans_path: str | None = None) -> None:
    """Run the cycle closes due at ``now``, logging each (a failed one is retried next tick)."""
    for result in cycle.run_due(db, now, catalog=load_catalog(plans_path)):
        if result.ok:
            log.info(
                "closed %s for %s (%s): invoice %s",
                result.due.period.label,
                result.due.organization_id,
                result.due.environment,
                result.invoice_number,
            )
        else:
            log.error(
                "cycle close of %s for %s (%s) failed, retried at the next tick: %s",
                result.due.period.label,
                result.due.organization_id,
                result.due.environment,
                result.error,
            )


class Worker(threading.Thread):
    def __init__(
        self, db: Database, interval_seconds: float, plans_path: str | None = None
    ) -> None:
        super().__init__(name="creditmeter-worker", daemon=True)
        self.db = db
        self.interval = interval_seconds
        self.plans_path = plans_path
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                tick(self.db, self.plans_path)
            except Exception:
                log.exception("worker tick failed; retrying at the next tick")
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
