"""The monthly cycle close: at each boundary, for each subscribed organization, close the month.

The close of one organization, environment and closed period runs these steps in order, each
recorded in ``CycleClose.step`` in the same transaction as its writes, so a crash after any step and
a rerun equal one clean close, and running it twice equals once:

1. ``statement``: finalize the closed month's usage statement (``statements.finalize_many``).
2. ``expiry``: expire the lots due at the boundary (``ledger.expire_many``: the remainder goes to
   breakage); a plan with ``overage_in_arrears`` turns the arrears left at the boundary into overage,
   settled by an ``adjustment`` lot at the plan's price per credit and billed on the invoice (the new
   month's credits would otherwise pay them).
3. ``allocation``: apply a pending downgrade or cancellation, then allocate the new month's plan lot
   with its expiry from the plan (``renewal.renew_many``, which never allocates a cycle twice); for
   an organization suspended for non-payment the allocation and its fee are withheld instead, and
   recorded (``billing.suspension``).
4. ``invoice``: issue the invoice of the closed month (``invoices.issue_many``), dated the boundary.
5. ``charge``: hand an open invoice to the payment hook, outside any transaction (a processor is
   never called while a lock is held), then record the step. A crash between the two calls the hook
   again on the rerun: it charges with the invoice id as the idempotency key, so the card is charged
   once.

**Set-based.** ``run`` closes boundary by boundary, in order (every close of a boundary ends before
the first of the next starts), in chunks of up to ``CHUNK`` organizations of one environment, in
organization id order. Each step is one transaction for the whole chunk (``run_step``): it locks the
chunk's balances in id order (``ledger.lock_balances``, so two runners never interleave or
deadlock), reads the chunk's close records, subscriptions and lots with one query each, and writes
with one statement per table (the statements from two grouped queries; expiries, overage and
allocations through ``ledger.post_batch``; the invoices numbered from one range of the gapless
counter; the records with one ``executemany``). If a chunk's step fails, it is run again
organization by organization, so only the failing close fails (reported, and its later closes
skipped); the others go on. The charges of a chunk are read with one query and sent together
(``dunning.charge_many_at_close``; the default hook builds its provider once per run). ``close`` —
the test clocks' and ``creditmeter cycle run --org`` — is the same path with a chunk of one.
``after_step`` (tests inject crashes there) is called per close once its step's chunk transaction
has committed.

**Events.** Each step publishes the catalog events of what it changed in its own transaction
(``billing.notices``): ``credits.expired`` (one per organization) and ``credits.granted`` for the
overage settlement at ``expiry``; ``credits.granted`` per plan lot and ``subscription.updated`` per
change applied or cycle withheld at ``allocation``; ``invoice.issued`` (and ``invoice.paid`` for
nothing to pay) at ``invoice``; the charge's outcome (``invoice.paid``, ``payment.failed``) is
published by ``billing.dunning`` when it is recorded. Each is keyed by its cause, so a resumed or
repeated close publishes nothing twice. Publishing is one insert per event (and the fan-out of
``notify.events.publish``), about four per organization and month: the one part of a chunk's step
that is not one statement per table.

Every ledger write of a close is made *as of the boundary* (expiry, allocation, overage), not as of the
moment the close runs, so a close that runs late, or a catch-up after downtime that crosses several
boundaries one by one, in order, produces the same lots and invoices as closes run on time. ``now``
(the injectable clock) decides which periods are due and stamps the records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from creditmeter.billing import domain, invoices, notices, renewal, statements, suspension
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.domain import Catalog, Period, Terms
from creditmeter.billing.models import CycleClose, Invoice, Subscription, TestClockAttachment
from creditmeter.errors import CreditmeterError, NotFound
from creditmeter.kit.db import Database, UTCDateTime
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource

log = logging.getLogger("creditmeter.billing.cycle")

STEPS = ("statement", "expiry", "allocation", "invoice", "charge")
_ORDER = {name: i for i, name in enumerate(("started", *STEPS))}
#: Organizations closed together: one transaction per step for this many.
CHUNK = 500

#: Charges an open invoice (payments plug in here): ``(db, invoice_id, now)``, called outside any
#: transaction; it commits what it records itself and must be idempotent by the invoice id. A hook
#: with a ``many(db, invoice_ids, now)`` method (``dunning.charger``) is given a chunk's invoices
#: at once and returns the failures by invoice id.
Charge = Callable[[Database, str, datetime], None]
ChargeMany = Callable[[Database, Sequence[str], datetime], dict[str, Exception]]


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
    chunk_size: int = CHUNK,
) -> list[CloseResult]:
    """Run the closes in ``work`` boundary by boundary, in order (every close of a boundary ends
    before the first of the next starts), in chunks of ``chunk_size`` organizations of one
    environment. A close that fails is reported and stops the later closes of the same
    organization and environment (they need it); the others go on. Results in the order of
    ``work``."""
    results: dict[Due, CloseResult] = {}
    failed: set[tuple[str, str]] = set()
    many = _charge_many(charge)
    for _, boundary in groupby(sorted(set(work)), key=lambda d: d.period):
        ready = []
        for item in boundary:
            if (item.organization_id, item.environment) in failed:
                done = [CloseResult(item, error="skipped: an earlier close of it failed")]
            else:
                ready.append(item)
                continue
            results[item] = done[0]
            if on_result:
                on_result(done[0])
        for chunk in _chunks(ready, chunk_size):
            for result in _close_chunk(db, catalog, chunk, now, many, after_step):
                results[result.due] = result
                if not result.ok:
                    failed.add((result.due.organization_id, result.due.environment))
                if on_result:
                    on_result(result)
    return [results[item] for item in work]


def close(
    db: Database,
    catalog: Catalog,
    item: Due,
    now: datetime,
    *,
    charge: Charge = invoices.charge,
    after_step: AfterStep | None = None,
) -> CloseResult:
    """Run (or resume) one close: the batched close with a chunk of one. Never raises: a failure
    is logged and returned in the result; a rerun resumes at the first step not recorded."""
    return _close_chunk(db, catalog, [item], now, _charge_many(charge), after_step)[0]


def _chunks(items: list[Due], size: int) -> Iterator[list[Due]]:
    """Chunks of one environment, each in organization id order."""
    for _, group in groupby(
        sorted(items, key=lambda d: d.environment), key=lambda d: d.environment
    ):
        mine = sorted(group, key=lambda d: d.organization_id)
        for start in range(0, len(mine), max(1, size)):
            yield mine[start : start + size]


def _detail(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, CreditmeterError) else f"{type(exc).__name__}: {exc}"


def _failed(result: CloseResult, step: str, exc: BaseException) -> None:
    item = result.due
    log.error(
        "cycle close of %s (%s) for %s failed at the %s step; it resumes there at the next run",
        item.organization_id,
        item.environment,
        item.period.label,
        step,
        exc_info=exc,
    )
    result.error = _detail(exc)


def _close_chunk(
    db: Database,
    catalog: Catalog,
    chunk: list[Due],
    now: datetime,
    many: Callable[[], ChargeMany],
    after_step: AfterStep | None,
) -> list[CloseResult]:
    """Run (or resume) the closes of one chunk (one period, one environment), one transaction per
    step for the whole chunk. A step whose chunk transaction fails is run again organization by
    organization, so only the failing ones fail; a failed close takes no further step."""
    results = {item: CloseResult(item) for item in chunk}
    live = list(chunk)
    for step in STEPS:
        if step == "charge" and live:
            for item, exc in _charge(db, live, now, many).items():
                _failed(results[item], step, exc)
            live = [item for item in live if results[item].ok]
        ran = _step_all(db, catalog, live, step, now, results)
        live = [item for item in live if results[item].ok]
        for item in live:
            if item in ran:
                results[item].steps_run.append(step)
            if after_step:
                try:
                    after_step(item, step)
                except Exception as exc:  # a crash injected by a test, or a hook that failed
                    _failed(results[item], step, exc)
        live = [item for item in live if results[item].ok]
    try:
        with db.read() as session:
            _summarize(session, chunk, results)
    except Exception as exc:  # pragma: no cover - a read after the commits
        for item in live:
            _failed(results[item], "charge", exc)
    return [results[item] for item in chunk]


def _step_all(
    db: Database,
    catalog: Catalog,
    items: list[Due],
    step: str,
    now: datetime,
    results: dict[Due, CloseResult],
) -> set[Due]:
    """Run ``step`` for ``items`` in one transaction; if that fails, for each on its own."""
    if not items:
        return set()
    try:
        with db.write() as session:
            return run_step(session, catalog, items, step, now)
    except Exception as exc:
        if len(items) == 1:
            _failed(results[items[0]], step, exc)
            return set()
        log.warning(
            "the %s step of %d closes failed together; retrying one by one", step, len(items)
        )
    ran: set[Due] = set()
    for item in items:
        try:
            with db.write() as session:
                ran |= run_step(session, catalog, [item], step, now)
        except Exception as exc:  # a batch job reports every failure and goes on with the others
            _failed(results[item], step, exc)
    return ran


@dataclass
class _Record:
    """A close's ``CycleClose`` row, read and written with plain statements."""

    id: int
    organization_id: str
    subscription_id: str
    step: str
    invoice_id: str | None
    expired_micros: int
    allocated_micros: int
    overage_micros: int
    overage_price_micros: int | None
    completed_at: datetime | None


_RECORDS = select(
    CycleClose.id,
    CycleClose.organization_id,
    CycleClose.subscription_id,
    CycleClose.step,
    CycleClose.invoice_id,
    CycleClose.expired_micros,
    CycleClose.allocated_micros,
    CycleClose.overage_micros,
    CycleClose.overage_price_micros,
    CycleClose.completed_at,
)
_CLOSES = cast(Table, CycleClose.__table__)
_SAVE_RECORD = (
    update(_CLOSES)
    .where(_CLOSES.c.id == bindparam("b_id"))
    .values(
        step=bindparam("b_step"),
        invoice_id=bindparam("b_invoice_id"),
        expired_micros=bindparam("b_expired"),
        allocated_micros=bindparam("b_allocated"),
        overage_micros=bindparam("b_overage"),
        overage_price_micros=bindparam("b_overage_price"),
        completed_at=bindparam("b_completed_at", type_=UTCDateTime()),
        updated_at=bindparam("b_now", type_=UTCDateTime()),
    )
)


def run_step(
    session: Session, catalog: Catalog, items: Sequence[Due], step: str, now: datetime
) -> set[Due]:
    """Run ``step`` of the closes in ``items`` (one period and one environment) that have not
    recorded it yet, and record it; never commits. Locks the organizations' balances first, in id
    order. Returns the closes for which the step ran. (The charge itself happens before the
    ``charge`` step is recorded, outside the transaction: see ``_close_chunk``.)"""
    period, env = items[0].period, items[0].environment
    if any((item.period, item.environment) != (period, env) for item in items):
        raise ValueError("a chunk of closes is of one period and one environment")
    balances = ledger.lock_balances(session, [item.organization_id for item in items], env)
    gone = sorted({item.organization_id for item in items} - set(balances))
    if gone:
        raise NotFound(f"organization {gone[0]} not found")
    records = _records(session, items, now)
    todo = [
        records[i.organization_id]
        for i in items
        if _ORDER[records[i.organization_id].step] < _ORDER[step]
    ]
    if not todo:
        return set()
    boundary = period.end
    if step == "statement":
        statements.finalize_many(session, [r.organization_id for r in todo], env, period)
    elif step == "expiry":
        _expire(session, todo, balances, boundary, period)
    elif step == "allocation":
        renewing = renewal.load_renewing(session, [r.subscription_id for r in todo])
        suspended = suspension.suspended_among(session, [r.organization_id for r in todo])
        allocated = renewal.renew_many(
            session,
            catalog,
            [renewing[r.subscription_id] for r in todo],
            balances,
            boundary,
            withhold=suspended,  # read under the balance locks: see billing.suspension
        )
        for r in todo:
            r.allocated_micros = allocated[r.subscription_id]
    elif step == "invoice":
        _invoice(session, catalog, todo, period, now)
    else:
        for r in todo:
            r.completed_at = now
    for r in todo:
        r.step = step
    session.connection().execute(_SAVE_RECORD, [_saved(r, now) for r in todo])
    done = {r.organization_id for r in todo}
    return {item for item in items if item.organization_id in done}


def _saved(r: _Record, now: datetime) -> dict[str, Any]:
    return {
        "b_id": r.id,
        "b_step": r.step,
        "b_invoice_id": r.invoice_id,
        "b_expired": r.expired_micros,
        "b_allocated": r.allocated_micros,
        "b_overage": r.overage_micros,
        "b_overage_price": r.overage_price_micros,
        "b_completed_at": r.completed_at,
        "b_now": now,
    }


def _records(session: Session, items: Sequence[Due], now: datetime) -> dict[str, _Record]:
    """The close records of ``items`` by organization (under their locks), the missing ones
    created (``started``) for the organization's subscription in the environment."""
    period, env = items[0].period, items[0].environment
    orgs = sorted({item.organization_id for item in items})
    query = _RECORDS.where(
        CycleClose.environment == env,
        CycleClose.period_start == period.start,
        CycleClose.organization_id.in_(orgs),
    )
    found = {row.organization_id: _Record(**row._asdict()) for row in session.execute(query)}
    missing = [org for org in orgs if org not in found]
    if not missing:
        return found
    query_subs = select(Subscription.organization_id, Subscription.id).where(
        Subscription.environment == env, Subscription.organization_id.in_(missing)
    )
    subscribed: dict[str, str] = {}
    for org, sub_id in session.execute(query_subs):
        subscribed[org] = sub_id
    unsubscribed = [org for org in missing if org not in subscribed]
    if unsubscribed:
        raise NotFound(f"organization {unsubscribed[0]} has no {env} subscription to close")
    session.execute(
        _CLOSES.insert(),
        [
            {
                "organization_id": org,
                "environment": env,
                "subscription_id": subscribed[org],
                "period_start": period.start,
                "period_end": period.end,
                "step": "started",
                "expired_micros": 0,
                "allocated_micros": 0,
                "overage_micros": 0,
                "started_at": now,
                "updated_at": now,
            }
            for org in missing
        ],
    )
    query = query.where(CycleClose.organization_id.in_(missing))
    found.update({row.organization_id: _Record(**row._asdict()) for row in session.execute(query)})
    return found


def _expire(
    session: Session,
    todo: list[_Record],
    balances: dict[str, ledger.LockedBalance],
    boundary: datetime,
    of: Period,
) -> None:
    """Expire the lots due at the boundary (the remainder to breakage), then settle the overage
    of the plans that invoice it in arrears: the arrears left at the boundary are billed, and
    settled now by an ``adjustment`` lot (priority 0: it pays them first) bought at the plan's
    price per credit, so the new month's credits start clean."""
    mark = notices.journal_mark(session)
    expired = ledger.expire_many(session, [balances[r.organization_id] for r in todo], boundary)
    notices.expired_since(session, mark, sorted(expired), boundary)
    renewing = renewal.load_renewing(session, [r.subscription_id for r in todo])
    grants = []
    for r in todo:
        r.expired_micros = expired.get(r.organization_id, 0)
        terms = Terms.from_json(renewing[r.subscription_id].terms)
        balance = balances[r.organization_id]
        if not terms.overage_in_arrears or balance.arrears_micros <= 0:
            continue
        r.overage_micros = balance.arrears_micros
        r.overage_price_micros = terms.credit_price_micros
        request = ledger.GrantRequest(
            amount_micros=balance.arrears_micros,
            source=LotSource.ADJUSTMENT,
            reason=f"overage of {of.label} billed on the invoice of {of.label}",
            effective_at=boundary,
            expires_at=None,
            priority=0,
            cost_basis_micros=terms.credit_price_micros,
            currency=terms.currency,
        )
        grants.append((balance, request))
    lot_ids = ledger.grant_many(session, grants, boundary)
    notices.granted_many(session, grants, lot_ids, boundary)


def _invoice(
    session: Session, catalog: Catalog, todo: list[_Record], of: Period, now: datetime
) -> None:
    renewing = renewal.load_renewing(session, [r.subscription_id for r in todo])
    issued = invoices.issue_many(
        session,
        catalog,
        [
            invoices.ToIssue(
                subscription_id=r.subscription_id,
                organization_id=r.organization_id,
                environment=renewing[r.subscription_id].environment,
                currency=Terms.from_json(renewing[r.subscription_id].terms).currency,
                overage_micros=r.overage_micros,
                overage_price_micros=r.overage_price_micros,
            )
            for r in todo
        ],
        of,
        now,
    )
    for r in todo:
        r.invoice_id = issued[r.organization_id]


def _charge_many(charge: Charge) -> Callable[[], ChargeMany]:
    """The charge of a run, resolved (and the default provider built) once, on first use."""
    built: list[ChargeMany] = []

    def resolve() -> ChargeMany:
        if not built:
            if charge is invoices.charge:
                built.append(invoices.close_charger().many)
            elif callable(getattr(charge, "many", None)):
                built.append(charge.many)  # type: ignore[attr-defined]
            else:
                built.append(_one_by_one(charge))
        return built[0]

    return resolve


def _one_by_one(charge: Charge) -> ChargeMany:
    def many(db: Database, invoice_ids: Sequence[str], now: datetime) -> dict[str, Exception]:
        failures: dict[str, Exception] = {}
        for invoice_id in invoice_ids:
            try:
                charge(db, invoice_id, now)
            except Exception as exc:  # reported for its close; the others go on
                failures[invoice_id] = exc
        return failures

    return many


def _charge(
    db: Database, items: list[Due], now: datetime, many: Callable[[], ChargeMany]
) -> dict[Due, Exception]:
    """Call the payment hook, outside any transaction, for the open invoices of the closes whose
    charge step is not recorded yet. Returns the failures."""
    period, env = items[0].period, items[0].environment
    by_org = {item.organization_id: item for item in items}
    with db.read() as session:
        rows = session.execute(
            select(CycleClose.organization_id, CycleClose.invoice_id)
            .join(Invoice, Invoice.id == CycleClose.invoice_id)
            .where(
                CycleClose.environment == env,
                CycleClose.period_start == period.start,
                CycleClose.organization_id.in_(sorted(by_org)),
                CycleClose.step == "invoice",
                Invoice.status == invoices.OPEN,
            )
            .order_by(CycleClose.organization_id)
        ).all()
    if not rows:
        return {}
    of_invoice = {str(invoice_id): by_org[org] for org, invoice_id in rows}
    try:
        failures = many()(db, list(of_invoice), now)
    except Exception as exc:  # the whole hook failed: every close of the chunk reports it
        return dict.fromkeys(of_invoice.values(), exc)
    return {of_invoice[invoice_id]: exc for invoice_id, exc in failures.items()}


def _summarize(session: Session, chunk: list[Due], results: dict[Due, CloseResult]) -> None:
    period, env = chunk[0].period, chunk[0].environment
    by_org = {item.organization_id: item for item in chunk}
    rows = session.execute(
        select(
            CycleClose.organization_id,
            CycleClose.expired_micros,
            CycleClose.allocated_micros,
            Invoice.number,
            Invoice.total_minor,
            Invoice.currency,
        )
        .outerjoin(Invoice, Invoice.id == CycleClose.invoice_id)
        .where(
            CycleClose.environment == env,
            CycleClose.period_start == period.start,
            CycleClose.organization_id.in_(sorted(by_org)),
        )
    )
    for org, expired, allocated, number, total, currency in rows:
        result = results[by_org[org]]
        result.expired_micros = expired
        result.allocated_micros = allocated
        if number is not None:
            result.invoice_number = number
            result.total_minor = total
            result.currency = currency
