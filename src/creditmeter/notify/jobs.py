"""The notification jobs the worker runs every ``notify_interval_seconds`` (1 s by default), apart
from its minute tick, so that an alert reaches its webhooks and e-mails seconds after the write that
crossed its line.

- In order, one at a time: ``balance_crossing`` (a write crossed a line: publish the alert or the
  paused/resumed events), ``marks_refresh`` (a grant changed a percentage line),
  ``project_usage_check`` (a project's month reached a budget line) and the recurring
  ``alerts_sweep`` (every :data:`SWEEP_EVERY`).
- Side by side, :data:`SENDERS` at a time: ``webhook_delivery`` and ``email_send``, which wait on the
  network (a slow endpoint holds one sender for its timeout, not the queue).

Every job is claimed with ``notify_lease_seconds`` as its lease: a worker killed mid-delivery leaves
its jobs to be claimed again once the lease lapses, so nothing queued is lost (at least once).
"""

from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from creditmeter.config import Settings
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.ledger import marks
from creditmeter.notify import alerts, delivery, email

log = logging.getLogger("creditmeter.notify")

SWEEP_EVERY = timedelta(seconds=60)
SENDERS = 8
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:notify"


def ordered_handlers(db: Database) -> dict[str, outbox.Handler]:
    return {
        marks.BALANCE_CROSSING: lambda job: alerts.on_crossing(db, job, clock.now()),
        marks.MARKS_REFRESH: lambda job: alerts.on_marks_refresh(db, job, clock.now()),
        alerts.PROJECT_USAGE_CHECK: lambda job: alerts.on_project_usage(db, job, clock.now()),
        alerts.ALERTS_SWEEP: lambda job: _sweep(db),
    }


def sender_handlers(db: Database, settings: Settings) -> dict[str, outbox.Handler]:
    return {
        delivery.WEBHOOK_DELIVERY: lambda job: delivery.run_delivery(db, settings, job),
        email.EMAIL_SEND: lambda job: email.send_email_job(db, settings, job),
    }


def _sweep(db: Database) -> dict[str, int]:
    now = clock.now()
    done = alerts.sweep(db, now)
    with db.write() as session:
        outbox.enqueue(
            session,
            [
                outbox.NewJob(
                    alerts.ALERTS_SWEEP, run_at=now + SWEEP_EVERY, dedupe_key=alerts.ALERTS_SWEEP
                )
            ],
            now=now,
        )
    return done


def release_held(db: Database, settings: Settings, now: datetime) -> int:
    """Once SMTP is configured, queue the messages kept while it was not (called at start)."""
    if settings.smtp_host is None:
        return 0
    with db.write() as session:
        return email.release_held(session, now)


def run(db: Database, settings: Settings, now: datetime, limit: int = 500) -> list[outbox.Outcome]:
    """One pass: keep the sweep scheduled, run the ordered jobs due, then the senders due."""
    lease = timedelta(seconds=settings.notify_lease_seconds)
    with db.write() as session:
        outbox.ensure(
            session,
            outbox.NewJob(alerts.ALERTS_SWEEP, run_at=now, dedupe_key=alerts.ALERTS_SWEEP),
            now,
        )
    outcomes = outbox.run(
        db, ordered_handlers(db), now=now, limit=limit, worker=WORKER_ID, lease=lease
    )
    handlers = sender_handlers(db, settings)
    with ThreadPoolExecutor(SENDERS, thread_name_prefix="creditmeter-sender") as pool:
        while len(outcomes) < limit:
            with db.write() as session:
                claimed = outbox.claim(
                    session,
                    sorted(handlers),
                    now=clock.now(),
                    limit=min(SENDERS * 2, limit - len(outcomes)),
                    worker=WORKER_ID,
                    lease=lease,
                )
            if not claimed:
                break
            outcomes += pool.map(
                lambda job: outbox.run_claimed(db, handlers[job.kind], job), claimed
            )
    return outcomes
