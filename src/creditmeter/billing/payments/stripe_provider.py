"""The ``stripe`` provider: Stripe customers, PaymentMethods and off-session PaymentIntents.

- A customer per organization and environment (``POST /v1/customers``, idempotent by key).
- A payment method is a ``pm_…`` id (from Stripe.js / Elements) or a ``tok_…`` token, turned into a
  PaymentMethod (``POST /v1/payment_methods``) and attached (``POST /v1/payment_methods/{id}/attach``).
  Raw card numbers are refused: they must go to Stripe from the browser, never through this server.
- A charge is one PaymentIntent created with ``confirm=true`` and ``off_session=true`` (the customer
  is not present), card only, with the purchase or invoice as the ``Idempotency-Key``. A declined
  card (HTTP 402, ``card_error``) is a failed ``ChargeResult`` carrying ``decline_code`` when Stripe
  gives one (``insufficient_funds``), else ``code`` (``card_declined``, ``authentication_required``).
- A refund is ``POST /v1/refunds`` against the PaymentIntent.

Connection problems, rate limits, Stripe server errors and an invalid API key raise
``ProviderUnavailable``: nothing is known, and a retry with the same key is safe.
"""

from __future__ import annotations

from typing import Any

import stripe

from creditmeter.billing.payments.provider import (
    AttachedMethod,
    CardSource,
    ChargeResult,
    ChargeStatus,
    PaymentError,
    ProviderUnavailable,
    RefundResult,
)
from creditmeter.errors import InvalidRequest

_UNAVAILABLE = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.APIError,
    stripe.AuthenticationError,
    stripe.PermissionError,
)


class StripeProvider:
    """Stripe through the official ``stripe`` package. ``http_client`` replaces the network (tests)."""

    name = "stripe"

    def __init__(
        self,
        secret_key: str,
        http_client: stripe.HTTPClient | None = None,
        max_network_retries: int = 2,
    ) -> None:
        self.client = stripe.StripeClient(
            secret_key, http_client=http_client, max_network_retries=max_network_retries
        )

    def create_customer(self, organization_id: str, description: str, idempotency_key: str) -> str:
        params: Any = {"description": description, "metadata": {"organization_id": organization_id}}
        customer = self._call(
            lambda: self.client.v1.customers.create(
                params, options={"idempotency_key": idempotency_key}
            )
        )
        return str(customer.id)

    def attach(self, customer_id: str, source: CardSource) -> AttachedMethod:
        if source.number is not None or not source.token:
            raise InvalidRequest(
                "the stripe provider takes a token from Stripe.js (pm_… or tok_…), never a card "
                "number: card numbers go from the browser to Stripe directly",
                code="raw_card_not_supported",
            )
        token = source.token
        try:
            if token.startswith("tok_"):
                created = self.client.v1.payment_methods.create(
                    {"type": "card", "card": {"token": token}}
                )
                token = str(created.id)
            method = self.client.v1.payment_methods.attach(token, {"customer": customer_id})
        except stripe.CardError as exc:
            code, message = _reason(exc)
            raise PaymentError(message, code=code) from None
        except stripe.InvalidRequestError as exc:
            raise InvalidRequest(
                f"Stripe refused the payment method: {exc.user_message or 'invalid request'}",
                code="invalid_payment_method",
            ) from None
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None
        card = method.card
        if card is None:
            raise InvalidRequest("only card payment methods are accepted", code="not_a_card")
        return AttachedMethod(
            str(method.id),
            str(card.brand),
            str(card.last4),
            int(card.exp_month),
            int(card.exp_year),
        )

    def detach(self, token: str) -> None:
        try:
            self.client.v1.payment_methods.detach(token)
        except stripe.InvalidRequestError:
            return  # already detached (or deleted at Stripe): the outcome wanted
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None

    def charge(
        self,
        amount_minor: int,
        currency: str,
        customer_id: str,
        payment_method: str,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult:
        params: Any = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "customer": customer_id,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "off_session": True,
            "confirm": True,
            "description": description,
            "metadata": {"idempotency_key": idempotency_key},
        }
        try:
            intent = self.client.v1.payment_intents.create(
                params, options={"idempotency_key": idempotency_key}
            )
        except stripe.CardError as exc:
            code, message = _reason(exc)
            intent_id = _error_intent_id(exc)
            return ChargeResult("failed", amount_minor, currency, intent_id, code, message)
        except stripe.InvalidRequestError as exc:
            code = exc.code or "invalid_request"
            message = exc.user_message or "Stripe refused the charge request"
            return ChargeResult("failed", amount_minor, currency, None, code, message)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None
        if intent.status == "succeeded":
            return ChargeResult("succeeded", int(intent.amount), currency, str(intent.id))
        if intent.status in {"requires_action", "requires_payment_method"}:
            return ChargeResult(
                "failed",
                amount_minor,
                currency,
                str(intent.id),
                "authentication_required",
                "the card needs the customer to authenticate this payment",
            )
        raise ProviderUnavailable(
            f"Stripe left PaymentIntent {intent.id} in status {intent.status!r}; retry later with "
            "the same request"
        )

    def refund(self, charge_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        try:
            refund = self.client.v1.refunds.create(
                {"payment_intent": charge_id, "amount": amount_minor},
                options={"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as exc:
            raise PaymentError(
                f"Stripe refused the refund: {exc.user_message or 'invalid request'}",
                code=exc.code or "refund_failed",
            ) from None
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None
        status: ChargeStatus = "failed" if refund.status in {"failed", "canceled"} else "succeeded"
        return RefundResult(
            status,
            int(refund.amount),
            str(refund.currency).upper(),
            str(refund.id),
            refund.failure_reason if status == "failed" else None,
        )

    def _call(self, request: Any) -> Any:
        try:
            return request()
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None


def _reason(exc: stripe.CardError) -> tuple[str, str]:
    error = _error_body(exc)
    code = error.get("decline_code") or exc.code or "card_declined"
    message = exc.user_message or error.get("message") or "Your card was declined."
    return str(code), str(message)


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    return error if isinstance(error, dict) else {}


def _error_intent_id(exc: stripe.StripeError) -> str | None:
    intent = _error_body(exc).get("payment_intent")
    if isinstance(intent, dict) and isinstance(intent.get("id"), str):
        return str(intent["id"])
    return None


def _unavailable(exc: stripe.StripeError) -> ProviderUnavailable:
    kind = type(exc).__name__
    return ProviderUnavailable(
        f"Stripe could not be used ({kind}); nothing is known about the request: retry it with "
        "the same Idempotency-Key"
    )
