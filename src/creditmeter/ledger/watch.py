"""Low-balance watch: a mark on an organization's balance below which the ledger asks for work.

A service higher up (auto top-up today) sets ``balances.watch_below_micros`` with :func:`set_mark`.
The ledger's one write path (``service.post_batch``) reads the mark with the balance lock it already
takes, so an unwatched organization costs nothing; when a write lowers a watched organization's
available credits below its mark, it enqueues one ``low_balance`` job (``kit.outbox``) in that same
transaction. The job's dedupe key is the organization and environment: a burst of usage enqueues one
job, whichever path debited (usage ingest — single, batch, CloudEvents —, holds, debits, expiries).

Available here is what ``GET …/balance`` shows: usable lots (effective, unexpired) minus arrears
minus held. The job's handler checks again under the lock; a job for a balance that is no longer
low does nothing. :func:`sweep` finds watched balances already below their mark (a crossing before
the mark was set, a job lost to an operator's hand) and enqueues for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from creditmeter.kit import outbox
from creditmeter.ledger.domain import is_usable
from creditmeter.ledger.models import Balance, Lot

if TYPE_CHECKING:
    from creditmeter.ledger.service import LockedBalance

LOW_BALANCE = "low_balance"
#: ``LockedBalance.watch_below_micros`` of a balance locked without reading its mark.
UNREAD = -1


def job(organization_id: str, environment: str, run_at: datetime) -> outbox.NewJob:
    """The ``low_balance`` job of one organization and environment (one pending at a time)."""
    return outbox.NewJob(
        kind=LOW_BALANCE,
        run_at=run_at,
        organization_id=organization_id,
        environment=environment,
        dedupe_key=f"{LOW_BALANCE}:{organization_id}:{environment}",
    )


def after_post(session: Session, balances: Sequence[LockedBalance], now: datetime) -> None:
    """Called by the write path with the watched (or unread) balances a post just lowered: enqueue
    a job for each now below its mark (one statement for all)."""
    unread = [b for b in balances if b.watch_below_micros == UNREAD]
    if unread:
        _read_marks(session, unread)
    low = [
        b
        for b in balances
        if b.watch_below_micros is not None
        and b.watch_below_micros != UNREAD
        and available_micros(session, b, now) < b.watch_below_micros
    ]
    if low:
        outbox.enqueue(session, [job(b.organization_id, b.environment, now) for b in low], now=now)


def _read_marks(session: Session, balances: Sequence[LockedBalance]) -> None:
    rows = session.execute(
        select(Balance.organization_id, Balance.environment, Balance.watch_below_micros).where(
            Balance.organization_id.in_(sorted({b.organization_id for b in balances}))
        )
    )
    marks = {(org, e): mark for org, e, mark in rows}
    for b in balances:
        b.watch_below_micros = marks.get((b.organization_id, b.environment))


def available_micros(session: Session, balance: LockedBalance, now: datetime) -> int:
    """Usable lots minus arrears minus held, from the lots the lock loaded (or one query)."""
    if balance.lots is not None:
        usable = sum(lot.remaining_micros for lot in balance.lots.values() if is_usable(lot, now))
    else:
        usable = int(
            session.scalar(
                select(func.coalesce(func.sum(Lot.remaining_micros), 0)).where(
                    Lot.organization_id == balance.organization_id,
                    Lot.environment == balance.environment,
                    _usable(now),
                )
            )
            or 0
        )
    return usable - balance.arrears_micros - balance.held_micros


def _usable(now: datetime) -> ColumnElement[bool]:
    return and_(
        Lot.remaining_micros > 0,
        Lot.effective_at <= now,
        or_(Lot.expires_at.is_(None), Lot.expires_at > now),
    )


def set_mark(
    session: Session, balance: LockedBalance, mark_micros: int | None, now: datetime
) -> bool:
    """Watch a locked balance (``None``: stop watching). When it is already below the new mark, a
    job is enqueued at once (an earlier pending one is moved to now). Returns whether it was."""
    if mark_micros is not None and mark_micros < 0:
        raise ValueError("a low-balance mark cannot be negative")
    session.execute(
        update(Balance)
        .where(
            Balance.organization_id == balance.organization_id,
            Balance.environment == balance.environment,
        )
        .values(watch_below_micros=mark_micros)
    )
    balance.watch_below_micros = mark_micros
    if mark_micros is None or available_micros(session, balance, now) >= mark_micros:
        return False
    outbox.enqueue(
        session,
        [job(balance.organization_id, balance.environment, now)],
        now=now,
        pull_forward=True,
    )
    return True


def sweep(session: Session, now: datetime) -> int:
    """Enqueue a job for every watched balance below its mark (one query, one insert): the safety
    net behind the write path's trigger. Returns how many balances were low."""
    usable = (
        select(func.coalesce(func.sum(Lot.remaining_micros), 0))
        .where(
            Lot.organization_id == Balance.organization_id,
            Lot.environment == Balance.environment,
            _usable(now),
        )
        .scalar_subquery()
    )
    low = session.execute(
        select(Balance.organization_id, Balance.environment).where(
            Balance.watch_below_micros.is_not(None),
            usable - Balance.arrears_micros - Balance.held_micros < Balance.watch_below_micros,
        )
    ).all()
    outbox.enqueue(session, [job(org, env, now) for org, env in low], now=now)
    return len(low)
