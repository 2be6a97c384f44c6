"""The background worker: runs inside ``creditmeter serve`` (unless ``--no-worker``) or on its own as
``creditmeter worker``. Each tick is one write transaction per job; a failing tick is logged and retried
at the next tick, never lost silently.

Every tick first runs the cycle closes that are due (``billing.cycle``): on time at each month
boundary, and after downtime boundary by boundary, in order. Each close is one transaction per
step and organization, so a failing organization is logged and retried at the next tick while the
others close; a close charges its invoice through the worker's payment provider. Then the payment
jobs, each guarded so that one failing never stops the others: the dunning retries of open
invoices (``billing.dunning``), the auto top-ups due (``billing.auto_top_up``), and purchases left
pending by a crash (``billing.purchases.resume_pending``). Then holds and lots that lapsed.
Organizations attached to a test clock are left to their clock (``billing.test_clocks``)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from creditmeter.billing import auto_top_up, cycle, dunning, purchases, test_clocks
from creditmeter.billing.domain import Catalog
from creditmeter.billing.payments import PaymentProvider, build_provider
from creditmeter.billing.plans import load_catalog
from creditmeter.config import Settings
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.metering import holds

log = logging.getLogger("creditmeter.worker")


#: A purchase still pending after this long was interrupted (a crash between charge and grant): the
#: worker finishes it, with its own key, so never charging twice.
PENDING_PURCHASE_AGE = timedelta(minutes=5)


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
    db: Database, plans_path: str | None = None, provider: PaymentProvider | None = None
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
    return len(expired)


def run_payment_jobs(
    db: Database, provider: PaymentProvider, catalog: Catalog | None, now: datetime
) -> None:
    """Dunning retries, auto top-ups and pending purchases; a failing job is logged and the next
    one runs (each retries at the next tick)."""
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
    if catalog is None:
        return  # the plans file is broken (logged above): nothing can be priced
    try:
        for made in auto_top_up.run_due(db, provider, catalog, now):
            log.info("auto top-up %s of %s: %s", made.id, made.organization_id, made.status)
    except Exception:
        log.exception("auto top-ups could not run; retrying at the next tick")
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
    ) -> None:
        super().__init__(name="creditmeter-worker", daemon=True)
        self.db = db
        self.interval = interval_seconds
        self.plans_path = plans_path
        self.provider = provider
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.provider = self.provider or provider_from_env(self.db)
                tick(self.db, self.plans_path, self.provider)
            except Exception:
                log.exception("worker tick failed; retrying at the next tick")
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
