"""The payment provider interface: what creditmeter asks of a card processor, and what it gets back.

Results are pure, immutable values. A charge that the processor answered is a ``ChargeResult``, whether
it succeeded or was declined: a decline is an outcome to record, not an exception. An exception
(``ProviderUnavailable``) means the processor could not be reached or did not answer usably; nothing is
known about the charge, and the caller retries with the same idempotency key, which the processor
uses to return the first attempt's result instead of charging again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from creditmeter.errors import CreditmeterError

ChargeStatus = Literal["succeeded", "failed"]


@dataclass(frozen=True)
class CardSource:
    """A card as the API received it, for the provider's tokenizer: a raw number (sandbox only,
    never stored) or a token the processor issued (``tok_…``, ``pm_…``)."""

    token: str | None = None
    number: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    cvc: str | None = None

    def __repr__(self) -> str:
        if self.number is not None:
            return f"CardSource(number='…{self.number[-4:]}')"
        return f"CardSource(token={self.token!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class AttachedMethod:
    """A payment method attached to a customer: what creditmeter may store about it."""

    token: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class ChargeResult:
    """The processor's answer to a charge. ``provider_id`` identifies the charge at the processor
    (for refunds and reconciliation; it may be None for a charge refused before it was created).
    ``failure_code`` is the most specific reason (``insufficient_funds`` rather than
    ``card_declined``); ``failure_message`` is for people."""

    status: ChargeStatus
    amount_minor: int
    currency: str
    provider_id: str | None
    failure_code: str | None = None
    failure_message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class RefundResult:
    status: ChargeStatus
    amount_minor: int
    currency: str
    provider_id: str | None
    failure_code: str | None = None
    failure_message: str | None = None


class PaymentError(CreditmeterError):
    """A payment method or charge the processor refused outright (402)."""

    code = "payment_failed"
    status_code = 402
    title = "Payment failed"


class ProviderUnavailable(CreditmeterError):
    """The processor could not be reached or gave no usable answer: nothing is known about the
    request; retry it with the same idempotency key (502)."""

    code = "payment_provider_unavailable"
    status_code = 502
    title = "Payment provider unavailable"


class ProviderMisconfigured(CreditmeterError):
    """The operator's payment settings are wrong (unknown provider, missing Stripe key): 500."""

    code = "payment_provider_misconfigured"
    status_code = 500
    title = "Payment provider misconfigured"


class PaymentProvider(Protocol):
    """A card processor. Every call that creates something takes an idempotency key: the same key
    returns the first result and never creates (or charges) twice."""

    name: str

    def create_customer(self, organization_id: str, description: str, idempotency_key: str) -> str:
        """Create the processor's customer for an organization; returns its id."""
        ...

    def attach(self, customer_id: str, source: CardSource) -> AttachedMethod:
        """Tokenize ``source`` if needed and attach it to the customer (``PaymentError`` when the
        processor refuses the card)."""
        ...

    def detach(self, token: str) -> None:
        """Detach a payment method; detaching one already detached is not an error."""
        ...

    def charge(
        self,
        amount_minor: int,
        currency: str,
        customer_id: str,
        payment_method: str,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult:
        """Charge the stored method now, off-session (the customer is not present)."""
        ...

    def refund(self, charge_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        """Refund part or all of a succeeded charge."""
        ...
