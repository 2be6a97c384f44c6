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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from creditmeter.errors import CreditmeterError, InvalidRequest
from creditmeter.kit.credits import MAX_BALANCE_MICROS, format_credits
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


@dataclass(frozen=True, slots=True)
class Consumption:
    """Charges planned for one organization. ``drafts``: the journal transactions to post, each for
    a run of consecutive charges. Per charge: its allocation and the index of its draft (None when
    it was refused, or when nothing it belongs with cost anything); ``refused``: why each refused
    charge was (it takes nothing, so the charges after it see the lots it left)."""

    drafts: list[TransactionDraft]
    allocations: list[Allocation | None]
    draft_of: list[int | None]
    refused: dict[int, CreditmeterError]


def plan_consumption(
    session: Session,
    balance: LockedBalance,
    charges: Sequence[Charge],
    description: str,
    now: datetime,
    admit: Callable[[int], CreditmeterError | None] | None = None,
) -> Consumption:
    """Split every charge, in order, over the organization's lots (outstanding arrears are settled
    first); usage beyond the lots goes to arrears (it was performed).

    Limits, each refusing only the charge that would pass it: arrears never pass the balance limit
    (``balance_limit_exceeded``); ``admit(i)``, asked about each charge the ledger would take, may
    refuse it for the caller's own limits (it is asked in order, once, and a charge it admits is
    taken). Charges are grouped into one journal transaction per run whose total stays within the
    balance limit, so no posting — nor any partial sum of a transaction's postings — passes it."""
    settle_arrears(session, balance, now)
    lots = domain.DebitSequence(lot_states(session, balance), now)
    arrears_room = MAX_BALANCE_MICROS - balance.arrears_micros
    runs: list[_Run] = [_Run()]
    allocations: list[Allocation | None] = []
    run_of: list[int | None] = []
    refused: dict[int, CreditmeterError] = {}
    for i, charge in enumerate(charges):
        amount = charge.amount_micros
        if amount - lots.available_micros > arrears_room:  # its shortfall would pass the limit
            refused[i] = _past_limit()
        elif admit is not None and (error := admit(i)) is not None:
            refused[i] = error
        if i in refused:
            allocations.append(None)
            run_of.append(None)
            continue
        plan = lots.take(amount)
        arrears_room -= plan.arrears_micros
        if runs[-1].total_micros + amount > MAX_BALANCE_MICROS:
            runs.append(_Run())
        runs[-1].add(charge, plan)
        allocations.append(Allocation(plan.takes, plan.arrears_micros))
        run_of.append(len(runs) - 1)
    drafts: list[TransactionDraft] = []
    draft_index: dict[int, int] = {}
    for r, run in enumerate(runs):
        draft = run.draft(description if len(runs) == 1 else f"{description} (part {r + 1})")
        if draft is not None:
            draft_index[r] = len(drafts)
            drafts.append(draft)
    draft_of = [None if r is None else draft_index.get(r) for r in run_of]
    return Consumption(drafts, allocations, draft_of, refused)


class _Run:
    """Consecutive charges posted as one journal transaction, aggregated per lot and operation."""

    def __init__(self) -> None:
        self.per_lot: dict[str, int] = defaultdict(int)
        self.per_operation: dict[str, int] = defaultdict(int)
        self.arrears = 0
        self.total_micros = 0

    def add(self, charge: Charge, plan: domain.DebitPlan) -> None:
        for lot_id, take in plan.takes:
            self.per_lot[lot_id] += take
        self.arrears += plan.arrears_micros
        if charge.amount_micros:
            self.per_operation[charge.operation] += charge.amount_micros
            self.total_micros += charge.amount_micros

    def draft(self, description: str) -> TransactionDraft | None:
        if not self.per_operation:
            return None
        postings = [Posting(Account.LOT, -n, lot_id) for lot_id, n in self.per_lot.items() if n]
        if self.arrears:
            postings.append(Posting(Account.ARREARS, -self.arrears))
        postings += [
            Posting(Account.consumption(op), n) for op, n in sorted(self.per_operation.items())
        ]
        return TransactionDraft("usage", description, postings)


def _past_limit() -> CreditmeterError:
    return InvalidRequest(
        "this usage would take the organization's arrears past the largest amount a balance may "
        f"hold ({format_credits(MAX_BALANCE_MICROS)} credits); it was not recorded. Pay the "
        "arrears (add credits) first",
        code="balance_limit_exceeded",
    )


def consume(
    session: Session,
    balance: LockedBalance,
    charges: Sequence[Charge],
    description: str,
    now: datetime,
) -> tuple[list[int], list[Allocation | None]]:
    """:func:`plan_consumption` and post it. Returns the transaction ids and one allocation per
    charge (None for a refused one)."""
    planned = plan_consumption(session, balance, charges, description, now)
    if not planned.drafts:
        return [], planned.allocations
    return post(session, balance, planned.drafts, now), planned.allocations


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
