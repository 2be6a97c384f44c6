"""Payment methods, billing history, credit purchases and auto top-up of an organization.

Handlers are plain ``def``: they call the payment processor, which blocks. No database transaction
is open during a call to the processor (see ``billing.purchases``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from creditmeter.api.deps import (
    ADMIN_SCOPES,
    DB,
    READ_SCOPES,
    Caller,
    Cursor,
    Env,
    IdempotencyKey,
    Limit,
    authorize_org,
    environment_for,
    require_operator,
)
from creditmeter.api.routes_billing import Plans
from creditmeter.api.schemas import Page
from creditmeter.api.schemas_payments import (
    AutoTopUpIn,
    AutoTopUpOut,
    PaymentMethodIn,
    PaymentMethodOut,
    PaymentMethodsOut,
    PaymentMethodUpdate,
    PaymentOut,
    PurchaseIn,
    PurchaseOut,
    RefundIn,
    RefundOut,
)
from creditmeter.billing import auto_top_up, org_time, purchases, refunds
from creditmeter.billing.domain import Catalog
from creditmeter.billing.payments import build_provider, cards, history
from creditmeter.billing.payments import methods as payment_methods
from creditmeter.billing.payments.models import AutoTopUp, Payment, PaymentMethod, Purchase
from creditmeter.billing.payments.provider import CardSource, PaymentProvider
from creditmeter.errors import InvalidRequest
from creditmeter.kit import clock
from creditmeter.kit import idempotency as idem
from creditmeter.kit.credits import format_credits
from creditmeter.kit.pagination import DEFAULT_LIMIT, decode_cursor, page_of
from creditmeter.orgs import service as orgs


def provider_of(app: FastAPI) -> PaymentProvider:
    """The app's payment provider, built once from its settings (tests may set
    ``app.state.payment_provider`` first)."""
    provider: PaymentProvider | None = getattr(app.state, "payment_provider", None)
    if provider is None:
        settings = app.state.settings
        provider = build_provider(
            settings.payment_provider, app.state.db, settings.stripe_secret_key
        )
        app.state.payment_provider = provider
    return provider


@asynccontextmanager
async def _check_provider(app: FastAPI) -> AsyncIterator[None]:
    """Build the provider when the server starts: a wrong setting stops it with what to fix."""
    provider_of(app)
    yield


router = APIRouter(tags=["payments"], lifespan=_check_provider)


async def get_provider(request: Request) -> PaymentProvider:
    return provider_of(request.app)


Provider = Annotated[PaymentProvider, Depends(get_provider)]
ORG = "/v1/organizations/{org_id}"


def _money(amount_minor: int, currency: str) -> dict[str, Any]:
    return {"amount_minor": amount_minor, "currency": currency}


def method_json(method: PaymentMethod) -> dict[str, Any]:
    return PaymentMethodOut(
        id=method.id,
        provider=method.provider,
        brand=method.brand,
        last4=method.last4,
        exp_month=method.exp_month,
        exp_year=method.exp_year,
        default=method.is_default,
        created_at=method.created_at,
        detached_at=method.detached_at,
    ).model_dump(mode="json")


def payment_json(payment: Payment) -> dict[str, Any]:
    return PaymentOut(
        id=payment.id,
        kind=payment.kind,
        purpose=payment.purpose,
        reference_id=payment.reference_id,
        payment_method_id=payment.payment_method_id,
        amount=_money(payment.amount_minor, payment.currency),
        status=payment.status,
        failure_code=payment.failure_code,
        failure_message=payment.failure_message,
        provider=payment.provider,
        provider_id=payment.provider_id,
        refunded_minor=payment.refunded_minor or 0,
        refund_of=payment.refund_of_id,
        created_at=payment.created_at,
    ).model_dump(mode="json")


def purchase_json(row: Purchase) -> dict[str, Any]:
    return PurchaseOut.model_validate(purchases.purchase_json(row)).model_dump(mode="json")


# --- payment methods -------------------------------------------------------------------------


def _card_source(body: PaymentMethodIn) -> tuple[CardSource, dict[str, Any]]:
    """What to hand the provider, and what identifies the request for its Idempotency-Key (the
    brand, last four digits and expiry: never the number). Bad card details are a 422 naming every
    field to fix, before anything is sent anywhere."""
    if body.card is None:
        assert body.token is not None
        return CardSource(token=body.token), {"token": body.token}
    try:  # the expiry against real time: the processor charges the card in real time
        card = cards.validate(
            body.card.number, body.card.exp_month, body.card.exp_year, body.card.cvc, clock.now()
        )
    except cards.InvalidCard as exc:
        raise InvalidRequest(
            "the card is not valid: " + "; ".join(p.message for p in exc.problems),
            code=exc.problems[0].code,
            errors=[{"field": p.field, "type": p.code, "message": p.message} for p in exc.problems],
        ) from None
    source = CardSource(
        number=card.number, exp_month=card.exp_month, exp_year=card.exp_year, cvc=card.cvc
    )
    return source, {
        "brand": card.brand,
        "last4": card.last4,
        "exp": [card.exp_month, card.exp_year],
    }


@router.post(f"{ORG}/payment-methods", status_code=201, response_model=PaymentMethodOut)
def add_payment_method(
    org_id: str,
    body: PaymentMethodIn,
    caller: Caller,
    db: DB,
    provider: Provider,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """Attach a card: a token from the processor (`tok_…`, `pm_…`), or, with the sandbox provider,
    the card details, which its tokenizer turns into a token. Only the token, brand, last four
    digits and expiry are stored. The first method is the default; `default: true` makes a new one
    the default. An operator key, or an org:admin key of this organization."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    env = environment_for(caller, environment)
    source, identity = _card_source(body)
    scope = f"payment-method:{org_id}"
    fingerprint = idem.request_fingerprint({"env": env, "default": body.default, **identity})
    if idempotency_key is not None:
        idempotency_key = idem.check_key(idempotency_key)
        with db.read() as session:
            stored = idem.lookup(session, scope, idempotency_key, fingerprint)
        if stored is not None:
            return JSONResponse(stored.body, status_code=stored.status_code)

    with db.read() as session:  # a clocked organization's method is added at its clock's time
        now = org_time.now_for(session, org_id)

    def remember(session: Session, method: PaymentMethod) -> None:
        if idempotency_key is not None:
            answer = method_json(method)
            idem.store(session, scope, idempotency_key, fingerprint, 201, answer, now)

    try:
        method = payment_methods.add(db, provider, org_id, env, source, body.default, now, remember)
    except IntegrityError:
        if idempotency_key is None:
            raise
        with db.read() as session:  # a concurrent twin with this key recorded its method first
            stored = idem.lookup(session, scope, idempotency_key, fingerprint)
        if stored is None:
            raise
        return JSONResponse(stored.body, status_code=stored.status_code)
    return JSONResponse(method_json(method), status_code=201)


@router.get(f"{ORG}/payment-methods", response_model=PaymentMethodsOut)
def list_payment_methods(org_id: str, caller: Caller, db: DB, environment: Env = None) -> Any:
    """Attached payment methods, the default first."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        return {
            "data": [method_json(m) for m in payment_methods.active_methods(session, org_id, env)]
        }


@router.patch(f"{ORG}/payment-methods/{{method_id}}", response_model=PaymentMethodOut)
def update_payment_method(
    org_id: str,
    method_id: str,
    body: PaymentMethodUpdate,
    caller: Caller,
    db: DB,
    environment: Env = None,
) -> Any:
    """`{"default": true}` makes this method the default (the previous default stops being one)."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    env = environment_for(caller, environment)
    with db.write() as session:
        orgs.get_organization(session, org_id)
        return method_json(payment_methods.set_default(session, org_id, env, method_id))


@router.delete(f"{ORG}/payment-methods/{{method_id}}", response_model=PaymentMethodOut)
def delete_payment_method(
    org_id: str,
    method_id: str,
    caller: Caller,
    db: DB,
    provider: Provider,
    environment: Env = None,
) -> Any:
    """Detach the method (at the processor too). If it was the default, the newest remaining one
    becomes the default. Its past payments stay in the history."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    env = environment_for(caller, environment)
    with db.read() as session:  # detached at a clocked organization's clock's time
        now = org_time.now_for(session, org_id)
    return method_json(payment_methods.detach(db, provider, org_id, env, method_id, now))


# --- billing history --------------------------------------------------------------------------


@router.get(f"{ORG}/payments", response_model=Page[PaymentOut])
def list_payments(
    org_id: str,
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    environment: Env = None,
) -> Any:
    """Billing history, newest first: every charge and refund, succeeded or failed, with the
    processor's reason."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        rows, after = history.list_payments(session, org_id, env, cursor, limit)
        return page_of([payment_json(p) for p in rows], after)


# --- purchases --------------------------------------------------------------------------------


@router.post(
    f"{ORG}/purchases",
    status_code=201,
    response_model=PurchaseOut,
    responses={
        402: {"description": "The payment was declined; nothing was granted."},
        409: {"description": "on_account_not_allowed: the plan does not bill packages on account."},
    },
)
def create_purchase(
    org_id: str,
    body: PurchaseIn,
    caller: Caller,
    db: DB,
    catalog: Plans,
    provider: Provider,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """Buy a package or a custom amount of credits now with a stored payment method (default: the
    organization's default). `Idempotency-Key` is required: a retry with the same key returns the
    first outcome (or finishes a purchase interrupted before its outcome was recorded) and never
    charges twice. On success a `purchase` lot is granted at once (a paused organization resumes);
    on a decline the answer is a 402 problem whose `code` is the processor's reason
    (`card_declined`, `insufficient_funds`, ...) and nothing is granted. `"billing": "on_account"`
    (plans with `packages_on_account`, e.g. enterprise; otherwise `409 on_account_not_allowed`):
    no card and no charge, the lot is granted at once and the purchase is billed as a `package`
    line on the invoice of its month: operator keys only (credit extended; `403 operator_only`
    for an organization key). A charged purchase: an operator key, or an org:admin key of this
    organization."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    if body.billing == "on_account":
        require_operator(caller)
    env = environment_for(caller, environment)
    if idempotency_key is None:
        raise InvalidRequest(
            "a purchase charges money: send an Idempotency-Key header (e.g. a UUID) so that a "
            "retry never charges twice",
            code="idempotency_key_required",
            errors=[
                {
                    "field": "Idempotency-Key",
                    "type": "idempotency_key_required",
                    "message": "send a unique key per purchase, the same key for its retries",
                }
            ],
        )
    key = idem.check_key(idempotency_key)
    request = purchases.PurchaseRequest(
        body.package, body.credits, body.payment_method, body.billing
    )
    with db.read() as session:  # a clocked organization buys at its clock's time
        now = org_time.now_for(session, org_id)
    row = purchases.purchase(db, provider, catalog, org_id, env, request, key, now=now)
    if row.status == purchases.FAILED:
        raise purchases.declined(row)
    return JSONResponse(purchase_json(row), status_code=201)


@router.get(f"{ORG}/purchases", response_model=Page[PurchaseOut])
def list_purchases(
    org_id: str,
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    environment: Env = None,
) -> Any:
    """Purchases, newest first, with their status (pending, succeeded, failed)."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    before = decode_cursor(cursor, "pur_")
    with db.read() as session:
        orgs.get_organization(session, org_id)
        query = (
            select(Purchase)
            .where(Purchase.organization_id == org_id, Purchase.environment == env)
            .order_by(Purchase.id.desc())
            .limit(limit + 1)
        )
        if before:
            query = query.where(Purchase.id < before)
        rows = list(session.scalars(query))
    page = rows[:limit]
    more = len(rows) > limit
    return page_of([purchase_json(r) for r in page], page[-1].id if more else None)


# --- refunds ----------------------------------------------------------------------------------


def _key_required(idempotency_key: str | None, what: str) -> str:
    if idempotency_key is None:
        raise InvalidRequest(
            f"a {what} moves money: send an Idempotency-Key header (e.g. a UUID) so that a retry "
            f"never does it twice",
            code="idempotency_key_required",
            errors=[
                {
                    "field": "Idempotency-Key",
                    "type": "idempotency_key_required",
                    "message": f"send a unique key per {what}, the same key for its retries",
                }
            ],
        )
    return idem.check_key(idempotency_key)


@router.post(
    "/v1/payments/{payment_id}/refunds",
    status_code=201,
    response_model=RefundOut,
    responses={
        402: {"description": "The processor refused the refund; nothing changed but the history."},
        409: {"description": "Not refundable: not a succeeded charge, too much, credits spent."},
    },
)
def create_refund(
    payment_id: str,
    body: RefundIn,
    caller: Caller,
    db: DB,
    provider: Provider,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Refund a succeeded charge (operator keys only): `amount_minor` (default: everything not yet
    refunded) and a `reason`. A purchase's refund takes back its lot's credits in proportion
    (`409 credits_spent` if they were spent: refund less); an invoice payment's refund leaves the
    invoice paid. `Idempotency-Key` is required: a retry with the same key returns the first
    outcome and never refunds twice. A refusal by the processor is a 402 whose `code` is its
    reason; it is in the billing history and nothing else changed."""
    require_operator(caller)
    key = _key_required(idempotency_key, "refund")
    request = refunds.RefundRequest(body.amount_minor, body.reason)
    row = refunds.refund(db, provider, payment_id, request, key)
    if row.status == refunds.FAILED:
        raise refunds.failed(row)
    return JSONResponse(
        RefundOut.model_validate(refunds.refund_json(row)).model_dump(mode="json"),
        status_code=201,
    )


# --- auto top-up ------------------------------------------------------------------------------


def auto_top_up_json(session: Session, catalog: Catalog, row: AutoTopUp) -> dict[str, Any]:
    spent = auto_top_up.spent_this_cycle(session, catalog, row, clock.now())
    return AutoTopUpOut(
        enabled=row.enabled,
        threshold_credits=format_credits(row.threshold_micros),
        package=row.package,
        credits=format_credits(row.credits_micros),
        monthly_limit_money=_money(row.monthly_limit_minor, row.currency),
        spent_this_cycle=_money(spent, row.currency),
        disabled_reason=row.disabled_reason,
        last_attempt_at=row.last_attempt_at,
        updated_at=row.updated_at,
    ).model_dump(mode="json")


@router.put(f"{ORG}/auto-top-up", response_model=AutoTopUpOut)
def put_auto_top_up(
    org_id: str,
    body: AutoTopUpIn,
    caller: Caller,
    db: DB,
    catalog: Plans,
    environment: Env = None,
) -> Any:
    """Turn auto top-up on or off: when available credits fall below `threshold_credits`, buy the
    package (or `credits`) with the default payment method, at most `monthly_limit_money` (minor
    units) per billing cycle, never two at once, at most one attempt per 10 minutes. A decline turns
    it off and records why (`disabled_reason`). An operator key, or an org:admin key."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    env = environment_for(caller, environment)
    request = auto_top_up.AutoTopUpRequest(
        body.enabled, body.threshold_credits, body.package, body.credits, body.monthly_limit_money
    )
    with db.write() as session:
        row = auto_top_up.configure(session, catalog, org_id, env, request, clock.now())
        return auto_top_up_json(session, catalog, row)


@router.get(f"{ORG}/auto-top-up", response_model=AutoTopUpOut)
def get_auto_top_up(
    org_id: str, caller: Caller, db: DB, catalog: Plans, environment: Env = None
) -> Any:
    """The auto top-up setting, what it spent this cycle and why it was turned off (if it was)."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    with db.read() as session:
        return auto_top_up_json(session, catalog, auto_top_up.get(session, org_id, env))
