"""Refunds through the Stripe provider against recorded responses: a refund Stripe reports as
failed is an outcome with its ``failure_reason``, and a refund Stripe refuses outright (the charge
is refunded already) is a ``PaymentError`` naming Stripe's code; the refund service records both as
a failed refund."""

from __future__ import annotations

import pytest

from creditmeter.billing.payments.provider import PaymentError
from tests.unit.test_stripe_provider import provider


def test_a_refund_stripe_reports_failed_carries_its_failure_reason() -> None:
    stripe_, wire = provider((200, "refund_failed.json"))
    refund = stripe_.refund("pi_3MtwC2LkdIwHu7ix0ZcZ8E7g", 6000, "refund:ref_01")
    assert (refund.status, refund.amount_minor, refund.currency) == ("failed", 6000, "USD")
    assert (refund.failure_code, refund.provider_id) == (
        "expired_or_canceled_card",
        "re_3MtwC2LkdIwHu7ix1pQ5aB7x",
    )
    [sent] = wire.sent
    assert sent.form == {"payment_intent": ["pi_3MtwC2LkdIwHu7ix0ZcZ8E7g"], "amount": ["6000"]}
    assert sent.headers["Idempotency-Key"] == "refund:ref_01"


def test_a_refund_stripe_refuses_is_a_payment_error_with_its_code() -> None:
    stripe_, _ = provider((400, "charge_already_refunded.json"))
    with pytest.raises(PaymentError) as raised:
        stripe_.refund("pi_3MtwC2LkdIwHu7ix0ZcZ8E7g", 6000, "refund:ref_02")
    assert raised.value.code == "charge_already_refunded"
