"""Payments: a provider interface, the sandbox and Stripe providers, payment methods and the billing
history.

Design note.

- **One interface** (``provider.PaymentProvider``): create a customer, attach a card (from a token,
  or a raw number the sandbox tokenizes), detach it, charge it off-session with an idempotency key,
  refund. Results are pure values; a decline is a ``ChargeResult`` with ``status="failed"`` and the
  processor's reason, not an exception. ``ProviderUnavailable`` means nothing is known: retry with
  the same key.
- **Two providers**, chosen by ``CREDITMETER_PAYMENT_PROVIDER``: ``sandbox`` (default; a card
  processor's test mode with its own tables and deterministic test cards) and ``stripe``
  (PaymentIntents confirmed off-session; ``CREDITMETER_STRIPE_SECRET_KEY``).
- **No card number is stored**, by creditmeter or by the sandbox: a payment method row holds the
  processor's token, brand, last four digits and expiry. ``cards.py`` (pure) checks numbers (Luhn)
  and expiry dates before anything is sent anywhere.
- **No lock across the network**: calls to the processor happen between our write transactions,
  never inside one (``methods.py``, ``billing/purchases.py``).
- **Billing history** (``history.py``): one ``payments`` row per charge or refund attempt, keyed by
  the processor's idempotency key (unique).
"""

from __future__ import annotations

from creditmeter.billing.payments.provider import (
    AttachedMethod,
    CardSource,
    ChargeResult,
    PaymentError,
    PaymentProvider,
    ProviderMisconfigured,
    ProviderUnavailable,
    RefundResult,
)
from creditmeter.kit.db import Database

PROVIDERS = ("sandbox", "stripe")


def build_provider(
    name: str, db: Database, stripe_secret_key: str | None = None
) -> PaymentProvider:
    """The configured provider; a ``ProviderMisconfigured`` naming what to fix otherwise."""
    if name == "sandbox":
        from creditmeter.billing.payments.sandbox import SandboxProvider

        return SandboxProvider(db)
    if name == "stripe":
        if not stripe_secret_key:
            raise ProviderMisconfigured(
                "CREDITMETER_PAYMENT_PROVIDER=stripe needs CREDITMETER_STRIPE_SECRET_KEY "
                "(sk_test_… or sk_live_…, or a restricted rk_… key)"
            )
        from creditmeter.billing.payments.stripe_provider import StripeProvider

        return StripeProvider(stripe_secret_key)
    raise ProviderMisconfigured(
        f"unknown payment provider {name!r} in CREDITMETER_PAYMENT_PROVIDER; use one of: "
        f"{', '.join(PROVIDERS)}"
    )


__all__ = [
    "PROVIDERS",
    "AttachedMethod",
    "CardSource",
    "ChargeResult",
    "PaymentError",
    "PaymentProvider",
    "ProviderMisconfigured",
    "ProviderUnavailable",
    "RefundResult",
    "build_provider",
]
