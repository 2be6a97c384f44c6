"""What billing tells the notifications layer: the catalog events of its changes (``notify.catalog``).

Every event is published by ``notify.events.publish`` in the transaction of the change it reports,
so it exists exactly when its cause committed, and under a ``source_key`` derived from the cause
(``invoice.issued:<invoice id>``, ``payment.failed:<payment id>``, ``credits.granted:<lot id>``,
``credits.expired:txn_<journal transaction id>``, …): a step that is retried or resumed publishes
nothing twice. ``occurred_at`` is the business time of the change (the boundary of a cycle close,
the organization's test clock time); ``created_at`` is real time (``kit.clock``), which also
schedules the deliveries. Money is a decimal string in the currency's major unit
(``domain.format_money``), credits a decimal string (``kit.credits.format_credits``).

Who publishes what:

| event | where |
| --- | --- |
| ``invoice.issued`` (and ``invoice.paid`` for one issued with nothing to pay) | ``invoices.issue_many`` |
| ``invoice.paid``, ``invoice.past_due``, ``payment.failed`` (invoice), ``organization.suspended`` | ``dunning`` |
| ``purchase.succeeded`` / ``purchase.failed``, ``payment.failed`` (purchase) | ``purchases`` |
| ``auto_top_up.failed`` | ``auto_top_up`` |
| ``subscription.updated`` | ``subscriptions``, ``renewal`` (the close), ``suspension`` |
| ``credits.granted`` | ``subscriptions.allocate``, ``renewal``, ``cycle`` (overage), ``purchases``, grants |
| ``credits.expired`` | ``cycle`` (the close's expiry), ``test_clocks`` (the worker's and a clock's) |

Functions take the caller's ``Session`` and never commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from creditmeter.billing import domain
from creditmeter.billing.models import Invoice
from creditmeter.billing.payments.models import Payment, Purchase
from creditmeter.kit import clock
from creditmeter.kit.credits import format_credits
from creditmeter.ledger.models import JournalTransaction
from creditmeter.ledger.models import Posting as PostingRow
from creditmeter.ledger.service import GrantRequest, LockedBalance
from creditmeter.notify import events

#: Invoice statuses with nothing left to pay (``invoices.PAID``, ``invoices.VOID``).
_SETTLED = ("paid", "void")


class _Event(NamedTuple):
    """One event to publish: its type, organization, environment, data, business time and key."""

    type_: str
    organization_id: str
    environment: str
    data: dict[str, Any]
    at: datetime
    key: str | None


def _publish(
    session: Session,
    type_: str,
    organization_id: str,
    environment: str,
    data: dict[str, Any],
    at: datetime,
    key: str | None,
) -> None:
    _publish_all(session, [_Event(type_, organization_id, environment, data, at, key)])


def _publish_all(session: Session, items: Iterable[_Event]) -> None:
    """Publish ``items`` in order. The one place the batched steps (a cycle close's chunk, an
    expiry run) publish through: ``notify.events.publish`` writes one event per call (an insert, a
    read and the fan-out), so a set-based publish would take its place here."""
    now = clock.now()
    for item in items:
        events.publish(
            session,
            item.type_,
            organization_id=item.organization_id,
            environment=item.environment,
            data=item.data,
            now=now,
            occurred_at=item.at,
            source_key=item.key,
        )


# --- invoices ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceFacts:
    """What an invoice event says of an invoice (from an ``Invoice`` or a row being inserted)."""

    id: str
    number: str
    organization_id: str
    environment: str
    status: str
    total_minor: int
    currency: str
    period_start: datetime
    period_end: datetime
    due_at: datetime

    @classmethod
    def of(cls, invoice: Invoice | dict[str, Any]) -> InvoiceFacts:
        names = cls.__dataclass_fields__
        if isinstance(invoice, dict):
            return cls(**{name: invoice[name] for name in names})
        return cls(**{name: getattr(invoice, name) for name in names})

    def data(self) -> dict[str, Any]:
        due = 0 if self.status in _SETTLED else self.total_minor
        return {
            "invoice_id": self.id,
            "number": self.number,
            "status": self.status,
            "total": domain.format_money(self.total_minor, self.currency),
            "amount_due": domain.format_money(due, self.currency),
            "currency": self.currency,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "due_at": self.due_at,
            "pdf_url": f"/v1/invoices/{self.id}/pdf",
        }


def _invoice_event(type_: str, facts: InvoiceFacts, at: datetime) -> _Event:
    key = f"{type_}:{facts.id}"
    return _Event(type_, facts.organization_id, facts.environment, facts.data(), at, key)


def invoices_issued(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """``invoice.issued`` for each invoice row just inserted (at its ``issued_at``), and
    ``invoice.paid`` for one issued with nothing to pay (``paid`` when issued)."""
    items = []
    for row in rows:
        facts = InvoiceFacts.of(row)
        items.append(_invoice_event("invoice.issued", facts, row["issued_at"]))
        if facts.status == "paid":
            items.append(_invoice_event("invoice.paid", facts, row["paid_at"] or row["issued_at"]))
    _publish_all(session, items)


def invoice_paid(session: Session, invoice: Invoice, at: datetime) -> None:
    _publish_all(session, [_invoice_event("invoice.paid", InvoiceFacts.of(invoice), at)])


def invoices_paid(session: Session, invoice_ids: Sequence[str], at: datetime) -> None:
    """``invoice.paid`` for invoices just marked paid by a set-based update (one query)."""
    rows = session.scalars(
        select(Invoice)
        .where(Invoice.id.in_(invoice_ids))
        .order_by(Invoice.id)
        .execution_options(populate_existing=True)
    )
    _publish_all(session, [_invoice_event("invoice.paid", InvoiceFacts.of(r), at) for r in rows])


def invoice_past_due(session: Session, invoice: Invoice, at: datetime) -> None:
    _publish_all(session, [_invoice_event("invoice.past_due", InvoiceFacts.of(invoice), at)])


def organization_suspended(session: Session, invoice: Invoice, at: datetime) -> None:
    """The organization was suspended because ``invoice``'s dunning ran out (published in the
    invoice's environment; the suspension holds in both)."""
    _publish(
        session,
        "organization.suspended",
        invoice.organization_id,
        invoice.environment,
        {
            "invoice_id": invoice.id,
            "reason": f"invoice {invoice.number} is past due: its payment retries ran out",
        },
        at,
        f"organization.suspended:{invoice.id}",
    )


# --- payments and purchases -------------------------------------------------------------------


def payment_failed(
    session: Session,
    payment: Payment,
    *,
    invoice_id: str | None = None,
    purchase_id: str | None = None,
    attempt: int | None = None,
    next_attempt_at: datetime | None = None,
) -> None:
    """``payment.failed`` for a failed charge recorded in the billing history."""
    _publish(
        session,
        "payment.failed",
        payment.organization_id,
        payment.environment,
        {
            "payment_id": payment.id,
            "invoice_id": invoice_id,
            "purchase_id": purchase_id,
            "amount": domain.format_money(payment.amount_minor, payment.currency),
            "currency": payment.currency,
            "failure_code": payment.failure_code,
            "failure_message": payment.failure_message,
            "attempt": attempt,
            "next_attempt_at": next_attempt_at,
        },
        payment.created_at,
        f"payment.failed:{payment.id}",
    )


def purchase_done(session: Session, purchase: Purchase) -> None:
    """``purchase.succeeded`` or ``purchase.failed`` for a purchase that just left ``pending`` (or
    was made on account), at its ``completed_at``."""
    type_ = "purchase.succeeded" if purchase.status == "succeeded" else "purchase.failed"
    _publish(
        session,
        type_,
        purchase.organization_id,
        purchase.environment,
        {
            "purchase_id": purchase.id,
            "package": purchase.package,
            "credits": format_credits(purchase.credits_micros),
            "amount": domain.format_money(purchase.amount_minor, purchase.currency),
            "currency": purchase.currency,
            "status": purchase.status,
            "failure_code": purchase.failure_code,
            "auto_top_up": purchase.purpose == "auto_top_up",
            "billing": purchase.billing,
        },
        purchase.completed_at or purchase.created_at,
        f"{type_}:{purchase.id}",
    )


def auto_top_up_failed(
    session: Session,
    organization_id: str,
    environment: str,
    *,
    purchase: Purchase | None,
    package: str | None,
    failure_code: str | None,
    reason: str,
    disabled: bool,
    key: str,
    at: datetime,
) -> None:
    _publish(
        session,
        "auto_top_up.failed",
        organization_id,
        environment,
        {
            "purchase_id": purchase.id if purchase else None,
            "package": package,
            "failure_code": failure_code,
            "reason": reason,
            "disabled": disabled,
        },
        at,
        f"auto_top_up.failed:{key}",
    )


# --- subscriptions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionChange:
    """One ``subscription.updated``: what changed of a subscription, and from when."""

    subscription_id: str
    organization_id: str
    environment: str
    plan: str
    previous_plan: str | None
    status: str
    change: str
    effective_at: datetime
    reason: str | None = None

    def data(self) -> dict[str, Any]:
        return {
            "subscription_id": self.subscription_id,
            "plan": self.plan,
            "previous_plan": self.previous_plan,
            "status": self.status,
            "change": self.change,
            "effective_at": self.effective_at,
            "reason": self.reason,
        }


def subscription_updated(
    session: Session, change: SubscriptionChange, at: datetime, key: str | None = None
) -> None:
    """``key``: what makes the change unique when a step may run again (a cycle close, an
    allocation); None for a change made by one request, which commits once or not at all (on a
    test clock two requests may share ``at``, so no key is derived from it)."""
    _publish(
        session,
        "subscription.updated",
        change.organization_id,
        change.environment,
        change.data(),
        at,
        f"subscription.updated:{change.change}:{key}" if key else None,
    )


# --- credits ----------------------------------------------------------------------------------


def granted(
    session: Session, lots: Iterable[tuple[str, str, str, GrantRequest]], at: datetime
) -> None:
    """``credits.granted`` per lot, each ``(organization, environment, lot id, the request that
    granted it)``, granted at ``at``."""
    _publish_all(
        session,
        [
            _Event(
                "credits.granted",
                organization_id,
                environment,
                {
                    "lot_id": lot_id,
                    "source": request.source.value,
                    "credits": format_credits(request.amount_micros),
                    "effective_at": request.effective_at,
                    "expires_at": request.expires_at,
                    "reason": request.reason,
                },
                at,
                f"credits.granted:{lot_id}",
            )
            for organization_id, environment, lot_id, request in lots
        ],
    )


def granted_many(
    session: Session,
    grants: Sequence[tuple[LockedBalance, GrantRequest]],
    lot_ids: Sequence[str],
    at: datetime,
) -> None:
    """``credits.granted`` of the lots ``ledger.grant_many(session, grants, at)`` returned."""
    granted(
        session,
        [
            (balance.organization_id, balance.environment, lot_id, request)
            for (balance, request), lot_id in zip(grants, lot_ids, strict=True)
        ],
        at,
    )


def journal_mark(session: Session) -> int:
    """The highest journal transaction id so far: the ledger's writes that follow in this
    transaction (under locks the caller holds) have higher ids (see ``expired_since``)."""
    return int(session.scalar(select(func.coalesce(func.max(JournalTransaction.id), 0))) or 0)


def expired_since(
    session: Session, mark: int, organization_ids: Sequence[str], at: datetime
) -> None:
    """``credits.expired`` for each ``expiry`` journal transaction of these organizations posted
    after ``mark`` (``journal_mark``, read before ``ledger.expire_due``/``expire_many``): one event
    per organization, environment and run, with the lots and credits, keyed by the transaction.
    One query per 500 organizations."""
    ids = sorted(set(organization_ids))
    lots: dict[tuple[int, str, str], list[tuple[str, int]]] = defaultdict(list)
    for start in range(0, len(ids), 500):
        rows = session.execute(
            select(
                JournalTransaction.id,
                JournalTransaction.organization_id,
                JournalTransaction.environment,
                PostingRow.lot_id,
                PostingRow.amount_micros,
            )
            .join(PostingRow, PostingRow.transaction_id == JournalTransaction.id)
            .where(
                JournalTransaction.id > mark,
                JournalTransaction.kind == "expiry",
                JournalTransaction.organization_id.in_(ids[start : start + 500]),
                PostingRow.lot_id.is_not(None),
            )
            .order_by(JournalTransaction.id, PostingRow.id)
        )
        for txn_id, org, env, lot_id, amount in rows:
            lots[(txn_id, org, env)].append((str(lot_id), -amount))
    _publish_all(
        session,
        [
            _Event(
                "credits.expired",
                org,
                env,
                {
                    "credits": format_credits(sum(amount for _, amount in mine)),
                    "lots": [
                        {"lot_id": lot_id, "credits": format_credits(amount)}
                        for lot_id, amount in mine
                    ],
                },
                at,
                f"credits.expired:txn_{txn_id}",
            )
            for (txn_id, org, env), mine in sorted(lots.items())
        ],
    )
