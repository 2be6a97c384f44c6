"""The Stripe provider against Stripe's documented request and response shapes.

Only the network is replaced: a ``stripe.HTTPClient`` that records each request (method, URL, headers,
form body) and answers with recorded JSON from ``stripe_recorded/`` (shapes from Stripe's API
reference: a Customer, an attached card PaymentMethod, a succeeded PaymentIntent, a Refund, and the
402 ``card_error`` bodies of a decline with ``decline_code`` and of ``authentication_required``).
Everything between the provider and the wire is the real ``stripe`` package."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import stripe

from creditmeter.billing.payments import build_provider
from creditmeter.billing.payments.provider import (
    CardSource,
    PaymentError,
    ProviderMisconfigured,
    ProviderUnavailable,
)
from creditmeter.billing.payments.stripe_provider import StripeProvider
from creditmeter.errors import InvalidRequest
from creditmeter.kit.db import Database

RECORDED = Path(__file__).parent / "stripe_recorded"


@dataclass
class Sent:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]


class RecordedStripe(stripe.HTTPClient):
    """Stripe's HTTP boundary: answers queued (status, recorded file) pairs, records every request."""

    name = "recorded"

    def __init__(self, *answers: tuple[int, str]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[Sent] = []

    def request(
        self, method: str, url: str, headers: Any, post_data: Any = None, **_: Any
    ) -> tuple[str, int, dict[str, str]]:
        body = post_data.decode() if isinstance(post_data, bytes) else (post_data or "")
        self.sent.append(
            Sent(method.upper(), urlsplit(url).path, dict(headers or {}), parse_qs(body))
        )
        status, name = self.answers.pop(0)
        return (RECORDED / name).read_text(), status, {"request-id": "req_recorded"}

    def close(self) -> None:
        return None


def provider(*answers: tuple[int, str]) -> tuple[StripeProvider, RecordedStripe]:
    wire = RecordedStripe(*answers)
    return StripeProvider("sk_test_recorded", http_client=wire, max_network_retries=0), wire


def test_a_customer_is_created_with_the_organization_and_an_idempotency_key() -> None:
    stripe_, wire = provider((200, "customer.json"))
    assert stripe_.create_customer("org_01", "Acme AI", "customer:org_01:live") == (
        "cus_NffrFeUfNV2Hib"
    )
    [sent] = wire.sent
    assert (sent.method, sent.path) == ("POST", "/v1/customers")
    assert sent.form == {"description": ["Acme AI"], "metadata[organization_id]": ["org_01"]}
    assert sent.headers["Idempotency-Key"] == "customer:org_01:live"
    assert sent.headers["Authorization"] == "Bearer sk_test_recorded"


def test_a_pm_token_is_attached_and_only_brand_last4_and_expiry_come_back() -> None:
    stripe_, wire = provider((200, "payment_method_attached.json"))
    attached = stripe_.attach("cus_NffrFeUfNV2Hib", CardSource(token="pm_1MqM05LkdIwHu7ixlDxxO6Mc"))
    assert attached.token == "pm_1MqM05LkdIwHu7ixlDxxO6Mc"
    assert (attached.brand, attached.last4, attached.exp_month, attached.exp_year) == (
        "visa",
        "4242",
        8,
        2026,
    )
    [sent] = wire.sent
    assert (sent.method, sent.path) == (
        "POST",
        "/v1/payment_methods/pm_1MqM05LkdIwHu7ixlDxxO6Mc/attach",
    )
    assert sent.form == {"customer": ["cus_NffrFeUfNV2Hib"]}


def test_a_tok_token_becomes_a_payment_method_then_is_attached() -> None:
    stripe_, wire = provider(
        (200, "payment_method_attached.json"), (200, "payment_method_attached.json")
    )
    stripe_.attach("cus_NffrFeUfNV2Hib", CardSource(token="tok_visa"))
    create, attach = wire.sent
    assert (create.method, create.path) == ("POST", "/v1/payment_methods")
    assert create.form == {"type": ["card"], "card[token]": ["tok_visa"]}
    assert attach.path == "/v1/payment_methods/pm_1MqM05LkdIwHu7ixlDxxO6Mc/attach"


def test_a_raw_card_number_never_goes_to_stripe() -> None:
    stripe_, wire = provider()
    with pytest.raises(InvalidRequest) as raised:
        stripe_.attach("cus_1", CardSource(number="4242424242424242", exp_month=1, exp_year=2030))
    assert raised.value.code == "raw_card_not_supported"
    assert wire.sent == []


def charge(stripe_: StripeProvider) -> Any:
    return stripe_.charge(
        6000,
        "USD",
        "cus_NffrFeUfNV2Hib",
        "pm_1MqM05LkdIwHu7ixlDxxO6Mc",
        "purchase:pur_01",
        "creditmeter purchase pur_01",
    )


def test_a_charge_is_one_off_session_payment_intent_confirmed_with_the_purchase_as_key() -> None:
    stripe_, wire = provider((200, "payment_intent_succeeded.json"))
    result = charge(stripe_)
    assert (result.status, result.amount_minor, result.currency) == ("succeeded", 6000, "USD")
    assert result.provider_id == "pi_3MtwBwLkdIwHu7ix28a3tqPa"
    assert result.failure_code is None
    [sent] = wire.sent
    assert (sent.method, sent.path) == ("POST", "/v1/payment_intents")
    assert sent.headers["Idempotency-Key"] == "purchase:pur_01"
    assert sent.form == {
        "amount": ["6000"],
        "currency": ["usd"],
        "customer": ["cus_NffrFeUfNV2Hib"],
        "payment_method": ["pm_1MqM05LkdIwHu7ixlDxxO6Mc"],
        "payment_method_types[0]": ["card"],
        "off_session": ["true"],
        "confirm": ["true"],
        "description": ["creditmeter purchase pur_01"],
        "metadata[idempotency_key]": ["purchase:pur_01"],
    }


@pytest.mark.parametrize(
    ("recorded", "code", "intent"),
    [
        ("card_declined_insufficient_funds.json", "insufficient_funds", "pi_3MtwCkLkdIwHu7ix1jhE7b4D"),
        ("card_declined_generic.json", "generic_decline", "pi_3MtwDaLkdIwHu7ix0Gq0xkBt"),
        ("authentication_required.json", "authentication_required", "pi_3MtwEeLkdIwHu7ix0Rvq4yqm"),
    ],
)  # fmt: skip
def test_a_declined_card_is_a_failed_result_with_the_most_specific_reason(
    recorded: str, code: str, intent: str
) -> None:
    stripe_, _ = provider((402, recorded))
    result = charge(stripe_)
    assert (result.status, result.failure_code, result.provider_id) == ("failed", code, intent)
    assert result.failure_message
    assert not result.succeeded


def test_a_rate_limit_raises_provider_unavailable_so_the_caller_retries_with_the_same_key() -> None:
    stripe_, _ = provider((429, "rate_limit.json"))
    with pytest.raises(ProviderUnavailable):
        charge(stripe_)


def test_a_refund_names_the_payment_intent_and_has_its_own_key() -> None:
    stripe_, wire = provider((200, "refund.json"))
    refund = stripe_.refund("pi_3MtwBwLkdIwHu7ix28a3tqPa", 2000, "refund:pay_01")
    assert (refund.status, refund.amount_minor, refund.currency) == ("succeeded", 2000, "USD")
    assert refund.provider_id == "re_3MtwBwLkdIwHu7ix0DKpGNgA"
    [sent] = wire.sent
    assert (sent.method, sent.path) == ("POST", "/v1/refunds")
    assert sent.form == {"payment_intent": ["pi_3MtwBwLkdIwHu7ix28a3tqPa"], "amount": ["2000"]}
    assert sent.headers["Idempotency-Key"] == "refund:pay_01"


def test_detach_posts_to_the_payment_method() -> None:
    stripe_, wire = provider((200, "payment_method_attached.json"))
    stripe_.detach("pm_1MqM05LkdIwHu7ixlDxxO6Mc")
    assert (wire.sent[0].method, wire.sent[0].path) == (
        "POST",
        "/v1/payment_methods/pm_1MqM05LkdIwHu7ixlDxxO6Mc/detach",
    )


def test_the_provider_setting_is_checked() -> None:
    db = Database("sqlite://")
    assert build_provider("sandbox", db).name == "sandbox"
    assert build_provider("stripe", db, "sk_test_x").name == "stripe"
    with pytest.raises(ProviderMisconfigured, match="CREDITMETER_STRIPE_SECRET_KEY"):
        build_provider("stripe", db)
    with pytest.raises(ProviderMisconfigured, match="sandbox, stripe"):
        build_provider("paypal", db)
    db.dispose()


def test_a_card_refused_at_attach_is_a_402_with_the_reason() -> None:
    stripe_, _ = provider((402, "card_declined_generic.json"))
    with pytest.raises(PaymentError) as raised:
        stripe_.attach("cus_1", CardSource(token="pm_1MqM05LkdIwHu7ixlDxxO6Mc"))
    assert raised.value.code == "generic_decline"
    assert raised.value.status_code == 402


def test_recorded_bodies_are_json() -> None:
    for path in RECORDED.glob("*.json"):
        json.loads(path.read_text())
