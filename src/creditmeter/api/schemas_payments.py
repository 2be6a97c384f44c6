"""Request and response bodies of payment methods, payments, purchases and auto top-up. Money is
integer minor units with an ISO 4217 currency; credits are decimal strings; requests reject unknown
fields. A card number is accepted only to be handed to the sandbox's tokenizer: it is never stored,
logged or echoed back (responses show the brand and the last four digits)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StrictInt, StringConstraints, model_validator

from creditmeter.api.schemas import PositiveCredits, Request, checked_text
from creditmeter.api.schemas_billing import CreditPrice, Money

Token = Annotated[
    str,
    StringConstraints(pattern=r"^(tok|pm)_[A-Za-z0-9_]{1,250}$"),
    Field(
        description="A token from the processor: tok_… or pm_… (Stripe.js; sandbox test tokens)."
    ),
]
PackageId = Annotated[
    str, StringConstraints(min_length=1, max_length=40), AfterValidator(checked_text)
]
ObjectId = Annotated[
    str, StringConstraints(min_length=1, max_length=40), AfterValidator(checked_text)
]


class CardIn(Request):
    number: Annotated[str, StringConstraints(min_length=1, max_length=40)] = Field(
        description="The card number (sandbox only; spaces and dashes allowed). Never stored."
    )
    exp_month: int = Field(description="1-12.")
    exp_year: int = Field(description="Four digits (two are read as 20YY).")
    cvc: Annotated[str, StringConstraints(max_length=4)] | None = Field(
        default=None, description="Checked for shape, never stored."
    )


class PaymentMethodIn(Request):
    card: CardIn | None = Field(default=None, description="A card to tokenize (sandbox).")
    token: Token | None = None
    default: bool = Field(
        default=False,
        description="Make it the default (the organization's first method always is).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> PaymentMethodIn:
        if (self.card is None) == (self.token is None):
            raise ValueError("send either card or token")
        return self


class PaymentMethodUpdate(Request):
    default: Literal[True] = Field(description="true: make this the default payment method.")


class PaymentMethodOut(BaseModel):
    id: str
    provider: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    default: bool
    created_at: datetime
    detached_at: datetime | None


class PaymentMethodsOut(BaseModel):
    data: list[PaymentMethodOut]


class PaymentOut(BaseModel):
    id: str
    kind: Literal["charge", "refund"]
    purpose: Literal["purchase", "invoice", "auto_top_up"]
    reference_id: str = Field(description="What it paid for: a purchase or an invoice id.")
    payment_method_id: str | None
    amount: Money
    status: Literal["succeeded", "failed"]
    failure_code: str | None = Field(description="The processor's reason, e.g. card_declined.")
    failure_message: str | None
    provider: str
    provider_id: str | None = Field(description="The charge or refund at the processor.")
    refunded_minor: int = Field(
        description="A charge: what succeeded refunds gave back of it, in minor units (0 for a "
        "refund)."
    )
    refund_of: str | None = Field(description="A refund: the charge (payment id) it refunds.")
    created_at: datetime


class PurchaseIn(Request):
    package: PackageId | None = Field(default=None, description="A package id (GET /v1/packages).")
    credits: PositiveCredits | None = Field(
        default=None, description="A custom amount, within the bounds of GET /v1/packages."
    )
    payment_method: ObjectId | None = Field(
        default=None,
        description="A payment method id; default: the organization's default. Charge only.",
    )
    billing: Literal["charge", "on_account"] = Field(
        default="charge",
        description="charge: the card now. on_account: no card; billed as a package line on the "
        "invoice of the month (plans with packages_on_account only, else 409).",
    )


class PurchaseOut(BaseModel):
    id: str
    organization_id: str
    environment: str
    purpose: Literal["purchase", "auto_top_up"]
    status: Literal["pending", "succeeded", "failed"]
    package: str | None
    credits: str
    price_per_credit: CreditPrice
    amount: Money
    billing: Literal["charge", "on_account"]
    payment_method_id: str | None = Field(description="The card charged; null on account.")
    payment_id: str | None
    invoice_id: str | None = Field(
        description="On account: the invoice that billed it (null until its month is invoiced)."
    )
    lot_id: str | None = Field(description="The purchase lot granted (on success).")
    expires_at: datetime | None = Field(description="When the purchased credits expire.")
    failure_code: str | None
    failure_message: str | None
    created_at: datetime
    completed_at: datetime | None


class AutoTopUpIn(Request):
    enabled: bool
    threshold_credits: PositiveCredits = Field(
        description="Buy when available credits fall below this."
    )
    package: PackageId | None = None
    credits: PositiveCredits | None = Field(default=None, description="A custom amount instead.")
    monthly_limit_money: Annotated[int, Field(ge=1, le=10**12)] = Field(
        description="The most auto top-up may spend per billing cycle, in minor units."
    )


class AutoTopUpOut(BaseModel):
    enabled: bool
    threshold_credits: str
    package: str | None
    credits: str
    monthly_limit_money: Money
    spent_this_cycle: Money
    disabled_reason: str | None
    last_attempt_at: datetime | None
    updated_at: datetime


class RefundIn(Request):
    amount_minor: Annotated[StrictInt, Field(gt=0, le=10**15)] | None = Field(
        default=None,
        description="How much to refund, in minor units; default: everything not yet refunded.",
    )
    reason: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
        AfterValidator(checked_text),
    ] = Field(description="Why (kept with the refund and in the ledger).")


class RefundOut(BaseModel):
    id: str
    payment_id: str = Field(description="The charge refunded.")
    organization_id: str
    environment: Literal["live", "test"]
    status: Literal["pending", "succeeded", "failed"] = Field(
        description="pending: the processor's answer is not recorded yet; retry the request with "
        "the same Idempotency-Key to finish it."
    )
    amount: Money
    credits: str = Field(
        description="Credits taken back (a refund of a purchase: amount / the purchase's price "
        "per credit, rounded up); 0 for an invoice payment."
    )
    lot_id: str | None = Field(description="The purchase lot the credits came back from.")
    reason: str
    failure_code: str | None = Field(description="The processor's reason when it failed.")
    failure_message: str | None
    refund_payment_id: str | None = Field(description="The refund's row in the billing history.")
    transaction_id: str | None = Field(
        description="The ledger transaction (kind refund) that took the credits back."
    )
    created_at: datetime
    completed_at: datetime | None
