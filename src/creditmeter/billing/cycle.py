"""The monthly cycle close: at each boundary, for each subscribed organization, close the month.

The close of one organization, environment and closed period runs these steps in order, each in its
own transaction together with the record of the step reached (``CycleClose.step``), so a crash after
any step and a rerun equal one clean close, and running it twice equals once:

1. ``statement``: finalize the closed month's usage statement (``statements.finalize``).
2. ``expiry``: expire the lots due at the boundary (``ledger.expire_due``: the remainder goes to
   breakage); a plan with ``overage_in_arrears`` turns the arrears left at the boundary into overage,
   settled by an ``adjustment`` lot at the plan's price per credit and billed on the invoice (the new
   month's credits would otherwise pay them).
3. ``allocation``: apply a pending downgrade or cancellation, then allocate the new month's plan lot
   with its expiry from the plan (``subscriptions.renew``, which never allocates a cycle twice).
4. ``invoice``: issue the invoice of the closed month (``invoices.issue``), dated the boundary.
5. ``charge``: hand an open invoice to the payment hook (``invoices.charge``), outside any
   transaction (a processor is never called while a lock is held), then record the step. A crash
   between the two calls the hook again on the rerun: it charges with the invoice id as the
   idempotency key, so the card is charged once.

Every ledger write of a close is made *as of the boundary* (expiry, allocation, overage), not as of the
moment the close runs, so a close that runs late, or a catch-up after downtime that crosses several
boundaries one by one, in order, produces the same lots and invoices as closes run on time. Each step
locks the organization's balance first, so two runners (the worker and ``creditmeter cycle run``)
never interleave. ``now`` (the injectable clock) decides which periods are due and stamps the records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.billing import domain, invoices, statements
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.domain import Catalog, Period, Terms
from creditmeter.billing.models import CycleClose, Invoice, Subscription, TestClockAttachment
from creditmeter.errors import CreditmeterError
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource

log = logging.getLogger("creditmeter.billing.cycle")

STEPS = ("statement", "expiry", "allocation", "invoice", "charge")
_ORDER = {name: i for i, name in enumerate(("started", *STEPS))}

#: Charges an open invoice (payments plug in here): ``(db, invoice_id, now)``, called outside any
#: transaction; it commits what it records itself and must be idempotent by the invoice id.
Charge = Callable[[Database, str, datetime], None]


@dataclass(frozen=True, order=True)
class Due:
    """One close to run: an organization's environment and the period it closes."""

    period: Period
    organization_id: str
    environment: str


#: Called after each step's transaction commits (tests inject crashes here).
AfterStep = Callable[[Due, str], None]


@dataclass
class CloseResult:
    due: Due
    steps_run: list[str] = field(default_factory=list)
    invoice_number: str | None = None
    total_minor: int = 0
    currency: str = ""
    expired_micros: int = 0
    allocated_micros: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def due(
    session: Session,
    catalog: Catalog,
    now: datetime,
    organization_id: str | None = None,
    *,
    include_clocked: bool = False,
) -> list[Due]:
    """Every close due at ``now``, in the order to run them: boundary by boundary, oldest first.
    Due are the unfinished closes, and for each active subscription allocated only up to ``now`` or
    earlier, every period from the last one allocated to the last one ended. Organizations attached
    to a test clock are billed on the clock's time: left out unless ``include_clocked`` (the clock's
    advance sets it)."""
    found: set[Due] = set()
    unfinished = select(
        CycleClose.organization_id, CycleClose.environment, CycleClose.period_start
    ).where(CycleClose.completed_at.is_(None))
    lagging = select(
        Subscription.organization_id, Subscription.environment, Subscription.allocated_through
    ).where(Subscription.status == subs.ACTIVE, Subscription.allocated_through <= now)
    if organization_id is not None:
        unfinished = unfinished.where(CycleClose.organization_id == organization_id)
        lagging = lagging.where(Subscription.organization_id == organization_id)
    if not include_clocked:
        clocked = select(TestClockAttachment.organization_id)
        unfinished = unfinished.where(CycleClose.organization_id.not_in(clocked))
        lagging = lagging.where(Subscription.organization_id.not_in(clocked))
    for org, env, start in session.execute(unfinished):
        found.add(Due(domain.period_of(start, catalog.zone), org, env))
    for org, env, through in session.execute(lagging):
        last = domain.period_of(through - timedelta(microseconds=1), catalog.zone)
        found.update(Due(p, org, env) for p in domain.periods_due(last, now, catalog.zone))
    return sorted(found)


def run_due(
    db: Database,
    now: datetime,
    org: str | None = None,
    *,
    catalog: Catalog | None = None,
    charge: Charge = invoices.charge,
    after_step: AfterStep | None = None,
    include_clocked: bool = False,
) -> list[CloseResult]:
    """Run every close due at ``now`` (for one organization, or all), in order; organizations on a
    test clock only with ``include_clocked``."""
    from creditmeter.billing.plans import load_catalog

    catalog = catalog or load_catalog()
    with db.read() as session:
        work = due(session, catalog, now, org, include_clocked=include_clocked)
    return run(db, catalog, work, now, charge=charge, after_step=after_step)


def run(
    db: Database,
    catalog: Catalog,
    work: Sequence[Due],
    now: datetime,
    *,
    charge: Charge = invoices.charge,
    after_step: AfterStep | None = None,
    on_result: Callable[[CloseResult], None] | None = None,
) -> list[CloseResult]:
    """Run the closes in ``work`` in order. A close that fails is reported and stops the later
    closes of the same organization and environment (they need it); the others go on."""
    results = []
    failed: set[tuple[str, str]] = set()
    for item in work:
        key = (item.organization_id, item.environment)
        if key in failed:
            result = CloseResult(item, error="skipped: an earlier close of it failed")
        else:
            result = close(db, catalog, item, now, charge=charge, after_step=after_step)
            if not result.ok:
                failed.add(key)
        results.append(result)
        if on_result:
            on_result(result)
    return results


def close(
    db: Database,
    catalog: Catalog,
    item: Due,
    now: datetime,
    *,
    charge: Charge = invoices.charge,
    after_step: AfterStep | None = None,
) -> CloseResult:
    """Run (or resume) one close, one transaction per step. Never raises: a failure is logged and
    returned in the result; a rerun resumes at the first step not recorded."""
    result = CloseResult(item)
    step = STEPS[0]
    try:
        for step in STEPS:
            if step == "charge":
                _charge(db, item, now, charge)
            with db.write() as session:
                if run_step(session, catalog, item, step, now):
                    result.steps_run.append(step)
            if after_step:
                after_step(item, step)
        with db.read() as session:
            _summarize(session, item, result)
    except Exception as exc:  # a batch job reports every failure and goes on with the others
        detail = exc.detail if isinstance(exc, CreditmeterError) else f"{type(exc).__name__}: {exc}"
        log.exception(
            "cycle close of %s (%s) for %s failed at the %s step; it resumes there at the next run",
            item.organization_id,
            item.environment,
            item.period.label,
            step,
        )
        result.error = detail
    return result


def _charge(db: Database, item: Due, now: datetime, charge: Charge) -> None:
    """Call the payment hook for the close's invoice if it is open and the charge step is not
    recorded yet."""
    with db.read() as session:
        record = _record_of(session, item)
        if record is None or _ORDER[record.step] >= _ORDER["charge"] or not record.invoice_id:
            return
        invoice = session.get(Invoice, record.invoice_id)
        if invoice is None or invoice.status != invoices.OPEN:
            return
        invoice_id = invoice.id
    charge(db, invoice_id, now)


def run_step(session: Session, catalog: Catalog, item: Due, step: str, now: datetime) -> bool:
    """Run ``step`` of the close unless it was already recorded; record it. Never commits.
    Returns whether the step ran. (The charge itself happens before the ``charge`` step is
    recorded, outside the transaction: see ``close``.)"""
    org, env, boundary = item.organization_id, item.environment, item.period.end
    expired: list[tuple[str, str, int]] = []
    if step == "expiry":  # before the balance lock: expire_due locks in its own (id) order
        expired = ledger.expire_due(session, boundary, org, env)
    ledger.lock_balance(session, org, env)
    record = _record(session, item, now)
    if _ORDER[record.step] >= _ORDER[step]:
        return False
    sub = session.get(Subscription, record.subscription_id)
    if sub is None:  # pragma: no cover - the foreign key forbids it
        raise LookupError(f"subscription {record.subscription_id} is gone")
    if step == "statement":
        statements.finalize(session, org, env, item.period)
    elif step == "expiry":
        record.expired_micros = sum(m for _, _, m in expired)
        _settle_overage(session, sub, record, item.period)
    elif step == "allocation":
        allocated = subs.renew(session, catalog, sub, boundary)
        record.allocated_micros = allocated.credits_micros if allocated else 0
    elif step == "invoice":
        record.invoice_id = invoices.issue(session, catalog, sub, record, item.period, now).id
    else:
        record.completed_at = now
    record.step = step
    record.updated_at = now
    session.flush()
    return True


def _record(session: Session, item: Due, now: datetime) -> CycleClose:
    record = session.scalars(
        select(CycleClose).where(
            CycleClose.organization_id == item.organization_id,
            CycleClose.environment == item.environment,
            CycleClose.period_start == item.period.start,
        )
    ).first()
    if record is not None:
        return record
    sub = session.scalars(
        select(Subscription).where(
            Subscription.organization_id == item.organization_id,
            Subscription.environment == item.environment,
        )
    ).one()
    record = CycleClose(
        organization_id=item.organization_id,
        environment=item.environment,
        subscription_id=sub.id,
        period_start=item.period.start,
        period_end=item.period.end,
        step="started",
        expired_micros=0,
        allocated_micros=0,
        overage_micros=0,
        started_at=now,
        updated_at=now,
    )
    session.add(record)
    session.flush()
    return record


def _settle_overage(session: Session, sub: Subscription, record: CycleClose, of: Period) -> None:
    """A plan that invoices overage in arrears: the arrears left at the boundary are billed, and
    settled now by an ``adjustment`` lot (priority 0: it pays them first) bought at the plan's price
    per credit, so the new month's credits start clean."""
    terms = Terms.from_json(sub.terms)
    balance = ledger.lock_balance(session, sub.organization_id, sub.environment)
    if not terms.overage_in_arrears or balance.arrears_micros <= 0:
        return
    ledger.grant(
        session,
        sub.organization_id,
        sub.environment,
        ledger.GrantRequest(
            amount_micros=balance.arrears_micros,
            source=LotSource.ADJUSTMENT,
            reason=f"overage of {of.label} billed on the invoice of {of.label}",
            effective_at=of.end,
            expires_at=None,
            priority=0,
            cost_basis_micros=terms.credit_price_micros,
            currency=terms.currency,
        ),
        of.end,
    )
    record.overage_micros = balance.arrears_micros
    record.overage_price_micros = terms.credit_price_micros


def _summarize(session: Session, item: Due, result: CloseResult) -> None:
    record = _record_of(session, item)
    if record is None:
        return
    result.expired_micros = record.expired_micros
    result.allocated_micros = record.allocated_micros
    invoice = session.get(Invoice, record.invoice_id) if record.invoice_id else None
    if invoice is not None:
        result.invoice_number = invoice.number
        result.total_minor = invoice.total_minor
        result.currency = invoice.currency


def _record_of(session: Session, item: Due) -> CycleClose | None:
    return session.scalars(
        select(CycleClose).where(
            CycleClose.organization_id == item.organization_id,
            CycleClose.environment == item.environment,
            CycleClose.period_start == item.period.start,
        )
    ).first()
