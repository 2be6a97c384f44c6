"""Request and response bodies of plans, packages and subscriptions. Credits are decimal strings;
money is integer minor units with an ISO 4217 currency; requests reject unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from creditmeter.api.schemas import PositiveCredits, Request, checked_text

MAX_ROLLOVER_CYCLES = 120

RolloverCycles = Annotated[
    int | Literal["never"],
    Field(
        description="Cycles a plan lot stays spendable after its own (0: to the end of its own "
        'cycle), or "never" (it never expires).'
    ),
]


def _rollover(value: Any) -> Any:
    if value is None or value == "never":
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= MAX_ROLLOVER_CYCLES
    ):
        raise ValueError(
            f'send a whole number of cycles from 0 to {MAX_ROLLOVER_CYCLES}, or "never"'
        )
    return value


RolloverIn = Annotated[
    int | Literal["never"] | None,
    BeforeValidator(_rollover),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_ROLLOVER_CYCLES},
                {"const": "never"},
                {"type": "null"},
            ]
        }
    ),
]


class Money(BaseModel):
    amount_minor: int = Field(description="Integer minor units of the currency (cents for USD).")
    currency: str = Field(description="ISO 4217 code.")


class CreditPrice(BaseModel):
    amount: str = Field(description="Price of one credit in the currency's major unit, e.g. 0.06.")
    currency: str


class PlanOut(BaseModel):
    id: str
    name: str
    description: str
    monthly_fee: Money
    allocation_credits: str | None = Field(
        description="Credits allocated each cycle; null when each subscription sets its own."
    )
    rollover_cycles: RolloverCycles
    custom_terms: bool = Field(
        description="Subscriptions set allocation_credits and rollover_cycles themselves."
    )
    credit_price: CreditPrice
    purchase_expiry_months: int | Literal["never"]
    overage_in_arrears: bool
    packages_on_account: bool = Field(
        description="Packages may be bought on account (billing: on_account), invoiced monthly."
    )
    cancel_after_dunning: bool = Field(
        description="A subscription is canceled at the end of the cycle in which an invoice's "
        "dunning runs out."
    )
    self_serve: bool = Field(
        description="An organization's own org:admin key may choose this plan (PUT …/subscription);"
        " false: only an operator may (custom terms, or credit extended)."
    )


class PlansOut(BaseModel):
    time_zone: str = Field(description="The billing time zone: cycles are its calendar months.")
    data: list[PlanOut]


class PackagePrice(BaseModel):
    plan: str
    price: Money


class PackageOut(BaseModel):
    id: str
    name: str
    description: str
    credits: str
    prices: list[PackagePrice] = Field(description="The package's price on each plan.")


class CustomPackagesOut(BaseModel):
    min_credits: str
    max_credits: str
    step_credits: str
    credit_prices: list[PackagePrice] = Field(
        description="The price of one credit on each plan (a custom amount costs credits x this, "
        "rounded half to even to a minor unit)."
    )


class PackagesOut(BaseModel):
    data: list[PackageOut]
    custom: CustomPackagesOut


class SubscriptionIn(Request):
    plan: Annotated[
        str, StringConstraints(min_length=1, max_length=40), AfterValidator(checked_text)
    ]
    allocation_credits: PositiveCredits | None = Field(
        default=None, description="Plans with custom terms only (enterprise)."
    )
    rollover_cycles: RolloverIn = Field(
        default=None, description="Plans with custom terms only (enterprise)."
    )


class PeriodOut(BaseModel):
    label: str = Field(description="The month in the billing time zone, e.g. 2026-01.")
    start: datetime
    end: datetime


class AllocationOut(BaseModel):
    kind: Literal["initial", "cycle", "upgrade"]
    plan: str
    credits: str
    fee: Money
    prorated: bool
    lot_id: str | None
    expires_at: datetime | None
    created_at: datetime


class NextAllocationOut(BaseModel):
    at: datetime
    plan: str
    credits: str


class PendingChangeOut(BaseModel):
    action: Literal["change", "cancel"]
    effective_at: datetime
    plan: str | None
    allocation_credits: str | None
    rollover_cycles: RolloverCycles | None


class WithheldOut(BaseModel):
    credits: str = Field(description="The full period's plan credits that were withheld.")
    fee: Money = Field(description="The full period's fee, not billed while withheld.")
    withheld_at: datetime
    reason: Literal["suspended_for_nonpayment"]


class SubscriptionOut(BaseModel):
    id: str
    organization_id: str
    environment: str
    status: Literal["active", "canceled"]
    plan: str
    plan_name: str
    allocation_credits: str
    rollover_cycles: RolloverCycles
    monthly_fee: Money
    credit_price: CreditPrice
    purchase_expiry_months: int | Literal["never"]
    overage_in_arrears: bool
    packages_on_account: bool = Field(
        description="Packages may be bought on account (billing: on_account), invoiced monthly."
    )
    cancel_after_dunning: bool = Field(
        description="The subscription is canceled at the end of the cycle in which an invoice's "
        "dunning runs out."
    )
    current_period: PeriodOut
    current_period_allocations: list[AllocationOut] = Field(
        description="Plan credits allocated in the current period, with the fee each owes."
    )
    allocation_withheld: WithheldOut | None = Field(
        description="The current period's plan credits, withheld because the organization is "
        "suspended for non-payment; the rest of the period is allocated when it is paid up."
    )
    allocated_through: datetime = Field(description="The end of the last period allocated.")
    next_allocation: NextAllocationOut | None
    pending_change: PendingChangeOut | None
    started_at: datetime
    canceled_at: datetime | None
    updated_at: datetime
