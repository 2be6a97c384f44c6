"""Guarded auto top-up: buy a chosen amount with the default payment method when available credits
fall below a threshold.

How it is triggered: enabling sets the threshold as the balance's low-balance mark
(``ledger.watch``); a write that leaves available credits below it (usage, a hold, a debit, an
expiry, through the ledger's one write path) enqueues one ``low_balance`` job in the outbox
(``kit.outbox``) in the same transaction, and the worker runs :func:`on_low_balance` for it.
Enabling while already below the threshold enqueues at once; the worker's periodic sweep enqueues
for any watched balance still below its mark.

Guards (all checked under the organization's write lock, so two workers never both buy):

- **one in flight**: no new top-up while one of the organization's auto top-up purchases is pending;
- **cooldown**: at most one attempt per ``COOLDOWN``;
- **monthly cap**: what auto top-up bought in the current billing cycle (succeeded or pending) plus
  the next purchase stays within ``monthly_limit_minor``; beyond it the top-up waits for the next
  cycle;
- **a decline turns it off**: the setting is disabled with the processor's reason
  (``disabled_reason``) and the mark removed, instead of retrying in a loop; the organization
  re-enables it with a PUT. The same transaction publishes ``auto_top_up.failed`` (once per declined
  purchase, or per job that could not buy at all).

A job stopped by the cooldown, a purchase in flight or the cap enqueues its own follow-up for when
that ends, so a balance left low is topped up then without waiting for more usage.

The purchase itself is an ordinary purchase (``billing.purchases``) with purpose ``auto_top_up``:
charged outside any transaction, granted on success, recorded in the billing history. Its
idempotency key is the job's (``auto-top-up:job:<id>``): a job run again after a crash finds the
purchase it began and finishes it with the same processor key, never charging twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from creditmeter.billing import domain, notices, purchases
from creditmeter.billing.domain import Catalog
from creditmeter.billing.payments import methods as payment_methods
from creditmeter.billing.payments.models import AutoTopUp, Purchase
from creditmeter.billing.payments.provider import PaymentProvider
from creditmeter.errors import InvalidRequest, NotFound
from creditmeter.kit import outbox
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id
from creditmeter.ledger import service as ledger
from creditmeter.ledger import watch
from creditmeter.orgs import service as orgs

#: The shortest time between two attempts of one organization.
COOLDOWN = timedelta(minutes=10)
#: When a purchase is still in flight, look again this much later (a purchase left pending by a
#: crash is finished by the worker after ``worker.runner.PENDING_PURCHASE_AGE``).
IN_FLIGHT_RECHECK = timedelta(minutes=6)
PURPOSE = "auto_top_up"


class AutoTopUpNotFound(NotFound):
    code = "auto_top_up_not_found"


@dataclass(frozen=True)
class AutoTopUpRequest:
    enabled: bool
    threshold_micros: int
    package: str | None
    credits_micros: int | None
    monthly_limit_minor: int


def configure(
    session: Session,
    catalog: Catalog,
    organization_id: str,
    environment: str,
    request: AutoTopUpRequest,
    now: datetime,
) -> AutoTopUp:
    """Create or replace the setting. Enabling needs a default payment method and a monthly limit
    that covers one purchase; enabling again clears the reason of an earlier disable. The threshold
    becomes the balance's low-balance mark; enabled while already below it, a job is enqueued now."""
    orgs.get_organization(session, organization_id)
    terms = purchases.terms_of(session, organization_id, environment)
    offer = purchases.quote(
        catalog, terms, purchases.PurchaseRequest(request.package, request.credits_micros)
    )
    if offer.amount_minor > request.monthly_limit_minor:
        message = (
            f"one top-up costs {domain.format_money(offer.amount_minor, offer.currency)} "
            f"{offer.currency}, more than the monthly limit"
        )
        raise InvalidRequest(
            message,
            code="monthly_limit_too_low",
            errors=[
                {
                    "field": "monthly_limit_money",
                    "type": "monthly_limit_too_low",
                    "message": message,
                }
            ],
        )
    balance = ledger.lock_balance(session, organization_id, environment)
    if (
        request.enabled
        and payment_methods.default_method(session, organization_id, environment) is None
    ):
        message = "add a payment method first (POST …/payment-methods): auto top-up charges it"
        raise InvalidRequest(
            message,
            code="payment_method_required",
            errors=[{"field": "enabled", "type": "payment_method_required", "message": message}],
        )
    row = _find(session, organization_id, environment)
    if row is None:
        row = AutoTopUp(
            id=new_id("atu"),
            organization_id=organization_id,
            environment=environment,
            created_at=now,
        )
        session.add(row)
    row.enabled = request.enabled
    row.threshold_micros = request.threshold_micros
    row.package = offer.package
    row.credits_micros = offer.credits_micros
    row.monthly_limit_minor = request.monthly_limit_minor
    row.currency = offer.currency
    if request.enabled:
        row.disabled_reason = None
    row.updated_at = now
    session.flush()
    watch.set_mark(session, balance, row.threshold_micros if row.enabled else None, now)
    return row


def get(session: Session, organization_id: str, environment: str) -> AutoTopUp:
    orgs.get_organization(session, organization_id)
    row = _find(session, organization_id, environment)
    if row is None:
        raise AutoTopUpNotFound(
            f"organization {organization_id} has no auto top-up in the {environment} environment"
        )
    return row


def _find(session: Session, organization_id: str, environment: str) -> AutoTopUp | None:
    return session.scalars(
        select(AutoTopUp).where(
            AutoTopUp.organization_id == organization_id, AutoTopUp.environment == environment
        )
    ).first()


def spent_this_cycle(session: Session, catalog: Catalog, row: AutoTopUp, now: datetime) -> int:
    """What auto top-up bought (succeeded or pending) in the billing cycle containing ``now``."""
    cycle = domain.period_of(now, catalog.zone)
    return int(
        session.scalar(
            select(func.coalesce(func.sum(Purchase.amount_minor), 0)).where(
                Purchase.organization_id == row.organization_id,
                Purchase.environment == row.environment,
                Purchase.purpose == PURPOSE,
                Purchase.status.in_([purchases.PENDING, purchases.SUCCEEDED]),
                Purchase.created_at >= cycle.start,
                Purchase.created_at < cycle.end,
            )
        )
        or 0
    )


def on_low_balance(
    db: Database, provider: PaymentProvider, catalog: Catalog, job: outbox.Claimed, now: datetime
) -> Purchase | None:
    """The ``low_balance`` job: begin one purchase if every guard allows it (under the lock), charge
    it outside any transaction; a decline disables the setting with the reason. Returns the
    purchase made (or finished, when the job runs again after a crash), or None."""
    assert job.organization_id is not None
    assert job.environment is not None
    org, env = job.organization_id, job.environment
    key = f"auto-top-up:job:{job.id}"
    try:
        with db.write() as session:
            started = purchases.by_key(session, org, env, key) or _start_if_due(
                session, catalog, org, env, key, now
            )
    except (InvalidRequest, purchases.SubscriptionRequired) as exc:
        failure = _Failure(f"cannot top up: {exc.detail}", exc.code, f"job:{job.id}")
        _disable(db, org, env, failure, now)
        return None
    if started is None:
        return None
    done = purchases.settle(db, provider, catalog, started.id)
    if done.status == purchases.FAILED:
        reason = f"purchase {done.id} was declined: {done.failure_code}: {done.failure_message}"
        _disable(
            db, org, env, _Failure(reason, done.failure_code, f"purchase:{done.id}", done), now
        )
    elif done.status == purchases.SUCCEEDED:
        _again_if_still_low(db, org, env, now)
    return done


def _again_if_still_low(
    db: Database, organization_id: str, environment: str, now: datetime
) -> None:
    """A top-up that did not lift the balance above the threshold (usage ran on, or arrears took
    it): look again when the cooldown ends, as no later write may come to trigger it."""
    with db.write() as session:
        balance = ledger.lock_balance(session, organization_id, environment)
        row = _find(session, organization_id, environment)
        if row is None or not row.enabled or row.last_attempt_at is None:
            return
        available = ledger.get_balance(session, organization_id, environment, now)
        if available.available_micros < row.threshold_micros:
            _later(session, balance, row.last_attempt_at + COOLDOWN, now)


def _start_if_due(
    session: Session,
    catalog: Catalog,
    organization_id: str,
    environment: str,
    key: str,
    now: datetime,
) -> Purchase | None:
    """Under the organization's lock: begin one purchase if every guard allows it; when only the
    cooldown, a purchase in flight or the monthly cap stops it, enqueue a job for when that ends."""
    balance = ledger.lock_balance(session, organization_id, environment)
    row = _find(session, organization_id, environment)
    if row is None or not row.enabled:
        return None
    available = ledger.get_balance(session, organization_id, environment, now)
    if available.available_micros >= row.threshold_micros:
        return None
    if row.last_attempt_at is not None and now - row.last_attempt_at < COOLDOWN:
        _later(session, balance, row.last_attempt_at + COOLDOWN, now)
        return None
    in_flight = session.scalar(
        select(Purchase.id).where(
            Purchase.organization_id == organization_id,
            Purchase.environment == environment,
            Purchase.purpose == PURPOSE,
            Purchase.status == purchases.PENDING,
        )
    )
    if in_flight is not None:
        _later(session, balance, now + IN_FLIGHT_RECHECK, now)
        return None
    request = purchases.PurchaseRequest(
        row.package, None if row.package else row.credits_micros, None
    )
    terms = purchases.terms_of(session, organization_id, environment)
    offer = purchases.quote(catalog, terms, request)
    if spent_this_cycle(session, catalog, row, now) + offer.amount_minor > row.monthly_limit_minor:
        _later(session, balance, domain.period_of(now, catalog.zone).end, now)
        return None
    row.last_attempt_at = now
    return purchases.begin(
        session, catalog, organization_id, environment, request, key, now, purpose=PURPOSE
    )


def _later(session: Session, balance: ledger.LockedBalance, at: datetime, now: datetime) -> None:
    """Look again at ``at`` (the job running now is not pending, so this one is kept)."""
    outbox.enqueue(session, [watch.job(balance.organization_id, balance.environment, at)], now=now)


@dataclass(frozen=True)
class _Failure:
    """Why a top-up failed: the reason recorded, the code, what caused it (the key of its
    ``auto_top_up.failed``: the job, or the declined purchase) and the purchase, if any."""

    reason: str
    code: str | None
    cause: str
    purchase: Purchase | None = None


def _disable(
    db: Database, organization_id: str, environment: str, failure: _Failure, now: datetime
) -> None:
    """Turn auto top-up off after ``failure`` and publish ``auto_top_up.failed`` (once per cause),
    in one transaction."""
    with db.write() as session:
        balance = ledger.lock_balance(session, organization_id, environment)
        row = _find(session, organization_id, environment)
        package = row.package if row else None
        turned_off = disable(session, balance, failure.reason, now)
        notices.auto_top_up_failed(
            session,
            organization_id,
            environment,
            purchase=failure.purchase,
            package=failure.purchase.package if failure.purchase else package,
            failure_code=failure.code,
            reason=failure.reason,
            disabled=turned_off,
            key=failure.cause,
            at=now,
        )


def disable(session: Session, balance: ledger.LockedBalance, reason: str, now: datetime) -> bool:
    """Turn the organization's auto top-up off with ``reason`` (shown as ``disabled_reason``; a
    ``PUT`` with ``enabled: true`` turns it on again), in the caller's transaction, under the
    balance lock the caller holds. Nothing to do when it has none or it is off. Returns whether it
    turned it off."""
    row = _find(session, balance.organization_id, balance.environment)
    if row is None or not row.enabled:
        return False
    row.enabled = False
    row.disabled_reason = reason[:500]
    row.updated_at = now
    watch.set_mark(session, balance, None, now)
    return True
