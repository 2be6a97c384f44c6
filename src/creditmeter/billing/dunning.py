"""Charging invoices and dunning: an open invoice is charged at the cycle close, retried 1, 3 and 5
days after its first failure, then past due, and the organization is suspended until it is paid.

- **Attempts.** Every attempt to charge an invoice is one ``payments`` row (purpose ``invoice``,
  reference the invoice) with the processor's outcome, or ``no_payment_method`` when the
  organization had none: the billing history shows each one and why it failed. Attempt ``n`` of an
  invoice is charged with ``invoice:<id>:<n>`` as the processor's idempotency key; ``n`` is the
  number of attempts recorded + 1, read before the invoice's status, so two runners racing on the
  same invoice send the same key and the processor charges once.
- **No lock across the network.** Each attempt reads (one transaction), calls the processor (no
  transaction), then records (one write transaction that locks the organization's row, records
  the payment under its unique key and moves the invoice and the organization). A crash between
  the call and the record leaves nothing recorded: the next run repeats attempt ``n`` with the same
  key and the processor returns the first outcome.
- **At the close** (``charge_at_close``, the cycle close's charge hook): attempt 1, once; a rerun
  of the close finds it recorded and charges nothing.
- **The schedule** (``next_attempt_at``) is anchored on the first failure: retries are due at +1,
  +3 and +5 days; a retry is skipped if an attempt (e.g. ``POST /v1/invoices/{id}/pay``) was made
  since it came due. A failure at or after the last retry's time makes the invoice ``past_due`` and
  suspends the organization. A worker that was down runs one late attempt, not a burst.
- **Resuming.** A paid invoice is ``paid`` with ``paid_at``; when the organization has no
  ``past_due`` invoice left (in any environment) a billing suspension ends by itself: its status
  is ``active`` again in the same transaction.

- **Events** (``billing.notices``), in the transaction that records the attempt: ``payment.failed``
  for every failed attempt (its number, and when the next is due), ``invoice.paid``,
  ``invoice.past_due`` and ``organization.suspended`` (in the invoice's environment), each keyed by
  the payment or the invoice, so once.

A suspension is organization-wide (the gate reads one status): a past-due ``test`` invoice
suspends the organization too, which is what a rehearsal of dunning should show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from creditmeter.billing import invoices, notices, suspension
from creditmeter.billing.models import CreditNoteApplication, Invoice, TestClockAttachment
from creditmeter.billing.payments import history
from creditmeter.billing.payments import methods as payment_methods
from creditmeter.billing.payments.models import Payment, PaymentCustomer, PaymentMethod
from creditmeter.billing.payments.provider import ChargeResult, PaymentError, PaymentProvider
from creditmeter.errors import Conflict, InvalidRequest
from creditmeter.kit.db import Database, UTCDateTime
from creditmeter.kit.ids import new_id
from creditmeter.orgs import service as orgs
from creditmeter.orgs.models import Organization

log = logging.getLogger("creditmeter.billing.dunning")

#: Days after the first failed attempt at which an invoice is charged again.
RETRY_DAYS = (1, 3, 5)
NO_PAYMENT_METHOD = "no_payment_method"
#: Invoices of a cycle close charged at the same time (each call is independent and idempotent).
CHARGES_AT_ONCE = 4
PURPOSE = "invoice"


class InvoiceNotPayable(Conflict):
    code = "invoice_not_payable"


@dataclass(frozen=True)
class History:
    """What the billing history says of an invoice's attempts."""

    attempts: int = 0
    first_failure_at: datetime | None = None
    last_attempt_at: datetime | None = None


@dataclass(frozen=True)
class Attempt:
    """The outcome of one attempt: the payment recorded and the invoice's status after it."""

    invoice_id: str
    number: int
    payment: Payment
    invoice_status: str

    @property
    def succeeded(self) -> bool:
        return self.payment.status == "succeeded"


# --- the schedule (pure) ----------------------------------------------------------------------


def next_attempt_at(past: History) -> datetime | None:
    """When an open invoice is next charged: at once if it never was (None is returned only when
    nothing is left to try); else the first scheduled retry (first failure + 1, 3, 5 days) later
    than the last attempt."""
    if past.first_failure_at is None or past.last_attempt_at is None:
        return None
    for days in RETRY_DAYS:
        at = past.first_failure_at + timedelta(days=days)
        if at > past.last_attempt_at:
            return at
    return None


def is_due(past: History, now: datetime) -> bool:
    """Whether the worker should charge an open invoice with this history at ``now``."""
    if past.attempts == 0:
        return True
    at = next_attempt_at(past)
    return at is not None and at <= now


def exhausted(past: History) -> bool:
    """Whether the last scheduled retry has come and gone (a failure now makes it past due)."""
    if past.first_failure_at is None or past.last_attempt_at is None:
        return False
    return past.last_attempt_at >= past.first_failure_at + timedelta(days=RETRY_DAYS[-1])


def charge_key(invoice_id: str, attempt: int) -> str:
    """The processor's idempotency key of attempt ``attempt`` (1, 2, …) at an invoice."""
    return f"invoice:{invoice_id}:{attempt}"


# --- reading ----------------------------------------------------------------------------------


def history_of(session: Session, invoice_id: str) -> History:
    row = session.execute(
        select(
            func.count(Payment.id),
            func.min(Payment.created_at).filter(Payment.status == "failed"),
            func.max(Payment.created_at),
        ).where(
            Payment.purpose == PURPOSE,
            Payment.kind == "charge",
            Payment.reference_id == invoice_id,
        )
    ).one()
    return History(int(row[0] or 0), row[1], row[2])


def schedule_of(session: Session, invoice: Invoice) -> tuple[int, datetime | None]:
    """(attempts made, when the next automatic attempt is due) of an invoice, for the API."""
    past = history_of(session, invoice.id)
    if invoice.status != invoices.OPEN:
        return past.attempts, None
    return past.attempts, (invoice.issued_at if past.attempts == 0 else next_attempt_at(past))


@dataclass(frozen=True)
class _Plan:
    """What an attempt will send to the processor, read before calling it."""

    invoice_id: str
    number: int
    amount_minor: int
    currency: str
    description: str
    method_id: str | None
    token: str | None
    customer_id: str
    organization_id: str = ""
    environment: str = ""


def _plan(
    session: Session, invoice_id: str, method_id: str | None, *, explicit: bool
) -> _Plan | None:
    """The next attempt at an open or past-due invoice, or None if it has nothing to charge. The
    attempts are counted *before* the status is read (see the module note)."""
    attempts = history_of(session, invoice_id).attempts
    invoice = session.get(Invoice, invoice_id)
    if invoice is None or invoice.status not in {invoices.OPEN, invoices.PAST_DUE}:
        return None
    method = _method(session, invoice, method_id, explicit=explicit)
    customer = None
    if method is not None:
        customer = session.scalar(
            select(PaymentCustomer.provider_customer_id).where(
                PaymentCustomer.organization_id == invoice.organization_id,
                PaymentCustomer.environment == invoice.environment,
                PaymentCustomer.provider == method.provider,
            )
        )
    return _Plan(
        invoice.id,
        attempts + 1,
        invoice.total_minor,
        invoice.currency,
        f"creditmeter invoice {invoice.number}",
        method.id if method else None,
        method.token if method else None,
        customer or "",
        invoice.organization_id,
        invoice.environment,
    )


def _method(
    session: Session, invoice: Invoice, method_id: str | None, *, explicit: bool
) -> PaymentMethod | None:
    org, env = invoice.organization_id, invoice.environment
    if method_id is not None:
        try:
            return payment_methods.get_method(session, org, env, method_id)
        except payment_methods.PaymentMethodNotFound:
            raise _invalid(
                "unknown_payment_method",
                "no attached payment method of this organization has this id",
            ) from None
    method = payment_methods.default_method(session, org, env)
    if method is None and explicit:
        raise _invalid(
            "payment_method_required",
            "the organization has no payment method; add one (POST …/payment-methods) or name one",
        )
    return method


def _invalid(code: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        message, code=code, errors=[{"field": "payment_method", "type": code, "message": message}]
    )


# --- one attempt ------------------------------------------------------------------------------


def _attempt(db: Database, provider: PaymentProvider, plan: _Plan, now: datetime) -> Attempt:
    return _record_one(db, provider, plan, _send(provider, plan), now)


def _send(provider: PaymentProvider, plan: _Plan) -> ChargeResult:
    """Call the processor (no transaction is open), or fail at once without a payment method."""
    if plan.token is None:
        return ChargeResult(
            "failed",
            plan.amount_minor,
            plan.currency,
            None,
            NO_PAYMENT_METHOD,
            "the organization has no payment method to charge",
        )
    key = charge_key(plan.invoice_id, plan.number)
    return provider.charge(
        plan.amount_minor, plan.currency, plan.customer_id, plan.token, key, plan.description
    )


def _record_one(
    db: Database, provider: PaymentProvider, plan: _Plan, result: ChargeResult, now: datetime
) -> Attempt:
    try:
        with db.write() as session:
            return record(session, plan, result, provider.name, now)
    except IntegrityError:  # a concurrent twin recorded this attempt first
        with db.read() as session:
            return _recorded(session, plan, charge_key(plan.invoice_id, plan.number))


def _recorded(session: Session, plan: _Plan, key: str) -> Attempt:
    payment = history.by_key(session, key)
    invoice = session.get(Invoice, plan.invoice_id)
    assert payment is not None
    assert invoice is not None
    return Attempt(plan.invoice_id, plan.number, payment, invoice.status)


def record(
    session: Session, plan: _Plan, result: ChargeResult, provider_name: str, now: datetime
) -> Attempt:
    """Record an attempt's outcome and move the invoice and the organization (never commits)."""
    invoice = session.get(Invoice, plan.invoice_id)
    assert invoice is not None
    orgs.lock_organization(session, invoice.organization_id)
    session.refresh(invoice)
    key = charge_key(plan.invoice_id, plan.number)
    if history.by_key(session, key) is not None:
        return _recorded(session, plan, key)
    payment = history.record(
        session,
        organization_id=invoice.organization_id,
        environment=invoice.environment,
        kind="charge",
        purpose=PURPOSE,
        reference_id=invoice.id,
        payment_method_id=plan.method_id,
        result=result,
        provider=provider_name,
        idempotency_key=key,
        now=now,
    )
    if result.succeeded:
        _paid(session, invoice, payment, now)
    else:
        _failed(session, invoice, payment, plan.number, now)
    return Attempt(invoice.id, plan.number, payment, invoice.status)


def _failed(
    session: Session, invoice: Invoice, payment: Payment, number: int, now: datetime
) -> None:
    """A failed attempt ``number``: ``payment.failed`` with the next attempt's time; at or after the
    last retry's time the invoice is past due and the organization suspended (each published)."""
    past = history_of(session, invoice.id)
    due = invoice.status == invoices.OPEN and exhausted(past)
    later = next_attempt_at(past) if invoice.status == invoices.OPEN and not due else None
    notices.payment_failed(
        session, payment, invoice_id=invoice.id, attempt=number, next_attempt_at=later
    )
    if not due:
        return
    invoice.status = invoices.PAST_DUE
    invoice.updated_at = now
    session.flush()
    notices.invoice_past_due(session, invoice, now)
    if orgs.set_status(session, invoice.organization_id, orgs.SUSPENDED):
        log.warning(
            "organization %s suspended: invoice %s is past due (%s)",
            invoice.organization_id,
            invoice.number,
            payment.failure_code,
        )
        notices.organization_suspended(session, invoice, now)
    suspension.after_dunning(session, invoice, now)  # cancel_after_dunning plans


def _paid(session: Session, invoice: Invoice, payment: Payment, now: datetime) -> None:
    if invoice.status not in {invoices.OPEN, invoices.PAST_DUE}:
        log.error(  # the keys make this unreachable; the money is recorded, never hidden
            "invoice %s was %s when charge %s succeeded: refund it", invoice.number,
            invoice.status, payment.id,
        )  # fmt: skip
        return
    invoice.status = invoices.PAID
    invoice.paid_at = now
    invoice.updated_at = now
    session.flush()
    notices.invoice_paid(session, invoice, now)
    resume_if_clear(session, invoice.organization_id, now)


def resume_if_clear(session: Session, organization_id: str, now: datetime) -> bool:
    """End a billing suspension when no past-due invoice of the organization is left (call it
    under the organization's lock, e.g. after voiding one), and release the plan credits of the
    cycle in progress withheld while it was suspended (``suspension.release``). Returns whether it
    resumed."""
    left = session.scalar(
        select(func.count(Invoice.id)).where(
            Invoice.organization_id == organization_id, Invoice.status == invoices.PAST_DUE
        )
    )
    if left:
        return False
    resumed = orgs.set_status(session, organization_id, orgs.ACTIVE)
    if resumed:
        log.info("organization %s resumed: no invoice is past due", organization_id)
        suspension.release(session, organization_id, now)
    return resumed


def void(session: Session, invoice_id: str, reason: str, now: datetime) -> Invoice:
    """Void an open or past-due invoice: it is no longer collected (no retry, no payment by hand);
    the credits it billed stay with the organization. Under the organization's lock, like the
    recording of a payment, so a charge being recorded and a void never interleave. The money of
    credit notes deducted on it is released to the next invoice, and a suspension that only this
    invoice caused ends. 409 ``invoice_paid`` (refund its payment instead) or ``invoice_void``.
    Never commits."""
    invoice = invoices.get(session, invoice_id).invoice
    orgs.lock_organization(session, invoice.organization_id)
    session.refresh(invoice)
    if invoice.status == invoices.PAID:
        raise Conflict(
            f"invoice {invoice.number} is paid; refund its payment instead "
            "(POST /v1/payments/{payment_id}/refunds)",
            code="invoice_paid",
        )
    if invoice.status == invoices.VOID:
        raise Conflict(f"invoice {invoice.number} is already void", code="invoice_void")
    invoice.status = invoices.VOID
    invoice.voided_at = now
    invoice.void_reason = reason[:500]
    invoice.updated_at = now
    session.execute(
        delete(CreditNoteApplication).where(CreditNoteApplication.invoice_id == invoice.id)
    )
    session.flush()
    resume_if_clear(session, invoice.organization_id, now)
    log.info("invoice %s voided: %s", invoice.number, reason)
    return invoice


# --- entry points -----------------------------------------------------------------------------


def charge_at_close(
    db: Database, provider: PaymentProvider, invoice_id: str, now: datetime
) -> Attempt | None:
    """The cycle close's charge: attempt 1 at an open invoice, with the default payment method.
    Idempotent by the invoice: once an attempt is recorded, a rerun of the close charges nothing."""
    with db.read() as session:
        if history_of(session, invoice_id).attempts:
            return None
        plan = _plan(session, invoice_id, None, explicit=False)
    if plan is None or plan.number != 1:
        return None
    return _attempt(db, provider, plan, now)


def charge_many_at_close(
    db: Database, provider: PaymentProvider, invoice_ids: Sequence[str], now: datetime
) -> dict[str, Exception]:
    """``charge_at_close`` for several invoices (a chunk of cycle closes): what the attempts need
    read in one session with one query each, each invoice charged outside any transaction (up to
    ``CHARGES_AT_ONCE`` at a time: a processor call waits on the network, or on the database for
    the sandbox; one at a time on SQLite, whose writers take turns anyway), the outcomes recorded in one write transaction (each in its own if that one fails). Returns the
    failures by invoice id; the others are charged once, as ``charge_at_close`` would."""
    with db.read() as session:
        plans = _first_attempts(session, invoice_ids)
    failures: dict[str, Exception] = {}
    sent: list[tuple[_Plan, ChargeResult]] = []
    workers = 1 if db.dialect == "sqlite" else CHARGES_AT_ONCE
    with ThreadPoolExecutor(max_workers=workers) as pool:
        calls = [(plan, pool.submit(_send, provider, plan)) for plan in plans]
        for plan, call in calls:
            try:
                sent.append((plan, call.result()))
            except Exception as exc:  # reported for its invoice; the others go on
                failures[plan.invoice_id] = exc
    if not sent:
        return failures
    try:
        with db.write() as session:
            _record_first_attempts(session, sent, provider.name, now)
    except Exception:
        log.warning("recording %d charges together failed; recording them one by one", len(sent))
        for plan, result in sent:
            try:
                _record_one(db, provider, plan, result, now)
            except Exception as exc:  # reported for its invoice; the others go on
                failures[plan.invoice_id] = exc
    return failures


def _record_first_attempts(
    session: Session, sent: list[tuple[_Plan, ChargeResult]], provider_name: str, now: datetime
) -> None:
    """``record`` for the first attempts of a chunk (never commits): the organizations locked in id
    order with one statement; the succeeded charges' payments written with one insert and their
    invoices marked paid with one update; an attempt already recorded (a concurrent twin) is left
    alone; a failed charge (which may move the invoice or the organization) goes through
    ``record``."""
    ordered = sorted(sent, key=lambda item: (item[0].organization_id, item[0].invoice_id))
    org_ids = sorted({plan.organization_id for plan, _ in ordered})
    statuses = dict(
        session.execute(
            select(Organization.id, Organization.status)
            .where(Organization.id.in_(org_ids))
            .order_by(Organization.id)
            .with_for_update()
        ).all()
    )
    keys = [charge_key(plan.invoice_id, plan.number) for plan, _ in ordered]
    recorded = set(
        session.scalars(select(Payment.idempotency_key).where(Payment.idempotency_key.in_(keys)))
    )
    invoice_status = dict(
        session.execute(
            select(Invoice.id, Invoice.status).where(
                Invoice.id.in_([plan.invoice_id for plan, _ in ordered])
            )
        ).all()
    )
    payments, paid = [], []
    for plan, result in ordered:
        key = charge_key(plan.invoice_id, plan.number)
        if key in recorded:
            continue
        if not result.succeeded or invoice_status.get(plan.invoice_id) != invoices.OPEN:
            record(session, plan, result, provider_name, now)
            continue
        payments.append(_payment_row(plan, result, provider_name, key, now))
        paid.append({"b_id": plan.invoice_id, "b_now": now})
    if not payments:
        return
    session.connection().execute(insert(_PAYMENTS), payments)
    session.connection().execute(_MARK_PAID, paid)
    notices.invoices_paid(session, [str(row["b_id"]) for row in paid], now)
    for org in sorted({p["organization_id"] for p in payments}):
        if statuses.get(org) != orgs.ACTIVE:
            resume_if_clear(session, org, now)


_INVOICES = cast(Table, Invoice.__table__)
_PAYMENTS = cast(Table, Payment.__table__)
_MARK_PAID = (
    update(_INVOICES)
    .where(_INVOICES.c.id == bindparam("b_id"))
    .values(
        status=invoices.PAID,
        paid_at=bindparam("b_now", type_=UTCDateTime()),
        updated_at=bindparam("b_now", type_=UTCDateTime()),
    )
)


def _payment_row(
    plan: _Plan, result: ChargeResult, provider_name: str, key: str, now: datetime
) -> dict[str, Any]:
    """The ``payments`` row ``history.record`` writes for this attempt."""
    return {
        "id": new_id("pay"),
        "organization_id": plan.organization_id,
        "environment": plan.environment,
        "kind": "charge",
        "purpose": PURPOSE,
        "reference_id": plan.invoice_id,
        "payment_method_id": plan.method_id,
        "amount_minor": result.amount_minor,
        "currency": result.currency,
        "status": result.status,
        "failure_code": result.failure_code,
        "failure_message": (result.failure_message or "")[:500] or None,
        "provider": provider_name,
        "provider_id": result.provider_id,
        "idempotency_key": key,
        "created_at": now,
    }


def _first_attempts(session: Session, invoice_ids: Sequence[str]) -> list[_Plan]:
    """Attempt 1 at each invoice that was never charged and is still open (``_plan`` for many:
    attempts counted before the status is read), in organization order (the lock order)."""
    ids = sorted(set(invoice_ids))
    tried = set(
        session.scalars(
            select(Payment.reference_id)
            .where(
                Payment.purpose == PURPOSE,
                Payment.kind == "charge",
                Payment.reference_id.in_(ids),
            )
            .distinct()
        )
    )
    rows = session.execute(
        select(
            Invoice.id,
            Invoice.organization_id,
            Invoice.environment,
            Invoice.total_minor,
            Invoice.currency,
            Invoice.number,
        ).where(
            Invoice.id.in_([i for i in ids if i not in tried]),
            Invoice.status.in_([invoices.OPEN, invoices.PAST_DUE]),
        )
    ).all()
    orgs_ = sorted({row.organization_id for row in rows})
    methods: dict[tuple[str, str], tuple[str, str, str]] = {}
    for method_id, org, env, token, provider in session.execute(
        select(
            PaymentMethod.id,
            PaymentMethod.organization_id,
            PaymentMethod.environment,
            PaymentMethod.token,
            PaymentMethod.provider,
        )
        .where(
            PaymentMethod.organization_id.in_(orgs_),
            PaymentMethod.detached_at.is_(None),
            PaymentMethod.is_default.is_(True),
        )
        .order_by(PaymentMethod.id)
    ):
        methods.setdefault((org, env), (method_id, token, provider))
    customers = {
        (org, env, provider): customer
        for org, env, provider, customer in session.execute(
            select(
                PaymentCustomer.organization_id,
                PaymentCustomer.environment,
                PaymentCustomer.provider,
                PaymentCustomer.provider_customer_id,
            ).where(PaymentCustomer.organization_id.in_(orgs_))
        )
    }
    plans = []
    for row in sorted(rows, key=lambda r: (r.organization_id, r.id)):
        method = methods.get((row.organization_id, row.environment))
        customer = None
        if method is not None:
            customer = customers.get((row.organization_id, row.environment, method[2]))
        plans.append(
            _Plan(
                row.id,
                1,
                row.total_minor,
                row.currency,
                f"creditmeter invoice {row.number}",
                method[0] if method else None,
                method[1] if method else None,
                customer or "",
                row.organization_id,
                row.environment,
            )
        )
    return plans


class Charger:
    """The cycle close's charge hook (``cycle.Charge``) bound to a provider; ``many`` charges a
    chunk's invoices at once (``charge_many_at_close``)."""

    def __init__(self, provider: PaymentProvider) -> None:
        self.provider = provider

    def __call__(self, db: Database, invoice_id: str, now: datetime) -> None:
        charge_at_close(db, self.provider, invoice_id, now)

    def many(self, db: Database, invoice_ids: Sequence[str], now: datetime) -> dict[str, Exception]:
        return charge_many_at_close(db, self.provider, invoice_ids, now)


class LazyCharger:
    """A ``Charger`` whose provider is built (once) on first use, for the database it is used with."""

    def __init__(self, build: Callable[[Database], PaymentProvider]) -> None:
        self.build = build
        self.provider: PaymentProvider | None = None

    def _provider(self, db: Database) -> PaymentProvider:
        if self.provider is None:
            self.provider = self.build(db)
        return self.provider

    def __call__(self, db: Database, invoice_id: str, now: datetime) -> None:
        charge_at_close(db, self._provider(db), invoice_id, now)

    def many(self, db: Database, invoice_ids: Sequence[str], now: datetime) -> dict[str, Exception]:
        return charge_many_at_close(db, self._provider(db), invoice_ids, now)


def charger(provider: PaymentProvider) -> Charger:
    """The cycle close's charge hook (``cycle.Charge``) bound to ``provider``."""
    return Charger(provider)


def pay(
    db: Database,
    provider: PaymentProvider,
    invoice_id: str,
    payment_method_id: str | None,
    now: datetime,
) -> Attempt:
    """Charge an open or past-due invoice now (``POST /v1/invoices/{id}/pay``) with the named or
    the default payment method. 409 when it is paid or void; 422 without a payment method;
    402 with the processor's reason on a decline (the attempt is recorded)."""
    with db.read() as session:
        invoice = invoices.get(session, invoice_id).invoice
        if invoice.status in {invoices.PAID, invoices.VOID}:
            raise InvoiceNotPayable(
                f"invoice {invoice.number} is {invoice.status}: there is nothing to pay",
                code=f"invoice_{invoice.status}",
            )
        plan = _plan(session, invoice_id, payment_method_id, explicit=True)
    if plan is None:  # paid or voided meanwhile
        return pay(db, provider, invoice_id, payment_method_id, now)
    attempt = _attempt(db, provider, plan, now)
    if not attempt.succeeded:
        raise declined(attempt)
    return attempt


def declined(attempt: Attempt) -> PaymentError:
    code = attempt.payment.failure_code or "payment_failed"
    message = attempt.payment.failure_message or "the payment failed"
    return PaymentError(
        f"the payment was declined: {message} ({code}); invoice {attempt.invoice_id} is still "
        f"{attempt.invoice_status}. Use another payment method",
        code=code,
        errors=[{"field": "payment_method", "type": code, "message": message}],
    )


def run_due(
    db: Database,
    provider: PaymentProvider,
    now: datetime,
    organization_id: str | None = None,
    *,
    include_clocked: bool = False,
) -> list[Attempt]:
    """The worker step: one attempt at every open invoice whose next attempt is due at ``now``
    (never charged yet, or a scheduled retry), of one organization or all. Organizations on a test
    clock are charged on the clock's time: left out unless ``include_clocked`` (the clock's advance
    sets it). An invoice that fails to run is logged and retried at the next tick; the others go
    on."""
    made = []
    for invoice_id in due(db, now, organization_id, include_clocked=include_clocked):
        try:
            with db.read() as session:
                if not is_due(history_of(session, invoice_id), now):
                    continue
                plan = _plan(session, invoice_id, None, explicit=False)
            if plan is None:
                continue
            made.append(_attempt(db, provider, plan, now))
        except Exception:  # a batch job reports every failure and goes on with the others
            log.exception("charging invoice %s failed; retrying at the next tick", invoice_id)
    return made


def _open_invoices(organization_id: str | None, include_clocked: bool) -> Any:
    """Open invoices with their attempts so far: (id, issued_at, n, first failure, last attempt)."""
    attempts = (
        select(
            Payment.reference_id.label("invoice_id"),
            func.count(Payment.id).label("n"),
            func.min(Payment.created_at).filter(Payment.status == "failed").label("first"),
            func.max(Payment.created_at).label("last"),
        )
        .where(Payment.purpose == PURPOSE, Payment.kind == "charge")
        .group_by(Payment.reference_id)
        .subquery()
    )
    query = (
        select(Invoice.id, Invoice.issued_at, attempts.c.n, attempts.c.first, attempts.c.last)
        .outerjoin(attempts, attempts.c.invoice_id == Invoice.id)
        .where(Invoice.status == invoices.OPEN)
        .order_by(Invoice.id)
    )
    if organization_id is not None:
        query = query.where(Invoice.organization_id == organization_id)
    if not include_clocked:
        query = query.where(
            Invoice.organization_id.not_in(select(TestClockAttachment.organization_id))
        )
    return query


def due(
    db: Database,
    now: datetime,
    organization_id: str | None = None,
    *,
    include_clocked: bool = False,
) -> Sequence[str]:
    """The open invoices issued by ``now`` whose next attempt is due, oldest first (of one
    organization, or all; organizations on a test clock only with ``include_clocked``)."""
    query = _open_invoices(organization_id, include_clocked).where(Invoice.issued_at <= now)
    with db.read() as session:
        rows = session.execute(query).all()
    return [row.id for row in rows if is_due(History(int(row.n or 0), row.first, row.last), now)]


def next_due_at(db: Database, organization_id: str) -> datetime | None:
    """When the worker would next charge one of the organization's open invoices: the earliest
    scheduled retry, or the issue time of one never charged; None when nothing is left to try.
    (A test clock's advance stops at these moments, as real time would.)"""
    with db.read() as session:
        rows = session.execute(_open_invoices(organization_id, True)).all()
    times = [
        row.issued_at if not row.n else next_attempt_at(History(int(row.n), row.first, row.last))
        for row in rows
    ]
    return min((t for t in times if t is not None), default=None)
