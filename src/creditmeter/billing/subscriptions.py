"""Subscriptions: choose a plan, upgrade at once, downgrade or cancel at the next cycle.

Every function takes the caller's ``Session`` and never commits. Writes for one organization and
environment serialize on its ledger balance row (the same lock every credit change takes), so two
plan changes of one organization never interleave. Plan credits enter the ledger only through
``ledger.service.grant``, the one write path, as ``plan`` lots.

- **First subscription** (or a new one after a cancellation took effect): the rest of the current
  cycle's allocation and fee, prorated by the time left (``domain.allocation``), granted at once.
- **Upgrade** (more credits or a higher fee, nothing less; ``domain.classify_change``): the new terms
  apply at once; the difference in allocation and fee, prorated for the rest of the cycle, is granted
  and recorded. The new lot expires by the new plan's rule.
- **Downgrade, any other change, cancellation**: recorded as pending; the cycle close applies it at
  the start of the next cycle. Asking for the current terms again withdraws a pending change.
- Every allocation is a ``PlanAllocation`` row: its lot, and the fee it owes, for the invoice of its
  period to read. ``Subscription.allocated_through`` is the end of the last period allocated: if that
  moment has passed, the cycle close has not run yet and plan changes wait for it (409).
- **Suspended for non-payment**: a first subscription or an upgrade (which would allocate credits
  and owe their fee now) is refused, ``409 organization_suspended``; see ``billing.suspension``.
  The cycle close's allocation step is ``billing.renewal``.
- Each change publishes ``subscription.updated`` (``created``, ``upgraded``,
  ``downgrade_scheduled``, ``cancellation_scheduled``, ``pending_change_withdrawn``) and each plan
  lot ``credits.granted``, in the request's transaction (``billing.notices``); asking for what is
  already so publishes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from creditmeter.billing import domain, notices
from creditmeter.billing.domain import Catalog, Change, Period, Rollover, Terms
from creditmeter.billing.models import PlanAllocation, Subscription, WithheldAllocation
from creditmeter.errors import Conflict, Forbidden, InvalidRequest, NotFound
from creditmeter.kit.ids import new_id
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.orgs import service as orgs

ACTIVE = "active"
CANCELED = "canceled"


class SubscriptionNotFound(NotFound):
    code = "subscription_not_found"


class CustomTermsOperatorOnly(Forbidden):
    """An organization's own key asked for terms only the operator may give."""

    code = "custom_terms_operator_only"


class OrganizationSuspended(Conflict):
    """A change that would allocate credits now (and owe their fee) while the organization is
    suspended for non-payment."""

    code = "organization_suspended"


class CycleClosePending(Conflict):
    """A cycle boundary passed and the cycle close has not allocated the new cycle yet."""

    code = "cycle_close_pending"


@dataclass(frozen=True)
class SubscriptionRequest:
    plan: str
    allocation_micros: int | None = None
    rollover: Rollover = None


@dataclass(frozen=True)
class SubscriptionState:
    """A subscription, the period that contains ``now`` and its allocations in that period."""

    subscription: Subscription
    terms: Terms
    pending_terms: Terms | None
    period: Period
    allocations: list[PlanAllocation]
    #: The period's plan allocation, withheld while the organization is suspended (not released).
    withheld: WithheldAllocation | None = None


def desired_terms(catalog: Catalog, request: SubscriptionRequest) -> Terms:
    """The terms asked for, or a 422 naming the field to fix (checked before anything is locked)."""
    plan = catalog.plan(request.plan)
    if plan is None:
        known = ", ".join(catalog.plans)
        raise InvalidRequest(
            f"unknown plan {request.plan!r}; choose one of: {known}",
            code="unknown_plan",
            errors=[
                {"field": "plan", "type": "unknown_plan", "message": f"choose one of: {known}"}
            ],
        )
    try:
        return domain.terms_for(plan, request.allocation_micros, request.rollover)
    except domain.TermsError as exc:
        raise InvalidRequest(
            exc.message,
            code="invalid_terms",
            errors=[{"field": exc.field, "type": "invalid_terms", "message": exc.message}],
        ) from exc


def refuse_operator_terms(catalog: Catalog, request: SubscriptionRequest) -> None:
    """For an organization's own key: 403 ``custom_terms_operator_only`` when the plan asked for is
    one only the operator may give (``domain.operator_only_reason``). An unknown plan, and per
    subscription terms sent to a plan without custom terms, are left to ``desired_terms`` (422 for
    every caller)."""
    plan = catalog.plan(request.plan)
    reason = domain.operator_only_reason(plan) if plan is not None else None
    if reason is not None:
        raise CustomTermsOperatorOnly(
            f"{reason}: only the operator may put an organization on it; an organization key "
            "may choose a plan without custom terms, as published (GET /v1/plans)",
            errors=[{"field": "plan", "type": "custom_terms_operator_only", "message": reason}],
        )


def subscribe(
    session: Session,
    catalog: Catalog,
    organization_id: str,
    environment: str,
    request: SubscriptionRequest,
    now: datetime,
) -> SubscriptionState:
    """Put the organization on the plan asked for (see the module note for what happens when)."""
    terms = desired_terms(catalog, request)
    org = orgs.get_organization(session, organization_id)
    ledger.lock_balance(session, organization_id, environment)
    sub = _find(session, organization_id, environment)
    period = domain.period_of(now, catalog.zone)
    if sub is None or sub.status == CANCELED:
        _refuse_if_suspended(org.status, organization_id)
        before = sub.plan if sub is not None else None
        sub = _start(session, sub, organization_id, environment, terms, period, now)
        allocate(session, catalog, sub, terms, None, period, now, "initial")
        _updated(session, sub, "created", before, now, now)
        return state(session, catalog, sub, now)
    _check_current(sub, now)
    current = Terms.from_json(sub.terms)
    change = domain.classify_change(current, terms)
    if change == Change.UPGRADE:
        _refuse_if_suspended(org.status, organization_id)
        sub.plan, sub.terms = terms.plan, terms.to_json()
        allocate(session, catalog, sub, terms, current, period, now, "upgrade")
        _clear_pending(sub)
        _updated(session, sub, "upgraded", current.plan, now, now)
    elif change == Change.SAME:
        if sub.pending_action is not None:
            _clear_pending(sub)
            _updated(session, sub, "pending_change_withdrawn", None, now, now)
    elif sub.pending_action != "change" or sub.pending_terms != terms.to_json():
        sub.pending_action = "change"
        sub.pending_terms = terms.to_json()
        sub.pending_effective_at = sub.allocated_through
        _updated(
            session,
            sub,
            "downgrade_scheduled",
            current.plan,
            sub.allocated_through,
            now,
            terms.plan,
        )
    sub.updated_at = now
    session.flush()
    return state(session, catalog, sub, now)


def _updated(
    session: Session,
    sub: Subscription,
    change: str,
    previous_plan: str | None,
    effective_at: datetime,
    now: datetime,
    plan: str | None = None,
    reason: str | None = None,
) -> None:
    """``subscription.updated`` for a change one request made (published once: the request
    commits once); ``plan``: the plan the change puts it on, by default its plan now."""
    notices.subscription_updated(
        session,
        notices.SubscriptionChange(
            sub.id,
            sub.organization_id,
            sub.environment,
            plan or sub.plan,
            previous_plan,
            sub.status,
            change,
            effective_at,
            reason,
        ),
        now,
    )


def _refuse_if_suspended(status: str, organization_id: str) -> None:
    """A suspended organization accrues no new plan fees: no first subscription, no upgrade (409
    ``organization_suspended``) until its past-due invoices are paid. Downgrades and cancellations,
    which take effect at the next cycle, are still accepted."""
    if status == orgs.SUSPENDED:
        raise OrganizationSuspended(
            f"organization {organization_id} is suspended for non-payment: pay its past-due "
            "invoices first (POST /v1/invoices/{id}/pay), then subscribe or upgrade"
        )


def cancel(
    session: Session, catalog: Catalog, organization_id: str, environment: str, now: datetime
) -> SubscriptionState:
    """Cancel at the end of the current cycle: nothing already allocated or billed is taken back,
    no later cycle is allocated. Cancelling twice is the same as once."""
    orgs.get_organization(session, organization_id)
    ledger.lock_balance(session, organization_id, environment)
    sub = _require(session, organization_id, environment)
    if sub.status == ACTIVE and sub.pending_action != "cancel":
        _check_current(sub, now)
        sub.pending_action = "cancel"
        sub.pending_terms = None
        sub.pending_effective_at = sub.allocated_through
        sub.updated_at = now
        session.flush()
        _updated(session, sub, "cancellation_scheduled", None, sub.allocated_through, now)
    return state(session, catalog, sub, now)


def get(
    session: Session, catalog: Catalog, organization_id: str, environment: str, now: datetime
) -> SubscriptionState:
    orgs.get_organization(session, organization_id)
    return state(session, catalog, _require(session, organization_id, environment), now)


def state(
    session: Session,
    catalog: Catalog,
    sub: Subscription,
    now: datetime,
) -> SubscriptionState:
    period = domain.period_of(now, catalog.zone)
    allocations = list(
        session.scalars(
            select(PlanAllocation)
            .where(
                PlanAllocation.subscription_id == sub.id,
                PlanAllocation.period_start == period.start,
            )
            .order_by(PlanAllocation.sequence)
        )
    )
    pending = Terms.from_json(sub.pending_terms) if sub.pending_terms else None
    withheld = session.scalars(
        select(WithheldAllocation).where(
            WithheldAllocation.subscription_id == sub.id,
            WithheldAllocation.period_start == period.start,
            WithheldAllocation.released_at.is_(None),
        )
    ).first()
    terms = Terms.from_json(sub.terms)
    return SubscriptionState(sub, terms, pending, period, allocations, withheld)


def _find(session: Session, organization_id: str, environment: str) -> Subscription | None:
    return session.scalars(
        select(Subscription).where(
            Subscription.organization_id == organization_id,
            Subscription.environment == environment,
        )
    ).first()


def _require(session: Session, organization_id: str, environment: str) -> Subscription:
    sub = _find(session, organization_id, environment)
    if sub is None:
        raise SubscriptionNotFound(
            f"organization {organization_id} has no subscription in the {environment} "
            "environment; PUT one first"
        )
    return sub


def _check_current(sub: Subscription, now: datetime) -> None:
    if sub.allocated_through <= now:
        raise CycleClosePending(
            f"the billing cycle starting {sub.allocated_through.isoformat()} has not been closed "
            "for this organization yet; run the cycle close (creditmeter cycle run), then retry"
        )


def _start(
    session: Session,
    sub: Subscription | None,
    organization_id: str,
    environment: str,
    terms: Terms,
    period: Period,
    now: datetime,
) -> Subscription:
    if sub is None:
        sub = Subscription(
            id=new_id("sub"),
            organization_id=organization_id,
            environment=environment,
            created_at=now,
        )
        session.add(sub)
    sub.status = ACTIVE
    sub.plan, sub.terms = terms.plan, terms.to_json()
    sub.started_at = now
    sub.allocated_through = period.end
    sub.canceled_at = None
    sub.updated_at = now
    _clear_pending(sub)
    session.flush()
    return sub


def _clear_pending(sub: Subscription) -> None:
    sub.pending_action = None
    sub.pending_terms = None
    sub.pending_effective_at = None


def allocate(
    session: Session,
    catalog: Catalog,
    sub: Subscription,
    terms: Terms,
    previous: Terms | None,
    period: Period,
    now: datetime,
    kind: str,
) -> PlanAllocation:
    """Grant the prorated allocation (a ``plan`` lot, if any credits, published as
    ``credits.granted``) and record it with its fee."""
    alloc = domain.allocation(terms, period, now, catalog.zone, previous)
    lot_id = None
    if alloc.credits_micros > 0:
        request = ledger.GrantRequest(
            amount_micros=alloc.credits_micros,
            source=LotSource.PLAN,
            reason=allocation_reason(terms, period, kind, now, alloc.share.full),
            effective_at=now,
            expires_at=alloc.expires_at,
            cost_basis_micros=domain.cost_basis_micros(
                alloc.fee_minor, alloc.credits_micros, terms.currency
            ),
            currency=terms.currency,
        )
        lot_id = ledger.grant(session, sub.organization_id, sub.environment, request, now)
        notices.granted(session, [(sub.organization_id, sub.environment, lot_id, request)], now)
    sequence = session.scalar(
        select(func.coalesce(func.max(PlanAllocation.sequence) + 1, 0)).where(
            PlanAllocation.subscription_id == sub.id,
            PlanAllocation.period_start == period.start,
        )
    )
    row = PlanAllocation(
        subscription_id=sub.id,
        organization_id=sub.organization_id,
        environment=sub.environment,
        period_start=period.start,
        period_end=period.end,
        sequence=sequence,
        kind=kind,
        plan=terms.plan,
        terms=terms.to_json(),
        credits_micros=alloc.credits_micros,
        lot_id=lot_id,
        expires_at=alloc.expires_at,
        fee_minor=alloc.fee_minor,
        currency=terms.currency,
        share_remaining_us=alloc.share.remaining_us,
        share_total_us=alloc.share.total_us,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def allocation_reason(terms: Terms, period: Period, kind: str, at: datetime, full: bool) -> str:
    """The journal description of a plan lot: which plan, which cycle, prorated from when."""
    what = "upgrade credits" if kind == "upgrade" else "plan credits"
    text = f"{terms.plan_name} {what} for {period.label}"
    if not full:
        text += f" (prorated from {at.strftime('%Y-%m-%dT%H:%M:%SZ')} to the end of the cycle)"
    return text
