"""The background worker: runs inside ``creditmeter serve`` (unless ``--no-worker``) or on its own as
``creditmeter worker``. Each tick is one write transaction per job; a failing tick is logged and retried
at the next tick, never lost silently."""

from __future__ import annotations

import logging
import threading

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.metering import holds

log = logging.getLogger("creditmeter.worker")


def tick(db: Database) -> int:
    """Run every due job once. Returns the number of organizations whose lots expired."""
    now = clock.now()
    with db.write() as session:
        lapsed = holds.expire_due(session, now)
    if lapsed:
        log.info("released %s expired hold(s)", lapsed)
    with db.write() as session:
        expired = ledger.expire_due(session, now)
    for org, env, micros in expired:
        log.info("expired %s micro-credits of %s (%s)", micros, org, env)
    return len(expired)


class Worker(threading.Thread):
    def __init__(self, db: Database, interval_seconds: float) -> None:
        super().__init__(name="creditmeter-worker", daemon=True)
        self.db = db
        self.interval = interval_seconds
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                tick(self.db)
            except Exception:
                log.exception("worker tick failed; retrying at the next tick")
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
