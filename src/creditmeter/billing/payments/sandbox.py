"""The sandbox processor: a card processor's test mode, with its own persisted state.

It keeps its customers, payment methods, charges and refunds in tables of its own
(``sandbox_models``) and opens its own transactions, as a remote processor would: callers must not
hold a write transaction while calling it. Every call that creates something is idempotent by key: the
same key returns the first result (a charge is never made twice).

Test cards (any expiry in the future, any CVC):

| number | behaviour |
| --- | --- |
| ``4242424242424242`` (and any other valid number) | every charge succeeds |
| ``4000000000000002`` | attaches; every charge is declined: ``card_declined`` |
| ``4000000000009995`` | attaches; every charge fails: ``insufficient_funds`` |
| ``4000000000000341`` | attaches; every charge fails: ``card_declined`` |
| ``4000002760003184`` | attaches; every off-session charge fails: ``authentication_required`` |
| ``4000000000005126`` | charges succeed; every refund fails: ``expired_or_canceled_card`` |

Stripe's test tokens work too: ``tok_visa``, ``tok_mastercard``, ``tok_chargeDeclined``,
``tok_chargeDeclinedInsufficientFunds``, ``tok_chargeCustomerFail``, ``tok_refundFail``. The card number itself is never
stored: only the behaviour it selects, brand, last four digits and expiry.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from creditmeter.billing.payments import cards
from creditmeter.billing.payments.provider import (
    AttachedMethod,
    CardSource,
    ChargeResult,
    PaymentError,
    RefundResult,
)
from creditmeter.billing.payments.sandbox_models import (
    SandboxCharge,
    SandboxCustomer,
    SandboxPaymentMethod,
    SandboxRefund,
)
from creditmeter.errors import Conflict, InvalidRequest
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id

SUCCEED = "succeed"
#: Test card numbers and what a charge to them does.
TEST_CARDS = {
    "4242424242424242": SUCCEED,
    "4000000000000002": "card_declined",
    "4000000000009995": "insufficient_funds",
    "4000000000000341": "charge_customer_fail",
    "4000002760003184": "authentication_required",
    "4000000000005126": "refund_fails",
}
#: Stripe's test tokens, as the cards they stand for.
TEST_TOKENS = {
    "tok_visa": "4242424242424242",
    "tok_mastercard": "5555555555554444",
    "tok_chargeDeclined": "4000000000000002",
    "tok_chargeDeclinedInsufficientFunds": "4000000000009995",
    "tok_chargeCustomerFail": "4000000000000341",
    "tok_refundFail": "4000000000005126",
}
_FAILURES = {
    "card_declined": ("card_declined", "Your card was declined."),
    "insufficient_funds": ("insufficient_funds", "Your card has insufficient funds."),
    "charge_customer_fail": ("card_declined", "Your card was declined."),
    "authentication_required": (
        "authentication_required",
        "Your card requires authentication, which an off-session charge cannot complete; "
        "add the card again with the customer present, or use another card.",
    ),
}
#: Why a refund to a ``refund_fails`` card fails (Stripe's failure_reason for the same test card).
_REFUND_FAILURE = (
    "expired_or_canceled_card",
    "The refund failed: the card it would go back to is expired or canceled.",
)


@dataclass
class SandboxProvider:
    """The ``sandbox`` provider (see the module note); its state lives in ``db``."""

    db: Database
    name: str = "sandbox"

    def create_customer(self, organization_id: str, description: str, idempotency_key: str) -> str:
        with self.db.write() as session:
            found = session.scalar(
                select(SandboxCustomer.id).where(SandboxCustomer.idempotency_key == idempotency_key)
            )
            if found:
                return found
            customer_id = new_id("cus_sbx")
            session.add(
                SandboxCustomer(
                    id=customer_id,
                    description=f"{description} ({organization_id})"[:500],
                    idempotency_key=idempotency_key,
                    created_at=clock.now(),
                )
            )
            return customer_id

    def tokenize(self, number: str, exp_month: int, exp_year: int) -> str:
        """The sandbox's tokenizer: a single-use ``tok_…`` for a card (the number is not kept)."""
        try:
            digits = cards.normalize_number(number)
            month, year = cards.check_expiry(exp_month, exp_year, clock.now())
        except cards.CardError as exc:
            raise InvalidRequest(exc.message, code=exc.code) from None
        token = new_id("tok_sbx")
        with self.db.write() as session:
            session.add(
                SandboxPaymentMethod(
                    id=new_id("pm_sbx"),
                    token=token,
                    customer_id=None,
                    behaviour=TEST_CARDS.get(digits, SUCCEED),
                    brand=cards.brand(digits),
                    last4=digits[-4:],
                    exp_month=month,
                    exp_year=year,
                    created_at=clock.now(),
                )
            )
        return token

    def attach(self, customer_id: str, source: CardSource) -> AttachedMethod:
        token = source.token
        if source.number is not None:
            token = self.tokenize(source.number, source.exp_month or 0, source.exp_year or 0)
        elif token in TEST_TOKENS:
            token = self.tokenize(TEST_TOKENS[token], 12, clock.now().year + 5)
        if not token:
            raise InvalidRequest("send a card or a token", code="invalid_payment_method")
        with self.db.write() as session:
            method = session.scalars(
                select(SandboxPaymentMethod).where(SandboxPaymentMethod.token == token)
            ).first()
            if method is None:
                raise InvalidRequest(
                    f"no such token: {token}; use a sandbox test card or one of "
                    f"{', '.join(TEST_TOKENS)}",
                    code="invalid_token",
                )
            if method.customer_id is not None:
                raise InvalidRequest(
                    "this token was already used; tokens are single use", code="token_already_used"
                )
            method.customer_id = customer_id
            return AttachedMethod(
                method.id, method.brand, method.last4, method.exp_month, method.exp_year
            )

    def detach(self, token: str) -> None:
        with self.db.write() as session:
            method = session.get(SandboxPaymentMethod, token)
            if method is not None and method.detached_at is None:
                method.detached_at = clock.now()

    def charge(
        self,
        amount_minor: int,
        currency: str,
        customer_id: str,
        payment_method: str,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult:
        if amount_minor <= 0:
            raise InvalidRequest("a charge is a positive amount", code="invalid_amount")
        try:
            with self.db.write() as session:
                row = _charge_by_key(session, idempotency_key)
                if row is None:
                    row = _new_charge(
                        session,
                        amount_minor,
                        currency,
                        customer_id,
                        payment_method,
                        idempotency_key,
                        description,
                    )
                elif (row.amount_minor, row.currency, row.payment_method_id) != (
                    amount_minor,
                    currency,
                    payment_method,
                ):
                    raise Conflict(
                        "sandbox: this idempotency key was used for another charge",
                        code="idempotency_key_reused",
                    )
                return _charge_result(row)
        except IntegrityError:
            with self.db.read() as session:  # a concurrent twin made the charge first
                row = _charge_by_key(session, idempotency_key)
                if row is None:
                    raise
                return _charge_result(row)

    def refund(self, charge_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        with self.db.write() as session:
            existing = session.scalars(
                select(SandboxRefund).where(SandboxRefund.idempotency_key == idempotency_key)
            ).first()
            charge = session.get(SandboxCharge, charge_id, with_for_update=True)
            if charge is None or charge.status != "succeeded":
                raise PaymentError(
                    f"sandbox: no succeeded charge {charge_id} to refund",
                    code="charge_not_refundable",
                )
            if existing is not None:
                if existing.status == "failed":
                    return RefundResult(
                        "failed",
                        existing.amount_minor,
                        charge.currency,
                        existing.id,
                        *_REFUND_FAILURE,
                    )
                return RefundResult(
                    "succeeded", existing.amount_minor, charge.currency, existing.id
                )
            if not 0 < amount_minor <= charge.amount_minor - charge.refunded_minor:
                raise PaymentError(
                    "sandbox: a refund is positive and at most what is left of the charge",
                    code="amount_too_large",
                )
            method = session.get(SandboxPaymentMethod, charge.payment_method_id)
            fails = method is not None and method.behaviour == "refund_fails"
            refund = SandboxRefund(
                id=new_id("re_sbx"),
                charge_id=charge_id,
                amount_minor=amount_minor,
                status="failed" if fails else "succeeded",
                idempotency_key=idempotency_key,
                created_at=clock.now(),
            )
            session.add(refund)
            if fails:
                return RefundResult(
                    "failed", amount_minor, charge.currency, refund.id, *_REFUND_FAILURE
                )
            charge.refunded_minor += amount_minor
            return RefundResult("succeeded", amount_minor, charge.currency, refund.id)


def _charge_by_key(session: Session, idempotency_key: str) -> SandboxCharge | None:
    return session.scalars(
        select(SandboxCharge).where(SandboxCharge.idempotency_key == idempotency_key)
    ).first()


def _new_charge(
    session: Session,
    amount_minor: int,
    currency: str,
    customer_id: str,
    payment_method: str,
    idempotency_key: str,
    description: str,
) -> SandboxCharge:
    method = session.get(SandboxPaymentMethod, payment_method)
    if method is None or method.customer_id != customer_id or method.detached_at is not None:
        failure: tuple[str, str] | None = (
            "payment_method_not_attached",
            "this payment method is not attached to the customer",
        )
    else:
        failure = _FAILURES.get(method.behaviour)
    row = SandboxCharge(
        id=new_id("ch_sbx"),
        customer_id=customer_id,
        payment_method_id=payment_method,
        amount_minor=amount_minor,
        currency=currency,
        description=description[:500],
        status="failed" if failure else "succeeded",
        failure_code=failure[0] if failure else None,
        failure_message=failure[1] if failure else None,
        refunded_minor=0,
        idempotency_key=idempotency_key,
        created_at=clock.now(),
    )
    session.add(row)
    session.flush()
    return row


def _charge_result(row: SandboxCharge) -> ChargeResult:
    return ChargeResult(
        "succeeded" if row.status == "succeeded" else "failed",
        row.amount_minor,
        row.currency,
        row.id,
        row.failure_code,
        row.failure_message,
    )
