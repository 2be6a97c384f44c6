"""Organizations suspended for non-payment: no new plan credits or plan fees while suspended.

An organization is suspended when an invoice's dunning runs out (``billing.dunning``: the last retry
failed, the invoice is ``past_due``) and active again when no invoice of it is past due (paid, by
hand or by a retry, or voided by the operator). Only billing suspends. While it is suspended:

- **Withheld**: a cycle that begins while it is suspended allocates nothing and owes no plan fee.
  The cycle close's allocation step (``renewal.renew_many``, given ``suspended_among`` of its
  chunk) records a ``withheld_allocations`` row instead (what the cycle would have allocated and
  billed, and the lot's expiry), and still moves the subscription on, so the cycle is handled once.
  The month's invoice is still issued: it bills what was owed before (earlier allocations,
  packages on account, overage, less credit notes), so a month spent suspended from its first day
  carries no plan fee (nothing owed: issued ``paid``, never charged).
- **Released once, for the cycle in progress only**: when the suspension ends (``release``, called
  in the transaction that makes the organization active), the withheld allocation of the cycle in
  progress (at the organization's now) is allocated for the rest of that cycle, prorated by the time
  left like a first subscription (credits and fee rounded once, half to even), as a ``plan`` lot
  with the plan's expiry for that cycle and a ``plan_allocations`` row whose fee the cycle's invoice
  bills; the row records ``released_at``. Cycles that ended while suspended are never allocated
  later: their rows lapse (the customer had no service and pays no fee for them).
- **No new plan fees**: a first subscription or an upgrade is refused while suspended
  (``subscriptions``: ``409 organization_suspended``).
- **Cancel after dunning** (``after_dunning``): a plan with ``cancel_after_dunning = true`` cancels
  the subscription at the end of the current cycle when an invoice's dunning runs out, exactly like
  ``DELETE …/subscription``.

Serialization: the allocation step locks the chunk's balances and only then reads who is suspended;
``release`` runs after the status became active and locks the organization's balances before it
reads the withheld rows. Whichever commits first, the other sees it: an allocation is either
granted at the boundary or withheld and then released, never lost. Functions never commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.billing import domain, notices
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.domain import Catalog, Terms
from creditmeter.billing.models import Invoice, Subscription, WithheldAllocation
from creditmeter.ledger import service as ledger
from creditmeter.orgs import service as orgs
from creditmeter.orgs.models import Organization

log = logging.getLogger("creditmeter.billing.suspension")

ENVIRONMENTS = ("live", "test")


def suspended_among(session: Session, organization_ids: Sequence[str]) -> frozenset[str]:
    """Which of these organizations are suspended for non-payment (one query per 500)."""
    ids = sorted(set(organization_ids))
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        found.update(
            session.scalars(
                select(Organization.id).where(
                    Organization.id.in_(ids[start : start + 500]),
                    Organization.status == orgs.SUSPENDED,
                )
            )
        )
    return frozenset(found)


def release(
    session: Session, organization_id: str, now: datetime, catalog: Catalog | None = None
) -> list[WithheldAllocation]:
    """Allocate the rest of the cycle in progress at ``now`` whose allocation was withheld while
    the organization was suspended (call it in the transaction that made it active again). Each
    withheld cycle is released at most once (``released_at``); withheld cycles that ended lapse.
    Returns the rows released."""
    if catalog is None:
        from creditmeter.billing.plans import load_catalog

        catalog = load_catalog()
    for environment in ENVIRONMENTS:  # the allocation step's lock: see the module note
        ledger.lock_balance(session, organization_id, environment)
    rows = session.scalars(
        select(WithheldAllocation)
        .where(
            WithheldAllocation.organization_id == organization_id,
            WithheldAllocation.released_at.is_(None),
            WithheldAllocation.period_start <= now,
            WithheldAllocation.period_end > now,
        )
        .order_by(WithheldAllocation.environment)
    ).all()
    released = []
    for row in rows:
        sub = session.get(Subscription, row.subscription_id)
        if sub is None or sub.status != subs.ACTIVE or sub.allocated_through != row.period_end:
            continue  # canceled, or a new subscription since: nothing of this cycle to give
        period = domain.period_of(row.period_start, catalog.zone)
        terms = Terms.from_json(row.terms)
        made = subs.allocate(session, catalog, sub, terms, None, period, now, "cycle")
        row.released_at = now
        row.plan_allocation_id = made.id
        released.append(row)
        change = notices.SubscriptionChange(
            sub.id,
            organization_id,
            sub.environment,
            sub.plan,
            None,
            sub.status,
            "allocation_released",
            now,
            f"the suspension ended: the rest of {period.label} is allocated",
        )
        notices.subscription_updated(session, change, now, f"{sub.id}:{period.start.isoformat()}")
        log.info(
            "organization %s (%s): plan credits of %s released from %s (suspension ended)",
            organization_id,
            row.environment,
            period.label,
            now.isoformat(),
        )
    session.flush()
    return released


def after_dunning(session: Session, invoice: Invoice, now: datetime) -> bool:
    """An invoice's dunning ran out (it is past due). When its subscription's terms have
    ``cancel_after_dunning``, record a cancellation at the end of the current cycle, as
    ``DELETE …/subscription`` does (paying later does not withdraw it). Returns whether it did."""
    if invoice.subscription_id is None:
        return False
    ledger.lock_balance(session, invoice.organization_id, invoice.environment)
    sub = session.get(Subscription, invoice.subscription_id)
    if sub is None:
        return False
    session.refresh(sub)
    if sub.status != subs.ACTIVE or sub.pending_action == "cancel":
        return False
    if not Terms.from_json(sub.terms).cancel_after_dunning:
        return False
    sub.pending_action = "cancel"
    sub.pending_terms = None
    sub.pending_effective_at = sub.allocated_through
    sub.updated_at = now
    session.flush()
    change = notices.SubscriptionChange(
        sub.id,
        sub.organization_id,
        sub.environment,
        sub.plan,
        None,
        sub.status,
        "cancellation_scheduled",
        sub.allocated_through,
        f"invoice {invoice.number} is past due: the plan cancels after dunning",
    )
    notices.subscription_updated(session, change, now, f"dunning:{invoice.id}")
    log.warning(
        "organization %s (%s): subscription canceled from %s, invoice %s's dunning ran out",
        invoice.organization_id,
        invoice.environment,
        sub.allocated_through.isoformat(),
        invoice.number,
    )
    return True
