"""The background worker: runs inside ``creditmeter serve`` (unless ``--no-worker``) or on its own as
``creditmeter worker``. Each tick is one write transaction per job; a failing tick is logged and retried
at the next tick, never lost silently.

Every tick first runs the cycle closes that are due (``billing.cycle``): on time at each month
boundary, and after downtime boundary by boundary, in order. Each close is one transaction per
step and organization, so a failing organization is logged and retried at the next tick while the
others close; a close charges its invoice through the worker's payment provider. Then the payment
jobs, each guarded so that one failing never stops the others: the dunning retries of open
invoices (``billing.dunning``), refunds and purchases left pending by a lost answer or a crash
(``billing.refunds.resume_pending``, ``billing.purchases.resume_pending``). Then holds and lots that lapsed. Organizations attached to a
test clock are left to their clock (``billing.test_clocks``).

Last, the outbox (``kit.outbox``): the jobs written by the changes that caused them, at most
``JOBS_PER_TICK`` per tick, claimed with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any
number of workers share them), each handler guarded so one failing job is retried with backoff
while the others run. The kinds run here:

- ``low_balance`` (enqueued by the ledger's write path when a write leaves a watched organization
  below its mark): the guarded auto top-up (``billing.auto_top_up.on_low_balance``); it needs a
  payment provider and the plans, and waits in the outbox while either is broken;
- ``low_balance_sweep``: every ``SWEEP_EVERY``, one job for each watched organization already below
  its mark (``ledger.watch.sweep``), the safety net behind the write path's trigger. The tick keeps
  exactly one sweep job scheduled.

Done jobs are deleted after ``JOB_RETENTION``; dead ones (out of attempts) stay for an operator.

Between ticks, every ``notify_interval_seconds`` (1 s), the notification jobs (``notify.jobs``):
alert crossings, budget checks, the alert sweep, webhook deliveries and e-mails."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from creditmeter.billing import (
    auto_top_up,
    cycle,
    dunning,
    invoices,
    pdf,
    purchases,
    refunds,
    test_clocks,
)
from creditmeter.billing.domain import Catalog
from creditmeter.billing.payments import PaymentProvider, build_provider
from creditmeter.billing.payments.models import Purchase
from creditmeter.billing.plans import load_catalog
from creditmeter.config import Settings
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.ledger import watch
from creditmeter.metering import holds
from creditmeter.notify import email
from creditmeter.notify import jobs as notify_jobs

log = logging.getLogger("creditmeter.worker")


#: A purchase still pending after this long was interrupted (a crash between charge and grant): the
#: worker finishes it, with its own key, so never charging twice.
PENDING_PURCHASE_AGE = timedelta(minutes=5)
#: A refund still pending after this long lost the processor's answer: the worker sends it again
#: with its own key, so the processor refunds once.
PENDING_REFUND_AGE = timedelta(minutes=5)
#: The most outbox jobs one tick runs; the rest wait for the next tick.
JOBS_PER_TICK = 200
SWEEP = "low_balance_sweep"
#: How often the low-balance sweep runs (one job, whichever worker claims it).
SWEEP_EVERY = timedelta(minutes=5)
#: Done jobs are kept this long (for looking back), then deleted.
JOB_RETENTION = timedelta(days=7)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def provider_from_env(db: Database) -> PaymentProvider | None:
    """The payment provider the environment configures, or None (logged) when it is misconfigured:
    closes still run, and their invoices are charged by the dunning step once it is fixed."""
    settings = Settings.from_env()
    try:
        return build_provider(settings.payment_provider, db, settings.stripe_secret_key)
    except Exception:
        log.exception("no payment provider: invoices and top-ups are not charged until it is fixed")
        return None


def tick(
    db: Database,
    plans_path: str | None = None,
    provider: PaymentProvider | None = None,
    settings: Settings | None = None,
) -> int:
    """Run every due job once. Returns the number of organizations whose lots expired."""
    now = clock.now()
    provider = provider or provider_from_env(db)
    catalog = None
    try:
        catalog = load_catalog(plans_path)
        close_cycles(db, now, catalog, provider)
    except Exception:  # the other jobs of the tick still run; the closes retry at the next tick
        log.exception("cycle closes could not run; retrying at the next tick")
    if provider is not None:
        run_payment_jobs(db, provider, catalog, now)
    with db.write() as session:
        lapsed = holds.expire_due(session, now)
    if lapsed:
        log.info("released %s expired hold(s)", lapsed)
    with db.write() as session:
        expired = test_clocks.expire_due_on_real_time(session, now)
    for org, env, micros in expired:
        log.info("expired %s micro-credits of %s (%s)", micros, org, env)
    try:
        run_jobs(db, provider, catalog, clock.now())
    except Exception:  # the jobs stay in the outbox; the next tick claims them
        log.exception("outbox jobs could not run; retrying at the next tick")
    run_notifications(db, settings or Settings.from_env())
    return len(expired)


def invoice_pdf(session: Session, invoice_id: str) -> tuple[str, bytes]:
    """An invoice's PDF as an e-mail attachment (``notify.email.ATTACHMENTS['invoice_pdf']``)."""
    view = invoices.get(session, invoice_id)
    content = pdf.render(view, load_catalog().zone, pdf.notes_of(session, view))
    return f"{view.invoice.number}.pdf", content


def run_notifications(db: Database, settings: Settings) -> int:
    """Run the due notification jobs once (``notify.jobs``); a failure is logged and retried."""
    email.ATTACHMENTS.setdefault("invoice_pdf", invoice_pdf)
    try:
        return len(notify_jobs.run(db, settings, clock.now()))
    except Exception:  # the jobs stay in the outbox; the next pass claims them
        log.exception("notification jobs could not run; retrying at the next pass")
        return 0


def job_handlers(
    db: Database, provider: PaymentProvider | None, catalog: Catalog | None
) -> dict[str, outbox.Handler]:
    """The handler of each job kind this worker can run now (jobs of other kinds wait)."""
    handlers: dict[str, outbox.Handler] = {SWEEP: lambda job: _sweep(db)}
    if provider is not None and catalog is not None:
        handlers[watch.LOW_BALANCE] = lambda job: _top_up(db, provider, catalog, job)
    return handlers


def run_jobs(
    db: Database,
    provider: PaymentProvider | None,
    catalog: Catalog | None,
    now: datetime,
    limit: int = JOBS_PER_TICK,
) -> list[outbox.Outcome]:
    """Keep the sweep scheduled, delete old done jobs, and run up to ``limit`` due jobs."""
    with db.write() as session:
        outbox.ensure(session, outbox.NewJob(SWEEP, run_at=now, dedupe_key=SWEEP), now)
        outbox.purge_done(session, now - JOB_RETENTION)
    return outbox.run(
        db, job_handlers(db, provider, catalog), now=now, limit=limit, worker=WORKER_ID
    )


def _top_up(
    db: Database, provider: PaymentProvider, catalog: Catalog, job: outbox.Claimed
) -> Purchase | None:
    made = auto_top_up.on_low_balance(db, provider, catalog, job, clock.now())
    if made is not None:
        log.info("auto top-up %s of %s: %s", made.id, made.organization_id, made.status)
    return made


def _sweep(db: Database) -> int:
    now = clock.now()
    with db.write() as session:
        low = watch.sweep(session, now)
        outbox.enqueue(
            session, [outbox.NewJob(SWEEP, run_at=now + SWEEP_EVERY, dedupe_key=SWEEP)], now=now
        )
    if low:
        log.info("low-balance sweep: %s organization(s) below their mark", low)
    return low


def run_payment_jobs(
    db: Database, provider: PaymentProvider, catalog: Catalog | None, now: datetime
) -> None:
    """Dunning retries, pending refunds and pending purchases; a failing job is logged and the next
    one runs (each retries at the next tick). Auto top-ups run as outbox jobs (:func:`run_jobs`)."""
    try:
        for attempt in dunning.run_due(db, provider, now):
            payment = attempt.payment
            log.info(
                "invoice %s attempt %s: %s%s (invoice %s)",
                attempt.invoice_id,
                attempt.number,
                payment.status,
                f" ({payment.failure_code})" if payment.failure_code else "",
                attempt.invoice_status,
            )
    except Exception:
        log.exception("dunning could not run; retrying at the next tick")
    try:
        for finished in refunds.resume_pending(db, provider, PENDING_REFUND_AGE):
            log.info("finished pending refund %s: %s", finished.id, finished.status)
    except Exception:
        log.exception("pending refunds could not be finished; retrying at the next tick")
    if catalog is None:
        return  # the plans file is broken (logged above): nothing can be priced
    try:
        for done in purchases.resume_pending(db, provider, catalog, PENDING_PURCHASE_AGE):
            log.info("finished pending purchase %s: %s", done.id, done.status)
    except Exception:
        log.exception("pending purchases could not be finished; retrying at the next tick")


def close_cycles(
    db: Database,
    now: datetime,
    catalog: Catalog | None = None,
    provider: PaymentProvider | None = None,
) -> None:
    """Run the cycle closes due at ``now``, logging each (a failed one is retried next tick).
    Without a provider the invoices wait for the dunning step, which charges never-tried ones."""
    charge = dunning.charger(provider) if provider is not None else _charge_later
    for result in cycle.run_due(db, now, catalog=catalog or load_catalog(), charge=charge):
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


def _charge_later(db: Database, invoice_id: str, now: datetime) -> None:
    """No provider: leave the invoice open, never tried; ``dunning.run_due`` charges it first."""


class Worker(threading.Thread):
    def __init__(
        self,
        db: Database,
        interval_seconds: float,
        plans_path: str | None = None,
        provider: PaymentProvider | None = None,
        settings: Settings | None = None,
    ) -> None:
        super().__init__(name="creditmeter-worker", daemon=True)
        self.db = db
        self.interval = interval_seconds
        self.plans_path = plans_path
        self.provider = provider
        self.settings = settings or Settings.from_env()
        self._stop_event = threading.Event()

    def run(self) -> None:
        """A tick every ``interval`` seconds; the notification jobs every
        ``notify_interval_seconds`` between ticks."""
        try:
            notify_jobs.release_held(self.db, self.settings, clock.now())
        except Exception:
            log.exception("held e-mails could not be queued; they stay held")
        next_tick = 0.0
        while not self._stop_event.is_set():
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.interval
                try:
                    self.provider = self.provider or provider_from_env(self.db)
                    tick(self.db, self.plans_path, self.provider, self.settings)
                except Exception:
                    log.exception("worker tick failed; retrying at the next tick")
            else:
                run_notifications(self.db, self.settings)
            wait = min(self.settings.notify_interval_seconds, max(next_tick - time.monotonic(), 0))
            self._stop_event.wait(wait)

    def stop(self) -> None:
        self._stop_event.set()
