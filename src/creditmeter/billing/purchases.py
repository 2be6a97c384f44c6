"""Credit purchases: a package or a custom amount, charged now, granted on success.

A purchase runs in three steps, so that no database lock is ever held across the call to the
processor:

1. **begin** (one write transaction): check the request, price it from the organization's
   subscription terms (credits x the plan's price per credit, rounded once, half to even, to a minor
   unit) and record the purchase as ``pending`` under the client's idempotency key (unique per
   organization and environment).
2. **charge** (no transaction): the processor charges the payment method with ``purchase:<id>`` as
   its own idempotency key.
3. **complete** (one write transaction, under the organization's write lock): record the charge in
   the billing history; on success grant a ``purchase`` lot through ``ledger.service.grant`` (cost
   basis = amount paid per credit, the purchase expiry of the plan, the default priority), which pays
   any arrears first and so resumes a paused organization at once; on a decline mark the purchase
   ``failed`` with the processor's reason and grant nothing. The same transaction publishes
   ``purchase.succeeded`` (and ``credits.granted``) or ``payment.failed`` and ``purchase.failed``
   (``billing.notices``), once: a purchase leaves ``pending`` once.

A crash or a lost connection between steps leaves a ``pending`` purchase. Running it again (the
client retrying with the same ``Idempotency-Key``, or :func:`resume_pending`) repeats step 2 with the
same processor key, so the processor returns the first charge instead of charging twice, and step 3
records it once (the purchase row is re-read under the lock; the payment's key is unique).

**On account** (``billing="on_account"``, for a plan with ``packages_on_account``): no payment
method and no processor. One write transaction, under the organization's write lock, records the
purchase ``succeeded`` and grants its lot exactly as a charged purchase would; there is no payment
row (nothing was charged). The invoice of the month of the purchase bills it as a ``package`` line
and sets ``invoice_id`` in its own transaction, so it is billed once (``billing.invoices``). The
idempotency key works the same: the purchase row and its lot are written together or not at all,
and the key is unique, so a retry returns the first purchase and never grants twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from creditmeter.billing import domain, notices, subscriptions
from creditmeter.billing.domain import Catalog, Terms
from creditmeter.billing.models import Subscription
from creditmeter.billing.payments import history
from creditmeter.billing.payments import methods as payment_methods
from creditmeter.billing.payments.models import PaymentCustomer, PaymentMethod, Purchase
from creditmeter.billing.payments.provider import ChargeResult, PaymentError, PaymentProvider
from creditmeter.errors import Conflict, InvalidRequest
from creditmeter.kit import clock
from creditmeter.kit.credits import format_credits
from creditmeter.kit.db import Database
from creditmeter.kit.idempotency import request_fingerprint
from creditmeter.kit.ids import new_id
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.orgs import service as orgs

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
CHARGE, ON_ACCOUNT = "charge", "on_account"
#: Purchased lots take the default priority (docs/ledger.md: all lots share it unless the operator
#: sets another).
PURCHASE_PRIORITY = 100


class SubscriptionRequired(Conflict):
    code = "subscription_required"


class OnAccountNotAllowed(Conflict):
    code = "on_account_not_allowed"


@dataclass(frozen=True)
class PurchaseRequest:
    package: str | None = None
    credits_micros: int | None = None
    payment_method_id: str | None = None
    billing: str = CHARGE

    def fingerprint(self, environment: str) -> str:
        body: dict[str, Any] = {
            "environment": environment,
            "package": self.package,
            "credits_micros": self.credits_micros,
            "payment_method": self.payment_method_id,
        }
        if self.billing != CHARGE:  # charged purchases keep the fingerprint they always had
            body["billing"] = self.billing
        return request_fingerprint(body)


@dataclass(frozen=True)
class Quote:
    package: str | None
    credits_micros: int
    price_micros: int
    amount_minor: int
    currency: str


def _invalid(field: str, code: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        message, code=code, errors=[{"field": field, "type": code, "message": message}]
    )


def quote(catalog: Catalog, terms: Terms, request: PurchaseRequest) -> Quote:
    """What the request buys and costs on these terms, or a 422 naming the field to fix."""
    if (request.package is None) == (request.credits_micros is None):
        raise _invalid(
            "package", "invalid_purchase", "send either package or credits (a custom amount)"
        )
    if request.package is not None:
        package = catalog.packages.get(request.package)
        if package is None:
            known = ", ".join(catalog.packages)
            raise _invalid("package", "unknown_package", f"unknown package; choose one of: {known}")
        credits = package.credits_micros
    else:
        assert request.credits_micros is not None
        credits = request.credits_micros
        problem = catalog.custom_packages.problem(credits)
        if problem:
            raise _invalid("credits", "invalid_credits", problem)
    amount = domain.purchase_price_minor(credits, terms.credit_price_micros, terms.currency)
    if amount <= 0:
        raise _invalid("credits", "invalid_credits", "this amount costs nothing; buy more credits")
    return Quote(request.package, credits, terms.credit_price_micros, amount, terms.currency)


def terms_of(session: Session, organization_id: str, environment: str) -> Terms:
    """The organization's subscription terms (a canceled subscription's last terms still price a
    purchase); 409 when it never subscribed: the price of a credit is a plan setting."""
    sub = _subscription(
        session,
        organization_id,
        environment,
        "the price of a credit and the expiry of purchased credits are plan settings",
    )
    return Terms.from_json(sub.terms)


def _subscription(
    session: Session, organization_id: str, environment: str, why: str
) -> Subscription:
    """The organization's subscription in ``environment``, or ``409 subscription_required``
    saying ``why`` a purchase needs one."""
    sub = session.scalars(
        select(Subscription).where(
            Subscription.organization_id == organization_id,
            Subscription.environment == environment,
        )
    ).first()
    if sub is None:
        raise SubscriptionRequired(
            f"subscribe the organization to a plan first (PUT …/subscription): {why}"
        )
    return sub


def begin(
    session: Session,
    catalog: Catalog,
    organization_id: str,
    environment: str,
    request: PurchaseRequest,
    idempotency_key: str,
    now: datetime,
    purpose: str = "purchase",
) -> Purchase:
    """Step 1: the purchase recorded as pending (or the one this key already made). A purchase on
    account is recorded succeeded with its lot granted, in this transaction."""
    orgs.get_organization(session, organization_id)
    if request.billing == ON_ACCOUNT:
        # The write lock first: a twin with the same key waits here, then finds this purchase.
        ledger.lock_balance(session, organization_id, environment)
    fingerprint = request.fingerprint(environment)
    existing = by_key(session, organization_id, environment, idempotency_key)
    if existing is not None:
        if existing.request_hash != fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used with a different request body; use a new "
                "key for a new purchase",
                code="idempotency_key_reused",
            )
        return existing
    if request.billing == ON_ACCOUNT:
        return _on_account(
            session, catalog, organization_id, environment, request, idempotency_key, now, purpose
        )
    terms = terms_of(session, organization_id, environment)
    offer = quote(catalog, terms, request)
    method = _method_for(session, organization_id, environment, request.payment_method_id)
    row = _record(
        catalog, terms, offer, organization_id, environment, request, idempotency_key, now, purpose
    )
    row.payment_method_id, row.billing, row.status = method.id, CHARGE, PENDING
    session.add(row)
    session.flush()
    return row


def _record(
    catalog: Catalog,
    terms: Terms,
    offer: Quote,
    organization_id: str,
    environment: str,
    request: PurchaseRequest,
    idempotency_key: str,
    now: datetime,
    purpose: str,
) -> Purchase:
    """The purchase row of ``offer`` under ``idempotency_key`` (its billing and status set by the
    caller), its credits expiring as the terms say."""
    return Purchase(
        id=new_id("pur"),
        organization_id=organization_id,
        environment=environment,
        purpose=purpose,
        package=offer.package,
        credits_micros=offer.credits_micros,
        price_micros=offer.price_micros,
        amount_minor=offer.amount_minor,
        currency=offer.currency,
        expires_at=domain.purchase_expiry(now, terms.purchase_expiry_months, catalog.zone),
        idempotency_key=idempotency_key,
        request_hash=request.fingerprint(environment),
        created_at=now,
    )


def _on_account(
    session: Session,
    catalog: Catalog,
    organization_id: str,
    environment: str,
    request: PurchaseRequest,
    idempotency_key: str,
    now: datetime,
    purpose: str,
) -> Purchase:
    """A purchase on account, recorded succeeded with its lot (the caller holds the write lock)."""
    if request.payment_method_id is not None:
        raise _invalid(
            "payment_method",
            "payment_method_not_used",
            "a purchase on account is billed on the next invoice, not charged to a card; omit "
            "payment_method",
        )
    terms = _on_account_terms(session, organization_id, environment)
    offer = quote(catalog, terms, request)
    row = _record(
        catalog, terms, offer, organization_id, environment, request, idempotency_key, now, purpose
    )
    row.payment_method_id, row.billing, row.status, row.completed_at = (
        None,
        ON_ACCOUNT,
        SUCCEEDED,
        now,
    )
    session.add(row)
    session.flush()  # the key's unique constraint before the grant
    row.lot_id = _grant(session, catalog, row, now)
    session.flush()
    notices.purchase_done(session, row)
    return row


def _on_account_terms(session: Session, organization_id: str, environment: str) -> Terms:
    """The terms of an active subscription whose plan lets it buy on account, or a 409."""
    sub = _subscription(
        session, organization_id, environment, "buying on account is a plan setting"
    )
    terms = Terms.from_json(sub.terms)
    if sub.status != subscriptions.ACTIVE:
        raise OnAccountNotAllowed(
            "the organization's subscription is canceled, so no invoice would bill a purchase on "
            'account; buy with "billing": "charge"'
        )
    if not terms.packages_on_account:
        raise OnAccountNotAllowed(
            f"the {terms.plan_name} plan does not allow buying on account; buy with "
            '"billing": "charge" (a card), or ask the operator for a plan that bills packages '
            "on the invoice"
        )
    return terms


def _grant(session: Session, catalog: Catalog, row: Purchase, now: datetime) -> str:
    """The purchase's lot: cost basis = the amount per credit, the plan's purchase expiry; any
    arrears are paid first (so a paused organization resumes). Publishes ``credits.granted``."""
    request = ledger.GrantRequest(
        amount_micros=row.credits_micros,
        source=LotSource.PURCHASE,
        reason=f"purchase {row.id}: {_what(catalog, row)}",
        effective_at=now,
        expires_at=row.expires_at,
        priority=PURCHASE_PRIORITY,
        cost_basis_micros=domain.cost_basis_micros(
            row.amount_minor, row.credits_micros, row.currency
        ),
        currency=row.currency,
    )
    lot_id = ledger.grant(session, row.organization_id, row.environment, request, now)
    notices.granted(session, [(row.organization_id, row.environment, lot_id, request)], now)
    return lot_id


def _method_for(
    session: Session, organization_id: str, environment: str, method_id: str | None
) -> PaymentMethod:
    if method_id is None:
        method = payment_methods.default_method(session, organization_id, environment)
        if method is None:
            raise _invalid(
                "payment_method",
                "payment_method_required",
                "the organization has no payment method; add one (POST …/payment-methods) or "
                "name one",
            )
        return method
    try:
        return payment_methods.get_method(session, organization_id, environment, method_id)
    except payment_methods.PaymentMethodNotFound:
        raise _invalid(
            "payment_method",
            "unknown_payment_method",
            "no attached payment method of this organization has this id",
        ) from None


def by_key(
    session: Session, organization_id: str, environment: str, idempotency_key: str
) -> Purchase | None:
    return session.scalars(
        select(Purchase).where(
            Purchase.organization_id == organization_id,
            Purchase.environment == environment,
            Purchase.idempotency_key == idempotency_key,
        )
    ).first()


def charge_key(purchase_id: str) -> str:
    """The processor's idempotency key of a purchase's charge."""
    return f"purchase:{purchase_id}"


def complete(
    session: Session,
    catalog: Catalog,
    purchase_id: str,
    result: ChargeResult,
    provider_name: str,
    now: datetime,
) -> Purchase:
    """Step 3: record the charge and grant the credits (or the decline). A purchase completed by a
    concurrent twin is returned as it is."""
    row = session.get(Purchase, purchase_id)
    assert row is not None
    ledger.lock_balance(session, row.organization_id, row.environment)
    session.refresh(row)
    if row.status != PENDING:
        return row
    payment = history.record(
        session,
        organization_id=row.organization_id,
        environment=row.environment,
        kind="charge",
        purpose=row.purpose,
        reference_id=row.id,
        payment_method_id=row.payment_method_id,
        result=result,
        provider=provider_name,
        idempotency_key=charge_key(row.id),
        now=now,
    )
    row.payment_id = payment.id
    row.completed_at = now
    if result.succeeded:
        row.status = SUCCEEDED
        row.lot_id = _grant(session, catalog, row, now)
    else:
        row.status = FAILED
        row.failure_code = result.failure_code or "payment_failed"
        row.failure_message = (result.failure_message or "the payment failed")[:500]
    session.flush()
    if not result.succeeded:
        notices.payment_failed(session, payment, purchase_id=row.id)
    notices.purchase_done(session, row)
    return row


def _what(catalog: Catalog, row: Purchase) -> str:
    credits = format_credits(row.credits_micros)
    if row.package and row.package in catalog.packages:
        return f"{catalog.packages[row.package].name} ({credits} credits)"
    return f"{credits} credits"


def purchase(
    db: Database,
    provider: PaymentProvider,
    catalog: Catalog,
    organization_id: str,
    environment: str,
    request: PurchaseRequest,
    idempotency_key: str,
    purpose: str = "purchase",
    now: datetime | None = None,
) -> Purchase:
    """Run a purchase (see the module note). A retry with the same key returns the first outcome,
    or finishes a pending purchase without charging twice. ``now``: the organization's time (its
    test clock's, if it is on one); real time by default."""
    try:
        with db.write() as session:
            row = begin(
                session,
                catalog,
                organization_id,
                environment,
                request,
                idempotency_key,
                clock.now() if now is None else now,
                purpose,
            )
    except IntegrityError:
        with db.read() as session:  # a concurrent twin recorded it first
            row_or_none = by_key(session, organization_id, environment, idempotency_key)
        if row_or_none is None:
            raise
        row = row_or_none
        if row.request_hash != request.fingerprint(environment):
            raise Conflict(
                "this Idempotency-Key was already used with a different request body",
                code="idempotency_key_reused",
            ) from None
    if row.status != PENDING:
        return row
    return settle(db, provider, catalog, row.id, now)


def settle(
    db: Database,
    provider: PaymentProvider,
    catalog: Catalog,
    purchase_id: str,
    now: datetime | None = None,
) -> Purchase:
    """Steps 2 and 3 for a pending purchase (recorded at ``now``, real time by default)."""
    with db.read() as session:
        row = session.get(Purchase, purchase_id)
        assert row is not None
        if row.status != PENDING:
            return row
        method = session.get(PaymentMethod, row.payment_method_id)
        assert method is not None
        customer = session.scalar(
            select(PaymentCustomer.provider_customer_id).where(
                PaymentCustomer.organization_id == row.organization_id,
                PaymentCustomer.environment == row.environment,
                PaymentCustomer.provider == method.provider,
            )
        )
    result = provider.charge(
        row.amount_minor,
        row.currency,
        customer or "",
        method.token,
        charge_key(row.id),
        f"creditmeter purchase {row.id}: {_what(catalog, row)}",
    )
    with db.write() as session:
        at = clock.now() if now is None else now
        return complete(session, catalog, row.id, result, provider.name, at)


def resume_pending(
    db: Database, provider: PaymentProvider, catalog: Catalog, older_than: timedelta
) -> list[Purchase]:
    """Finish purchases left pending longer than ``older_than`` (a crash between charge and grant):
    the worker's recovery step. Each is charged with its own key, so never twice."""
    cutoff = clock.now() - older_than
    with db.read() as session:
        ids = list(
            session.scalars(
                select(Purchase.id)
                .where(Purchase.status == PENDING, Purchase.created_at <= cutoff)
                .order_by(Purchase.id)
            )
        )
    return [settle(db, provider, catalog, purchase_id) for purchase_id in ids]


def declined(row: Purchase) -> PaymentError:
    """The 402 for a failed purchase, with the processor's reason as its code."""
    return PaymentError(
        f"the payment was declined: {row.failure_message} ({row.failure_code}); purchase "
        f"{row.id} granted no credits. Use another payment method, or retry with a new "
        "Idempotency-Key",
        code=row.failure_code or "payment_failed",
        errors=[
            {
                "field": "payment_method",
                "type": row.failure_code or "payment_failed",
                "message": row.failure_message or "the payment failed",
            }
        ],
    )


def purchase_json(row: Purchase) -> dict[str, Any]:
    return {
        "id": row.id,
        "organization_id": row.organization_id,
        "environment": row.environment,
        "purpose": row.purpose,
        "status": row.status,
        "package": row.package,
        "credits": format_credits(row.credits_micros),
        "price_per_credit": {
            "amount": domain.format_price(row.price_micros),
            "currency": row.currency,
        },
        "amount": {"amount_minor": row.amount_minor, "currency": row.currency},
        "billing": row.billing,
        "payment_method_id": row.payment_method_id,
        "payment_id": row.payment_id,
        "invoice_id": row.invoice_id,
        "lot_id": row.lot_id,
        "expires_at": row.expires_at,
        "failure_code": row.failure_code,
        "failure_message": row.failure_message,
        "created_at": row.created_at,
        "completed_at": row.completed_at,
    }
