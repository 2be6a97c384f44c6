"""Consumption and reservations: how metered usage and holds enter the journal.

A batch of usage for one organization is one journal transaction: the events are split over the lots in
burn order one after the other (each sees what the previous left), and the postings are aggregated per
lot, per ``consumption:<operation>`` account and for arrears. Each event keeps its own allocation (which
lots paid how much, and how much went to arrears), so it can be refunded exactly later. A hold moves
credits from the platform's ``holds`` account into the organization's ``held`` account; releasing it
moves them back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from creditmeter.ledger import domain
from creditmeter.ledger.domain import Account, Posting
from creditmeter.ledger.service import (
    LockedBalance,
    TransactionDraft,
    lot_states,
    post,
    restore_postings,
    settle_arrears,
)


@dataclass(frozen=True, slots=True)
class Charge:
    amount_micros: int
    operation: str


@dataclass(frozen=True, slots=True)
class Allocation:
    """Which lots paid for one charge, and how much of it went to arrears."""

    takes: tuple[tuple[str, int], ...]
    arrears_micros: int

    def to_json(self) -> dict[str, Any]:
        return {"lots": [[lot_id, n] for lot_id, n in self.takes], "arrears": self.arrears_micros}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Allocation:
        return cls(tuple((str(a), int(b)) for a, b in data["lots"]), int(data["arrears"]))


def plan_consumption(
    session: Session,
    balance: LockedBalance,
    charges: Sequence[Charge],
    description: str,
    now: datetime,
) -> tuple[TransactionDraft | None, list[Allocation]]:
    """Split every charge, in order, over the organization's lots (outstanding arrears are settled
    first); usage beyond the lots goes to arrears (it was performed). Returns one journal
    transaction for all of them (None when every charge is zero) and one allocation per charge."""
    settle_arrears(session, balance, now)
    plans = domain.plan_debit_sequence(
        lot_states(session, balance), [c.amount_micros for c in charges], now
    )
    per_lot: dict[str, int] = defaultdict(int)
    per_operation: dict[str, int] = defaultdict(int)
    arrears = 0
    for charge, plan in zip(charges, plans, strict=True):
        for lot_id, take in plan.takes:
            per_lot[lot_id] += take
        arrears += plan.arrears_micros
        if charge.amount_micros:
            per_operation[charge.operation] += charge.amount_micros
    allocations = [Allocation(p.takes, p.arrears_micros) for p in plans]
    if not per_operation:
        return None, allocations
    postings = [Posting(Account.LOT, -n, lot_id) for lot_id, n in per_lot.items() if n]
    if arrears:
        postings.append(Posting(Account.ARREARS, -arrears))
    postings += [Posting(Account.consumption(op), n) for op, n in sorted(per_operation.items())]
    return TransactionDraft("usage", description, postings), allocations


def consume(
    session: Session,
    balance: LockedBalance,
    charges: Sequence[Charge],
    description: str,
    now: datetime,
) -> tuple[int | None, list[Allocation]]:
    """:func:`plan_consumption` and post it. Returns the transaction id (None when every charge is
    zero) and one allocation per charge."""
    draft, allocations = plan_consumption(session, balance, charges, description, now)
    if draft is None:
        return None, allocations
    return post(session, balance, [draft], now)[0], allocations


def refund(
    session: Session,
    balance: LockedBalance,
    charge: Charge,
    allocation: Allocation,
    reason: str,
    now: datetime,
    currency: str,
) -> int:
    """Give one charge back exactly: to the lots it came from while they are valid, otherwise to an
    adjustment lot; the part that went to arrears reduces arrears still outstanding."""
    negated = [Posting(Account.LOT, n, lot_id) for lot_id, n in allocation.takes if n]
    if allocation.arrears_micros:
        negated.append(Posting(Account.ARREARS, allocation.arrears_micros))
    negated.append(Posting(Account.consumption(charge.operation), -charge.amount_micros))
    postings = restore_postings(session, balance, negated, reason, now, currency)
    txn_id = post(session, balance, [TransactionDraft("usage_reversal", reason, postings)], now)[0]
    settle_arrears(session, balance, now)
    return txn_id


def reserve(
    session: Session, balance: LockedBalance, amount_micros: int, description: str, now: datetime
) -> int:
    """Hold credits: they stay in their lots but are no longer available to anyone else."""
    postings = [Posting(Account.HELD, amount_micros), Posting(Account.HOLDS, -amount_micros)]
    return post(session, balance, [TransactionDraft("hold", description, postings)], now)[0]


def release(
    session: Session, balance: LockedBalance, amount_micros: int, description: str, now: datetime
) -> int:
    """Give held credits back to the available balance."""
    postings = [Posting(Account.HELD, -amount_micros), Posting(Account.HOLDS, amount_micros)]
    return post(session, balance, [TransactionDraft("release", description, postings)], now)[0]
