"""Operator refunds of a succeeded charge: money back through the payment provider, and for a
purchase, the credits it bought taken back in proportion.

Rules (docs/billing.md, "Refunds"):

- Only a succeeded **charge** can be refunded, at most what is left of it (its amount minus what
  succeeded or pending refunds took): ``409`` otherwise. The default amount is everything left.
- A refund of a **purchase** (or an auto top-up) takes back the purchase lot's credits in proportion:
  credits = amount / the purchase's price per credit, rounded up to a micro-credit so the
  organization never keeps credits it got money back for (``domain.refund_credits_micros``). If the
  lot (still valid) has fewer credits left than that, minus what pending refunds will take, the
  refund is refused with ``409 credits_spent`` naming the most that can be refunded.
- A refund of an **invoice payment** leaves the invoice ``paid``; the charge records what was
  refunded of it (``payments.refunded_minor``), which the invoice shows.
- Every outcome is a ``refund`` row in the billing history, succeeded or failed with the processor's
  reason; a failed refund changes nothing else.

Like a purchase, a refund runs in three steps, so no lock is held while the processor is called:
(1) **begin** (one write transaction under the organization's lock): check it and record it
``pending`` under the client's key (unique per charge); (2) the processor refunds, with
``refund:<refund id>`` as its own idempotency key; (3) **complete** (one write transaction under the
lock): record the history row and, on success, the refunded amount and the credits taken back
through the ledger's write path (a ``refund`` journal transaction: the purchase lot gives them, the
counter-account is ``issuance:purchase``: credits bought and paid back are un-issued). If the lot's
credits were spent between (1) and (3), the rest comes from the organization's other lots in burn
order, then arrears. A crash or a lost answer between the steps leaves the refund ``pending``: the
same request with the same key repeats step 2 with the same processor key (the processor returns its
first refund) and records it once; the worker does the same for a refund pending longer than five
minutes (``resume_pending``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from creditmeter.billing import auto_top_up, domain, org_time
from creditmeter.billing.payments import history
from creditmeter.billing.payments.models import Payment, Purchase, Refund
from creditmeter.billing.payments.provider import PaymentError, PaymentProvider, RefundResult
from creditmeter.errors import Conflict, NotFound
from creditmeter.kit import clock
from creditmeter.kit.credits import format_credits
from creditmeter.kit.db import Database
from creditmeter.kit.idempotency import request_fingerprint
from creditmeter.kit.ids import new_id
from creditmeter.ledger import domain as ledger_domain
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import Account, LotSource
from creditmeter.ledger.models import Lot

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
#: The journal kind of the transaction that takes back the credits of a refunded purchase.
JOURNAL_KIND = "refund"
PURCHASE_PURPOSES = ("purchase", "auto_top_up")


class PaymentNotFound(NotFound):
    code = "payment_not_found"


class NotRefundable(Conflict):
    code = "payment_not_refundable"


@dataclass(frozen=True)
class RefundRequest:
    amount_minor: int | None
    reason: str

    def fingerprint(self) -> str:
        return request_fingerprint({"amount_minor": self.amount_minor, "reason": self.reason})


def refund_key(refund_id: str) -> str:
    """The processor's idempotency key of a refund."""
    return f"refund:{refund_id}"


def get_payment(session: Session, payment_id: str) -> Payment:
    payment = session.get(Payment, payment_id) if "\x00" not in payment_id else None
    if payment is None:
        raise PaymentNotFound(f"payment {payment_id} not found")
    return payment


def by_key(session: Session, payment_id: str, idempotency_key: str) -> Refund | None:
    return session.scalars(
        select(Refund).where(
            Refund.payment_id == payment_id, Refund.idempotency_key == idempotency_key
        )
    ).first()


def _claimed(session: Session, payment_id: str) -> tuple[int, int]:
    """(money, credits) of this charge's refunds that succeeded or are pending."""
    money, credits = session.execute(
        select(
            func.coalesce(func.sum(Refund.amount_minor), 0),
            func.coalesce(func.sum(Refund.credits_micros), 0),
        ).where(Refund.payment_id == payment_id, Refund.status.in_((PENDING, SUCCEEDED)))
    ).one()
    return int(money), int(credits)


def _reserved_on_lot(session: Session, lot_id: str) -> int:
    reserved = session.scalar(
        select(func.coalesce(func.sum(Refund.credits_micros), 0)).where(
            Refund.lot_id == lot_id, Refund.status == PENDING
        )
    )
    return int(reserved or 0)


def _check_charge(payment: Payment, provider_name: str) -> None:
    if payment.kind != "charge":
        raise NotRefundable(f"payment {payment.id} is a refund; only a charge can be refunded")
    if payment.status != SUCCEEDED or payment.provider_id is None:
        raise NotRefundable(
            f"payment {payment.id} failed ({payment.failure_code}); only a succeeded charge can "
            "be refunded"
        )
    if payment.provider != provider_name:
        raise NotRefundable(
            f"payment {payment.id} was charged through the {payment.provider} provider; this "
            f"server uses {provider_name}, which cannot refund it",
            code="provider_mismatch",
        )


def begin(
    session: Session,
    payment_id: str,
    request: RefundRequest,
    idempotency_key: str,
    provider_name: str,
    now: datetime | None = None,
) -> Refund:
    """Step 1: the refund checked and recorded as pending (or the one this key already made), at
    ``now`` (default: the organization's now, its test clock's time if it is on one)."""
    payment = get_payment(session, payment_id)
    now = now or org_time.now_for(session, payment.organization_id)
    existing = by_key(session, payment_id, idempotency_key)
    if existing is not None:
        if existing.request_hash != request.fingerprint():
            raise Conflict(
                "this Idempotency-Key was already used with a different request body; use a new "
                "key for a new refund",
                code="idempotency_key_reused",
            )
        return existing
    _check_charge(payment, provider_name)
    ledger.lock_balance(session, payment.organization_id, payment.environment)
    claimed_minor, _ = _claimed(session, payment.id)
    left = payment.amount_minor - claimed_minor
    if left <= 0:
        raise NotRefundable(
            f"payment {payment.id} is refunded in full already ({_money(claimed_minor, payment)})",
            code="payment_refunded",
        )
    amount = left if request.amount_minor is None else request.amount_minor
    if amount > left:
        raise NotRefundable(
            f"at most {_money(left, payment)} of payment {payment.id} is left to refund "
            f"({_money(claimed_minor, payment)} of {_money(payment.amount_minor, payment)} "
            "refunded or being refunded)",
            code="amount_exceeds_refundable",
        )
    credits, lot_id = 0, None
    if payment.purpose in PURCHASE_PURPOSES:
        credits, lot_id = _credits_to_take(session, payment, claimed_minor, amount, now)
    row = Refund(
        id=new_id("ref"),
        organization_id=payment.organization_id,
        environment=payment.environment,
        payment_id=payment.id,
        amount_minor=amount,
        currency=payment.currency,
        credits_micros=credits,
        lot_id=lot_id,
        reason=request.reason[:500],
        status=PENDING,
        idempotency_key=idempotency_key,
        request_hash=request.fingerprint(),
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def _credits_to_take(
    session: Session, payment: Payment, claimed_minor: int, amount: int, now: datetime
) -> tuple[int, str | None]:
    """The credits a refund of ``amount`` takes back of the purchase, and its lot; ``409
    credits_spent`` when the lot no longer has them."""
    purchase = session.get(Purchase, payment.reference_id)
    if (
        purchase is None or purchase.lot_id is None
    ):  # pragma: no cover - a succeeded purchase has both
        raise NotRefundable(f"payment {payment.id} has no purchase lot to take credits back from")
    credits = domain.refund_credits_micros(
        claimed_minor, amount, purchase.amount_minor, purchase.credits_micros
    )
    lot = session.get(Lot, purchase.lot_id)
    assert lot is not None
    usable = lot.remaining_micros if lot.expires_at is None or lot.expires_at > now else 0
    spare = max(0, usable - _reserved_on_lot(session, lot.id))
    if credits > spare:
        most = domain.refundable_for_credits(
            claimed_minor, spare, purchase.amount_minor, purchase.credits_micros
        )
        raise Conflict(
            f"a refund of {_money(amount, payment)} takes back {format_credits(credits)} credits of "
            f"purchase {purchase.id}, but its lot {lot.id} has only {format_credits(spare)} left "
            f"(the rest was spent or expired); refund at most {_money(most, payment)}",
            code="credits_spent",
            errors=[
                {
                    "field": "amount_minor",
                    "type": "credits_spent",
                    "message": f"at most {most} minor units can be refunded",
                }
            ],
        )
    return credits, lot.id


def _money(amount_minor: int, payment: Payment) -> str:
    return f"{payment.currency} {domain.format_money(amount_minor, payment.currency)}"


def complete(
    session: Session,
    refund_id: str,
    result: RefundResult,
    provider_name: str,
    now: datetime | None = None,
) -> Refund:
    """Step 3: record the processor's answer at ``now`` (default: the organization's now); on
    success the refunded amount and the credits taken back. A refund completed by a concurrent twin
    is returned as it is."""
    row = session.get(Refund, refund_id)
    assert row is not None
    now = now or org_time.now_for(session, row.organization_id)
    balance = ledger.lock_balance(session, row.organization_id, row.environment)
    session.refresh(row)
    if row.status != PENDING:
        return row
    charge = session.get(Payment, row.payment_id, with_for_update=True)
    assert charge is not None
    entry = history.record(
        session,
        organization_id=row.organization_id,
        environment=row.environment,
        kind="refund",
        purpose=charge.purpose,
        reference_id=charge.reference_id,
        payment_method_id=charge.payment_method_id,
        result=result,
        provider=provider_name,
        idempotency_key=refund_key(row.id),
        now=now,
    )
    entry.refund_of_id = charge.id
    row.refund_payment_id = entry.id
    row.completed_at = now
    if result.status == SUCCEEDED:
        row.status = SUCCEEDED
        charge.refunded_minor += row.amount_minor
        if row.credits_micros:
            row.transaction_id = _take_credits(session, balance, row, charge, now)
        if charge.purpose == auto_top_up.PURPOSE:  # else the next write would buy it again
            auto_top_up.disable(
                session,
                balance,
                f"auto top-up purchase {charge.reference_id} was refunded ({row.reason}); "
                "turn it on again with PUT …/auto-top-up",
                now,
            )
    else:
        row.status = FAILED
        row.failure_code = result.failure_code or "refund_failed"
        row.failure_message = (result.failure_message or "the refund failed")[:500]
    session.flush()
    return row


def _take_credits(
    session: Session, balance: ledger.LockedBalance, row: Refund, charge: Payment, now: datetime
) -> int:
    """Take the refund's credits back: from the purchase lot while it has them, the rest (spent in
    the meantime) from the other lots in burn order, then arrears."""
    lots = ledger.lot_states(session, balance)
    own = next((lot for lot in lots if lot.id == row.lot_id), None)
    from_lot = min(row.credits_micros, own.remaining_micros) if own is not None else 0
    if own is not None and not ledger_domain.is_usable(own, now):
        from_lot = 0
    others = [lot for lot in lots if lot.id != row.lot_id]
    rest = ledger_domain.plan_debit(others, row.credits_micros - from_lot, now)
    plan = ledger_domain.DebitPlan(
        ((row.lot_id, from_lot), *rest.takes) if from_lot and row.lot_id else rest.takes,
        rest.arrears_micros,
    )
    postings = ledger_domain.debit_postings(plan, Account.issuance(LotSource.PURCHASE.value))
    description = (
        f"refund {row.id} of {charge.purpose} {charge.reference_id}: "
        f"{format_credits(row.credits_micros)} credits taken back for "
        f"{_money(row.amount_minor, charge)} paid back ({row.reason})"
    )
    draft = ledger.TransactionDraft(JOURNAL_KIND, description, postings)
    txn_id = ledger.post(session, balance, [draft], now)[0]
    ledger.settle_arrears(session, balance, now)
    return txn_id


def refund(
    db: Database,
    provider: PaymentProvider,
    payment_id: str,
    request: RefundRequest,
    idempotency_key: str,
) -> Refund:
    """Run a refund (see the module note). A retry with the same key returns the first outcome, or
    finishes a pending refund without refunding twice."""
    try:
        with db.write() as session:
            row = begin(session, payment_id, request, idempotency_key, provider.name)
    except IntegrityError:
        with db.read() as session:  # a concurrent twin recorded it first
            found = by_key(session, payment_id, idempotency_key)
        if found is None:
            raise
        if found.request_hash != request.fingerprint():
            raise Conflict(
                "this Idempotency-Key was already used with a different request body",
                code="idempotency_key_reused",
            ) from None
        row = found
    if row.status != PENDING:
        return row
    return settle(db, provider, row.id)


def settle(db: Database, provider: PaymentProvider, refund_id: str) -> Refund:
    """Steps 2 and 3 for a pending refund."""
    with db.read() as session:
        row = session.get(Refund, refund_id)
        assert row is not None
        if row.status != PENDING:
            return row
        charge = session.get(Payment, row.payment_id)
        assert charge is not None
        assert charge.provider_id is not None
        charge_id, amount, currency = charge.provider_id, row.amount_minor, row.currency
    try:
        result = provider.refund(charge_id, amount, refund_key(refund_id))
    except PaymentError as exc:  # the processor refused it outright: an outcome to record
        result = RefundResult("failed", amount, currency, None, exc.code, exc.detail)
    with db.write() as session:
        return complete(session, refund_id, result, provider.name)


def resume_pending(db: Database, provider: PaymentProvider, older_than: timedelta) -> list[Refund]:
    """Finish refunds left pending longer than ``older_than`` (the processor was unreachable, or
    the process died between the refund and its record): the worker's recovery step. Each is sent
    again with its own key (``refund:<id>``), so the processor refunds once. A refund recorded by a
    provider other than this one waits for that provider."""
    cutoff = clock.now() - older_than
    with db.read() as session:
        ids = list(
            session.scalars(
                select(Refund.id)
                .join(Payment, Payment.id == Refund.payment_id)
                .where(
                    Refund.status == PENDING,
                    Refund.created_at <= cutoff,
                    Payment.provider == provider.name,
                )
                .order_by(Refund.id)
            )
        )
    return [settle(db, provider, refund_id) for refund_id in ids]


def failed(row: Refund) -> PaymentError:
    """The 402 for a refund the processor refused, with its reason as the code."""
    return PaymentError(
        f"the processor refused refund {row.id}: {row.failure_message} ({row.failure_code}); "
        "nothing was refunded and no credits were taken back",
        code=row.failure_code or "refund_failed",
    )


def refunded_of_invoice(session: Session, invoice_id: str) -> int:
    """What succeeded refunds gave back of an invoice's payments (minor units)."""
    refunded = session.scalar(
        select(func.coalesce(func.sum(Payment.refunded_minor), 0)).where(
            Payment.purpose == "invoice",
            Payment.reference_id == invoice_id,
            Payment.kind == "charge",
        )
    )
    return int(refunded or 0)


def refund_json(row: Refund) -> dict[str, Any]:
    return {
        "id": row.id,
        "payment_id": row.payment_id,
        "organization_id": row.organization_id,
        "environment": row.environment,
        "status": row.status,
        "amount": {"amount_minor": row.amount_minor, "currency": row.currency},
        "credits": format_credits(row.credits_micros),
        "lot_id": row.lot_id,
        "reason": row.reason,
        "failure_code": row.failure_code,
        "failure_message": row.failure_message,
        "refund_payment_id": row.refund_payment_id,
        "transaction_id": f"txn_{row.transaction_id}" if row.transaction_id else None,
        "created_at": row.created_at,
        "completed_at": row.completed_at,
    }
