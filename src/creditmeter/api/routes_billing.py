"""Plans, credit packages and an organization's subscription."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy.orm import Session

from creditmeter.api.deps import (
    ADMIN_SCOPES,
    DB,
    READ_SCOPES,
    Caller,
    Env,
    IdempotencyKey,
    authorize_org,
    environment_for,
    get_settings,
)
from creditmeter.api.idempotent import run_once
from creditmeter.api.schemas_billing import (
    PackagesOut,
    PlansOut,
    SubscriptionIn,
    SubscriptionOut,
)
from creditmeter.billing import domain, org_time, test_clocks
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.domain import Catalog, Plan, Terms
from creditmeter.billing.models import PlanAllocation
from creditmeter.billing.plans import load_catalog
from creditmeter.config import Settings
from creditmeter.kit.credits import format_credits


@asynccontextmanager
async def _load_plans(app: FastAPI) -> AsyncIterator[None]:
    """Read the plans file when the server starts, so a bad file stops it with the file's problems
    instead of failing the first billing request."""
    load_catalog(app.state.settings.plans_path)
    yield


router = APIRouter(tags=["billing"], lifespan=_load_plans)


def get_catalog(settings: Annotated[Settings, Depends(get_settings)]) -> Catalog:
    return load_catalog(settings.plans_path)


Plans = Annotated[Catalog, Depends(get_catalog)]


def _money(amount_minor: int, currency: str) -> dict[str, Any]:
    return {"amount_minor": amount_minor, "currency": currency}


def _months(value: int | None) -> int | str:
    return "never" if value is None else value


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.id,
        "name": plan.name,
        "description": plan.description,
        "monthly_fee": _money(plan.monthly_fee_minor, plan.currency),
        "allocation_credits": (
            format_credits(plan.allocation_micros) if plan.allocation_micros is not None else None
        ),
        "rollover_cycles": _months(plan.rollover_cycles),
        "custom_terms": plan.custom_terms,
        "credit_price": {
            "amount": domain.format_price(plan.credit_price_micros),
            "currency": plan.currency,
        },
        "purchase_expiry_months": _months(plan.purchase_expiry_months),
        "overage_in_arrears": plan.overage_in_arrears,
        "packages_on_account": plan.packages_on_account,
        "cancel_after_dunning": plan.cancel_after_dunning,
        "self_serve": domain.operator_only_reason(plan) is None,
    }


@router.get("/v1/plans", response_model=PlansOut)
def list_plans(caller: Caller, catalog: Plans) -> Any:
    """Every plan the operator offers, and the billing time zone. Any valid API key."""
    return {"time_zone": catalog.time_zone, "data": [_plan_json(p) for p in catalog.plans.values()]}


def _prices(catalog: Catalog, credits_micros: int) -> list[dict[str, Any]]:
    return [
        {
            "plan": plan.id,
            "price": _money(
                domain.purchase_price_minor(
                    credits_micros, plan.credit_price_micros, plan.currency
                ),
                plan.currency,
            ),
        }
        for plan in catalog.plans.values()
    ]


@router.get("/v1/packages", response_model=PackagesOut)
def list_packages(caller: Caller, catalog: Plans) -> Any:
    """Credit packages with their price on each plan, and the bounds of a custom amount. Any valid
    API key."""
    custom = catalog.custom_packages
    return {
        "data": [
            {
                "id": p.id,
                "name": p.name,
                "description": p.description,
                "credits": format_credits(p.credits_micros),
                "prices": _prices(catalog, p.credits_micros),
            }
            for p in catalog.packages.values()
        ],
        "custom": {
            "min_credits": format_credits(custom.min_micros),
            "max_credits": format_credits(custom.max_micros),
            "step_credits": format_credits(custom.step_micros),
            "credit_prices": _prices(catalog, 1_000_000),
        },
    }


def _allocation_json(row: PlanAllocation) -> dict[str, Any]:
    return {
        "kind": row.kind,
        "plan": row.plan,
        "credits": format_credits(row.credits_micros),
        "fee": _money(row.fee_minor, row.currency),
        "prorated": row.share_remaining_us != row.share_total_us,
        "lot_id": row.lot_id,
        "expires_at": row.expires_at,
        "created_at": row.created_at,
    }


def _terms_json(terms: Terms) -> dict[str, Any]:
    return {
        "plan": terms.plan,
        "plan_name": terms.plan_name,
        "allocation_credits": format_credits(terms.allocation_micros),
        "rollover_cycles": _months(terms.rollover_cycles),
        "monthly_fee": _money(terms.monthly_fee_minor, terms.currency),
        "credit_price": {
            "amount": domain.format_price(terms.credit_price_micros),
            "currency": terms.currency,
        },
        "purchase_expiry_months": _months(terms.purchase_expiry_months),
        "overage_in_arrears": terms.overage_in_arrears,
        "packages_on_account": terms.packages_on_account,
        "cancel_after_dunning": terms.cancel_after_dunning,
    }


def subscription_json(state: subs.SubscriptionState) -> dict[str, Any]:
    sub, pending = state.subscription, state.pending_terms
    next_terms = pending or state.terms
    renews = sub.status == subs.ACTIVE and sub.pending_action != "cancel"
    body = {
        "id": sub.id,
        "organization_id": sub.organization_id,
        "environment": sub.environment,
        "status": sub.status,
        **_terms_json(state.terms),
        "current_period": {
            "label": state.period.label,
            "start": state.period.start,
            "end": state.period.end,
        },
        "current_period_allocations": [_allocation_json(a) for a in state.allocations],
        "allocation_withheld": (
            {
                "credits": format_credits(state.withheld.credits_micros),
                "fee": _money(state.withheld.fee_minor, state.withheld.currency),
                "withheld_at": state.withheld.withheld_at,
                "reason": "suspended_for_nonpayment",
            }
            if state.withheld
            else None
        ),
        "allocated_through": sub.allocated_through,
        "next_allocation": (
            {
                "at": sub.allocated_through,
                "plan": next_terms.plan,
                "credits": format_credits(next_terms.allocation_micros),
            }
            if renews
            else None
        ),
        "pending_change": (
            {
                "action": sub.pending_action,
                "effective_at": sub.pending_effective_at,
                "plan": pending.plan if pending else None,
                "allocation_credits": (
                    format_credits(pending.allocation_micros) if pending else None
                ),
                "rollover_cycles": _months(pending.rollover_cycles) if pending else None,
            }
            if sub.pending_action
            else None
        ),
        "started_at": sub.started_at,
        "canceled_at": sub.canceled_at,
        "updated_at": sub.updated_at,
    }
    return SubscriptionOut.model_validate(body).model_dump(mode="json")


@router.put("/v1/organizations/{org_id}/subscription", response_model=SubscriptionOut)
def put_subscription(
    org_id: str,
    body: SubscriptionIn,
    caller: Caller,
    db: DB,
    catalog: Plans,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """Put the organization on a plan. The first subscription allocates the rest of the current
    cycle's credits at once (prorated, like its fee); an upgrade applies at once with the prorated
    difference; a downgrade waits for the next cycle; the current plan again withdraws a pending
    change. `allocation_credits` and `rollover_cycles` are for plans with custom terms
    (enterprise). An operator key, or an org:admin key of this organization for a plan that is
    `self_serve` (403 `custom_terms_operator_only` otherwise: custom terms and credit extended are
    the operator's to give)."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    env = environment_for(caller, environment)
    request = subs.SubscriptionRequest(body.plan, body.allocation_credits, body.rollover_cycles)
    if not caller.is_operator:
        subs.refuse_operator_terms(catalog, request)
    subs.desired_terms(catalog, request)  # a 422 before anything is locked

    def apply(session: Session) -> dict[str, Any]:
        test_clocks.refuse_live_on_clock(session, org_id, env)
        now = org_time.now_for(session, org_id)  # a clocked organization's now: its clock's
        return subscription_json(subs.subscribe(session, catalog, org_id, env, request, now))

    return run_once(
        db,
        f"subscription:{org_id}",
        idempotency_key,
        {"environment": env, "method": "PUT", **body.model_dump(mode="json")},
        apply,
        status_code=200,
    )


@router.get("/v1/organizations/{org_id}/subscription", response_model=SubscriptionOut)
def get_subscription(
    org_id: str, caller: Caller, db: DB, catalog: Plans, environment: Env = None
) -> Any:
    """The organization's plan, current period, allocations in it, next allocation and any pending
    change."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    with db.read() as session:
        now = org_time.now_for(session, org_id)
        return subscription_json(subs.get(session, catalog, org_id, env, now))


@router.delete("/v1/organizations/{org_id}/subscription", response_model=SubscriptionOut)
def cancel_subscription(
    org_id: str,
    caller: Caller,
    db: DB,
    catalog: Plans,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """Cancel at the end of the current cycle (recorded as a pending change; PUT the plan again to
    withdraw it). An operator key, or an org:admin key of this organization."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    env = environment_for(caller, environment)

    def apply(session: Session) -> dict[str, Any]:
        now = org_time.now_for(session, org_id)
        return subscription_json(subs.cancel(session, catalog, org_id, env, now))

    return run_once(
        db,
        f"subscription:{org_id}",
        idempotency_key,
        {"environment": env, "method": "DELETE"},
        apply,
        status_code=200,
    )
