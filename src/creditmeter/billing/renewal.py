"""The cycle close's allocation step: renew many subscriptions at a boundary, set-based.

For the subscriptions of a chunk (their organizations' balances locked by the caller): apply the
pending downgrades and cancellations due, then allocate the new cycle in full to each active
subscription allocated exactly up to the boundary (one ``plan`` lot each, through
``ledger.grant_many``; one ``plan_allocations`` row each, written with one statement) and move
``allocated_through`` to the cycle's end (one ``executemany``). For an organization suspended for
non-payment the cycle's allocation is **withheld** instead: no lot and no fee, one
``withheld_allocations`` row recording what it would have been (``billing.suspension`` releases the
rest of the cycle if the suspension ends inside it). ``allocated_through`` moves either way, so a
cycle is allocated or withheld exactly once; the unique constraints of both tables back it up.
Each plan lot publishes ``credits.granted``, and each change applied or cycle withheld
``subscription.updated`` (``cancelled``, ``downgraded``, ``allocation_withheld``), keyed by the
subscription and the boundary (``billing.notices``: one insert per event). Never commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from creditmeter.billing import domain, notices
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.domain import Catalog, Period, Terms
from creditmeter.billing.models import PlanAllocation, Subscription, WithheldAllocation
from creditmeter.kit.db import UTCDateTime
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource


@dataclass
class Renewing:
    """What the cycle close's allocation step reads and changes of one subscription (a plain row,
    loaded with the others of its chunk in one query)."""

    id: str
    organization_id: str
    environment: str
    status: str
    plan: str
    terms: dict[str, Any]
    allocated_through: datetime
    pending_action: str | None
    pending_terms: dict[str, Any] | None
    pending_effective_at: datetime | None
    canceled_at: datetime | None
    updated_at: datetime


_RENEWING = select(
    Subscription.id,
    Subscription.organization_id,
    Subscription.environment,
    Subscription.status,
    Subscription.plan,
    Subscription.terms,
    Subscription.allocated_through,
    Subscription.pending_action,
    Subscription.pending_terms,
    Subscription.pending_effective_at,
    Subscription.canceled_at,
    Subscription.updated_at,
)
_SUBSCRIPTIONS = cast(Table, Subscription.__table__)
_ALLOCATIONS = cast(Table, PlanAllocation.__table__)
_WITHHELD = cast(Table, WithheldAllocation.__table__)
_SAVE_RENEWED = (
    update(_SUBSCRIPTIONS)
    .where(_SUBSCRIPTIONS.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        plan=bindparam("b_plan"),
        terms=bindparam("b_terms", type_=JSON()),
        allocated_through=bindparam("b_allocated_through", type_=UTCDateTime()),
        pending_action=bindparam("b_pending_action"),
        pending_terms=bindparam("b_pending_terms", type_=JSON(none_as_null=True)),
        pending_effective_at=bindparam("b_pending_effective_at", type_=UTCDateTime()),
        canceled_at=bindparam("b_canceled_at", type_=UTCDateTime()),
        updated_at=bindparam("b_updated_at", type_=UTCDateTime()),
    )
)


def load_renewing(session: Session, subscription_ids: Sequence[str]) -> dict[str, Renewing]:
    """The subscriptions with these ids, by id, in one query (per 500)."""
    ids = sorted(set(subscription_ids))
    found = {}
    for start in range(0, len(ids), 500):
        for row in session.execute(_RENEWING.where(Subscription.id.in_(ids[start : start + 500]))):
            found[row.id] = Renewing(*row)
    return found


def renew_many(
    session: Session,
    catalog: Catalog,
    renewing: Sequence[Renewing],
    balances: Mapping[str, ledger.LockedBalance],
    boundary: datetime,
    withhold: Set[str] = frozenset(),
) -> dict[str, int]:
    """The cycle close's allocation step at ``boundary`` (the start of a new cycle) for several
    subscriptions, whose organizations' balances the caller holds locked (``balances``, by
    organization). For each: apply a pending change or cancellation due by then, and, if it is still
    active and was allocated exactly up to ``boundary``, allocate the new cycle in full (``kind =
    'cycle'``, a ``plan`` lot through ``ledger.grant_many``) and move ``allocated_through`` to its
    end. For an organization in ``withhold`` (suspended for non-payment) the cycle is withheld
    instead: a ``withheld_allocations`` row with what it would have allocated and billed, no lot and
    no fee. A subscription already allocated past ``boundary`` (a first subscription made inside the
    new cycle) is left alone, so a cycle is never allocated twice; calling it again changes nothing.
    Returns the micro-credits allocated per subscription id (0 when none or withheld)."""
    allocated = {sub.id: 0 for sub in renewing}
    period = domain.period_of(boundary, catalog.zone)
    grants: list[tuple[Renewing, Terms, domain.Allocation]] = []
    withheld: list[tuple[Renewing, Terms, domain.Allocation]] = []
    allocations: dict[Terms, domain.Allocation] = {}
    changed = []
    updates: list[notices.SubscriptionChange] = []
    for sub in renewing:
        before = sub.plan
        applied = _apply_pending(sub, boundary)
        if applied:
            changed.append(sub)
            updates.append(_change(sub, applied, before, boundary))
        if sub.status != subs.ACTIVE or sub.allocated_through != boundary:
            continue
        terms = Terms.from_json(sub.terms)
        alloc = allocations.get(terms)
        if alloc is None:  # the same terms allocate the same (pure): worked out once per chunk
            alloc = allocations[terms] = domain.allocation(
                terms, period, boundary, catalog.zone, None
            )
        (withheld if sub.organization_id in withhold else grants).append((sub, terms, alloc))
        sub.allocated_through = period.end
        sub.updated_at = boundary
        if sub not in changed:
            changed.append(sub)
    paid = [(sub, terms, alloc) for sub, terms, alloc in grants if alloc.credits_micros > 0]
    requests = [
        (
            balances[sub.organization_id],
            ledger.GrantRequest(
                amount_micros=alloc.credits_micros,
                source=LotSource.PLAN,
                reason=subs.allocation_reason(terms, period, "cycle", boundary, alloc.share.full),
                effective_at=boundary,
                expires_at=alloc.expires_at,
                cost_basis_micros=domain.cost_basis_micros(
                    alloc.fee_minor, alloc.credits_micros, terms.currency
                ),
                currency=terms.currency,
            ),
        )
        for sub, terms, alloc in paid
    ]
    lot_ids = ledger.grant_many(session, requests, boundary)
    lots = {sub.id: lot_id for (sub, _, _), lot_id in zip(paid, lot_ids, strict=True)}
    notices.granted_many(session, requests, lot_ids, boundary)
    sequences = _next_sequences(session, [sub.id for sub, _, _ in grants], period)
    if grants:
        session.connection().execute(
            insert(_ALLOCATIONS),
            [
                _allocation_row(sub, terms, alloc, period, boundary, lots.get(sub.id), sequences)
                for sub, terms, alloc in grants
            ],
        )
    if withheld:
        session.connection().execute(
            insert(_WITHHELD),
            [_withheld_row(sub, terms, alloc, period, boundary) for sub, terms, alloc in withheld],
        )
    if changed:
        session.connection().execute(_SAVE_RENEWED, [_saved(sub) for sub in changed])
    for sub, _, alloc in grants:
        allocated[sub.id] = alloc.credits_micros
    updates += [_change(sub, "withheld", terms.plan, boundary) for sub, terms, _ in withheld]
    for update_ in updates:
        key = f"{update_.subscription_id}:{boundary.isoformat()}"
        notices.subscription_updated(session, update_, boundary, key)
    return allocated


def _apply_pending(sub: Renewing, boundary: datetime) -> str | None:
    """Apply the pending cancellation or change due by ``boundary``; returns which it applied."""
    if not (
        sub.pending_action and sub.pending_effective_at and sub.pending_effective_at <= boundary
    ):
        return None
    applied = sub.pending_action
    if sub.pending_action == "cancel":
        sub.status = subs.CANCELED
        sub.canceled_at = boundary
    elif sub.pending_terms:
        terms = Terms.from_json(sub.pending_terms)
        sub.plan, sub.terms = terms.plan, terms.to_json()
    sub.pending_action = sub.pending_terms = sub.pending_effective_at = None
    sub.updated_at = boundary
    return applied


def _change(
    sub: Renewing, what: str, before: str, boundary: datetime
) -> notices.SubscriptionChange:
    """The ``subscription.updated`` of what the close did to ``sub``: a pending ``cancel`` or
    ``change`` applied, or the cycle ``withheld`` (``before``: the plan before it)."""
    change, previous, reason = {
        "cancel": ("cancelled", None, None),
        "change": ("downgraded", before, None),
        "withheld": (
            "allocation_withheld",
            None,
            "the organization is suspended for non-payment: the cycle's credits and fee are "
            "withheld until its past-due invoices are paid",
        ),
    }[what]
    return notices.SubscriptionChange(
        sub.id,
        sub.organization_id,
        sub.environment,
        sub.plan,
        previous,
        sub.status,
        change,
        boundary,
        reason,
    )


def _next_sequences(session: Session, ids: list[str], period: Period) -> dict[str, int]:
    """The next allocation sequence of each subscription in ``period`` (0 for the first)."""
    found: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        rows = session.execute(
            select(PlanAllocation.subscription_id, func.max(PlanAllocation.sequence) + 1)
            .where(
                PlanAllocation.subscription_id.in_(ids[start : start + 500]),
                PlanAllocation.period_start == period.start,
            )
            .group_by(PlanAllocation.subscription_id)
        )
        found.update({sub_id: int(sequence) for sub_id, sequence in rows})
    return found


def _allocation_row(
    sub: Renewing,
    terms: Terms,
    alloc: domain.Allocation,
    period: Period,
    now: datetime,
    lot_id: str | None,
    sequences: dict[str, int],
) -> dict[str, Any]:
    return {
        "subscription_id": sub.id,
        "organization_id": sub.organization_id,
        "environment": sub.environment,
        "period_start": period.start,
        "period_end": period.end,
        "sequence": sequences.get(sub.id, 0),
        "kind": "cycle",
        "plan": terms.plan,
        "terms": terms.to_json(),
        "credits_micros": alloc.credits_micros,
        "lot_id": lot_id,
        "expires_at": alloc.expires_at,
        "fee_minor": alloc.fee_minor,
        "currency": terms.currency,
        "share_remaining_us": alloc.share.remaining_us,
        "share_total_us": alloc.share.total_us,
        "created_at": now,
    }


def _withheld_row(
    sub: Renewing, terms: Terms, alloc: domain.Allocation, period: Period, boundary: datetime
) -> dict[str, Any]:
    return {
        "subscription_id": sub.id,
        "organization_id": sub.organization_id,
        "environment": sub.environment,
        "period_start": period.start,
        "period_end": period.end,
        "plan": terms.plan,
        "terms": terms.to_json(),
        "credits_micros": alloc.credits_micros,
        "fee_minor": alloc.fee_minor,
        "currency": terms.currency,
        "expires_at": alloc.expires_at,
        "withheld_at": boundary,
        "released_at": None,
        "plan_allocation_id": None,
    }


def _saved(sub: Renewing) -> dict[str, Any]:
    return {
        "b_id": sub.id,
        "b_status": sub.status,
        "b_plan": sub.plan,
        "b_terms": sub.terms,
        "b_allocated_through": sub.allocated_through,
        "b_pending_action": sub.pending_action,
        "b_pending_terms": sub.pending_terms,
        "b_pending_effective_at": sub.pending_effective_at,
        "b_canceled_at": sub.canceled_at,
        "b_updated_at": sub.updated_at,
    }
