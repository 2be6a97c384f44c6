"""Billing history: every charge and refund, succeeded or failed, with the processor's reason.

``record`` writes one row in the caller's transaction (never commits); the processor's idempotency
key is unique, so one attempt is never recorded twice.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.billing.payments.models import Payment
from creditmeter.billing.payments.provider import ChargeResult, RefundResult
from creditmeter.kit.ids import new_id
from creditmeter.kit.pagination import decode_cursor


def record(
    session: Session,
    *,
    organization_id: str,
    environment: str,
    kind: str,
    purpose: str,
    reference_id: str,
    payment_method_id: str | None,
    result: ChargeResult | RefundResult,
    provider: str,
    idempotency_key: str,
    now: datetime,
) -> Payment:
    payment = Payment(
        id=new_id("pay"),
        organization_id=organization_id,
        environment=environment,
        kind=kind,
        purpose=purpose,
        reference_id=reference_id,
        payment_method_id=payment_method_id,
        amount_minor=result.amount_minor,
        currency=result.currency,
        status=result.status,
        failure_code=result.failure_code,
        failure_message=(result.failure_message or "")[:500] or None,
        provider=provider,
        provider_id=result.provider_id,
        idempotency_key=idempotency_key,
        created_at=now,
    )
    session.add(payment)
    session.flush()
    return payment


def by_key(session: Session, idempotency_key: str) -> Payment | None:
    return session.scalars(
        select(Payment).where(Payment.idempotency_key == idempotency_key)
    ).first()


def list_payments(
    session: Session, organization_id: str, environment: str, cursor: str | None, limit: int
) -> tuple[list[Payment], str | None]:
    """One page of the history, newest first, and the id to continue before (or None)."""
    before = decode_cursor(cursor, "pay_")
    query = (
        select(Payment)
        .where(Payment.organization_id == organization_id, Payment.environment == environment)
        .order_by(Payment.id.desc())
        .limit(limit + 1)
    )
    if before:
        query = query.where(Payment.id < before)
    rows = list(session.scalars(query))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)
