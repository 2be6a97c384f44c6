"""Guarded auto top-up: buy a chosen amount with the default payment method when available credits
fall below a threshold.

Guards (all checked under the organization's write lock, so two workers never both buy):

- **one in flight**: no new top-up while one of the organization's auto top-up purchases is pending;
- **cooldown**: at most one attempt per ``COOLDOWN``;
- **monthly cap**: what auto top-up bought in the current billing cycle (succeeded or pending) plus
  the next purchase stays within ``monthly_limit_minor``; beyond it the top-up waits for the next
  cycle;
- **a decline turns it off**: the setting is disabled with the processor's reason
  (``disabled_reason``) instead of retrying in a loop; the organization re-enables it with a PUT.

The purchase itself is an ordinary purchase (``billing.purchases``) with purpose ``auto_top_up``:
charged outside any transaction, granted on success, recorded in the billing history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from creditmeter.billing import domain, purchases
from creditmeter.billing.domain import Catalog
from creditmeter.billing.payments import methods as payment_methods
from creditmeter.billing.payments.models import AutoTopUp, Purchase
from creditmeter.billing.payments.provider import PaymentProvider
from creditmeter.errors import InvalidRequest, NotFound
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id
from creditmeter.ledger import service as ledger
from creditmeter.orgs import service as orgs

#: The shortest time between two attempts of one organization.
COOLDOWN = timedelta(minutes=10)
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
    that covers one purchase; enabling again clears the reason of an earlier disable."""
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
    ledger.lock_balance(session, organization_id, environment)
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


def _start_if_due(
    session: Session, catalog: Catalog, setting_id: str, now: datetime
) -> Purchase | None:
    """Under the organization's lock: begin one purchase if every guard allows it."""
    row = session.get(AutoTopUp, setting_id)
    if row is None:
        return None
    ledger.lock_balance(session, row.organization_id, row.environment)
    session.refresh(row)
    if not row.enabled:
        return None
    if row.last_attempt_at is not None and now - row.last_attempt_at < COOLDOWN:
        return None
    available = ledger.get_balance(session, row.organization_id, row.environment, now)
    if available.available_micros >= row.threshold_micros:
        return None
    in_flight = session.scalar(
        select(Purchase.id).where(
            Purchase.organization_id == row.organization_id,
            Purchase.environment == row.environment,
            Purchase.purpose == PURPOSE,
            Purchase.status == purchases.PENDING,
        )
    )
    if in_flight is not None:
        return None
    request = purchases.PurchaseRequest(
        row.package, None if row.package else row.credits_micros, None
    )
    terms = purchases.terms_of(session, row.organization_id, row.environment)
    offer = purchases.quote(catalog, terms, request)
    if spent_this_cycle(session, catalog, row, now) + offer.amount_minor > row.monthly_limit_minor:
        return None
    row.last_attempt_at = now
    return purchases.begin(
        session,
        catalog,
        row.organization_id,
        row.environment,
        request,
        f"auto-top-up:{row.id}:{now.strftime('%Y%m%dT%H%M%S.%f')}",
        now,
        purpose=PURPOSE,
    )


def run_due(
    db: Database, provider: PaymentProvider, catalog: Catalog, now: datetime
) -> list[Purchase]:
    """The worker step: one purchase for each enabled organization below its threshold whose guards
    allow it. A decline disables the setting with the reason. Returns the purchases made."""
    with db.read() as session:
        candidates = list(session.scalars(select(AutoTopUp.id).where(AutoTopUp.enabled.is_(True))))
    made = []
    for setting_id in candidates:
        try:
            with db.write() as session:
                started = _start_if_due(session, catalog, setting_id, now)
        except (InvalidRequest, purchases.SubscriptionRequired) as exc:
            _disable(db, setting_id, f"cannot top up: {exc.detail}", now)
            continue
        if started is None:
            continue
        done = purchases.settle(db, provider, catalog, started.id)
        if done.status == purchases.FAILED:
            _disable(
                db,
                setting_id,
                f"purchase {done.id} was declined: {done.failure_code}: {done.failure_message}",
                now,
            )
        made.append(done)
    return made


def _disable(db: Database, setting_id: str, reason: str, now: datetime) -> None:
    with db.write() as session:
        row = session.get(AutoTopUp, setting_id)
        if row is not None:
            row.enabled = False
            row.disabled_reason = reason[:500]
            row.updated_at = now
