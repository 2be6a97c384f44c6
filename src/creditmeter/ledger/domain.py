"""Pure ledger rules: which lots pay, in what order, and how a debit splits over them.

No I/O here. Amounts are integer micro-credits.

Burn order (docs/ledger.md): lower ``priority`` first; then the soonest ``expires_at``, lots that
never expire last; then promotional credits before everything else (paid, plan and adjustment lots);
then the oldest lot; the lot id breaks any remaining tie so the order is total.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum


class LotSource(StrEnum):
    PLAN = "plan"
    PURCHASE = "purchase"
    PROMO = "promo"
    ADJUSTMENT = "adjustment"


class Account:
    """Account names used in postings."""

    LOT = "lot"
    ARREARS = "arrears"
    HELD = "held"
    BREAKAGE = "breakage"
    #: The platform's side of reservations: a hold moves credits from here into ``held``.
    HOLDS = "holds"

    @staticmethod
    def issuance(source: str) -> str:
        return f"issuance:{source}"

    @staticmethod
    def consumption(operation: str) -> str:
        return f"consumption:{operation}"


ORGANIZATION_ACCOUNTS = frozenset({Account.LOT, Account.ARREARS, Account.HELD})


@dataclass(frozen=True, slots=True)
class LotState:
    id: str
    source: str
    remaining_micros: int
    effective_at: datetime
    expires_at: datetime | None
    priority: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Posting:
    account: str
    amount_micros: int
    lot_id: str | None = None


@dataclass(frozen=True, slots=True)
class DebitPlan:
    """How a debit is paid: amounts taken from lots (in burn order) and the part that goes to arrears."""

    takes: tuple[tuple[str, int], ...]
    arrears_micros: int

    @property
    def total_micros(self) -> int:
        return sum(amount for _, amount in self.takes) + self.arrears_micros


class UnbalancedTransaction(ValueError):
    """Postings that do not sum to zero."""


def is_usable(lot: LotState, at: datetime) -> bool:
    """A lot pays only while effective, unexpired and not empty."""
    return (
        lot.remaining_micros > 0
        and lot.effective_at <= at
        and (lot.expires_at is None or lot.expires_at > at)
    )


def is_due_to_expire(lot: LotState, at: datetime) -> bool:
    return lot.remaining_micros > 0 and lot.expires_at is not None and lot.expires_at <= at


#: Stands in for "never" in the sort key, so lots that never expire tie on expiry among themselves.
_NEVER = datetime.max.replace(tzinfo=UTC)


def burn_key(lot: LotState) -> tuple[object, ...]:
    never_expires = lot.expires_at is None
    return (
        lot.priority,
        never_expires,
        lot.expires_at if lot.expires_at is not None else _NEVER,
        0 if lot.source == LotSource.PROMO else 1,
        lot.created_at,
        lot.id,
    )


def burn_order(lots: Iterable[LotState], at: datetime) -> list[LotState]:
    """The usable lots at ``at``, in the order they pay."""
    return sorted((lot for lot in lots if is_usable(lot, at)), key=burn_key)


def plan_debit(lots: Iterable[LotState], amount_micros: int, at: datetime) -> DebitPlan:
    """Split a debit over usable lots in burn order; whatever they cannot pay goes to arrears.

    Invariant: ``plan.total_micros == amount_micros`` and no lot gives more than it has.
    """
    if amount_micros < 0:
        raise ValueError("a debit is never negative")
    left = amount_micros
    takes: list[tuple[str, int]] = []
    for lot in burn_order(lots, at):
        if left == 0:
            break
        take = min(left, lot.remaining_micros)
        takes.append((lot.id, take))
        left -= take
    return DebitPlan(takes=tuple(takes), arrears_micros=left)


def plan_debit_sequence(
    lots: Iterable[LotState], amounts: Sequence[int], at: datetime
) -> list[DebitPlan]:
    """Split several debits, one after the other, over the same lots: each sees what the previous
    ones left. Equal to calling :func:`plan_debit` repeatedly, but sorts the lots once."""
    sequence = DebitSequence(lots, at)
    return [sequence.take(amount) for amount in amounts]


class DebitSequence:
    """Debits planned one after another over the same lots (sorted once): each sees what the
    previous ones left. ``available_micros`` is what the lots can still pay, so a caller can see
    what a debit would leave to arrears before taking it, and refuse it instead."""

    def __init__(self, lots: Iterable[LotState], at: datetime) -> None:
        self._order = burn_order(lots, at)
        self._left_in = [lot.remaining_micros for lot in self._order]
        self._index = 0
        self.available_micros = sum(self._left_in)

    def take(self, amount_micros: int) -> DebitPlan:
        if amount_micros < 0:
            raise ValueError("a debit is never negative")
        left = amount_micros
        takes: list[tuple[str, int]] = []
        order, left_in = self._order, self._left_in
        while left and self._index < len(order):
            take = min(left, left_in[self._index])
            takes.append((order[self._index].id, take))
            left -= take
            left_in[self._index] -= take
            if left_in[self._index] == 0:
                self._index += 1
        self.available_micros -= amount_micros - left
        return DebitPlan(takes=tuple(takes), arrears_micros=left)


def plan_arrears_settlement(
    lots: Iterable[LotState], arrears_micros: int, at: datetime
) -> DebitPlan:
    """Pay outstanding arrears from usable lots, in burn order, as far as they go."""
    plan = plan_debit(lots, arrears_micros, at)
    return DebitPlan(takes=plan.takes, arrears_micros=0)


def debit_postings(plan: DebitPlan, counter_account: str) -> list[Posting]:
    """Postings for a debit: each lot gives, arrears grows (more negative), the counter-account gains."""
    postings = [Posting(Account.LOT, -amount, lot_id) for lot_id, amount in plan.takes if amount]
    if plan.arrears_micros:
        postings.append(Posting(Account.ARREARS, -plan.arrears_micros))
    postings.append(Posting(counter_account, plan.total_micros))
    return postings


def settlement_postings(plan: DebitPlan) -> list[Posting]:
    """Postings that move credits from lots into the arrears account (bringing it back toward zero)."""
    postings = [Posting(Account.LOT, -amount, lot_id) for lot_id, amount in plan.takes if amount]
    total = sum(amount for _, amount in plan.takes)
    if total:
        postings.append(Posting(Account.ARREARS, total))
    return postings


def check_balanced(postings: Sequence[Posting]) -> None:
    """Raise unless the postings are non-empty, non-zero each, and sum to exactly zero."""
    if not postings:
        raise UnbalancedTransaction("a journal transaction needs postings")
    if any(p.amount_micros == 0 for p in postings):
        raise UnbalancedTransaction("a posting of zero carries no information")
    total = sum(p.amount_micros for p in postings)
    if total != 0:
        raise UnbalancedTransaction(f"postings sum to {total}, not zero")


def reversal_postings(original: Sequence[Posting]) -> list[Posting]:
    """The exact negation of a transaction's postings."""
    return [Posting(p.account, -p.amount_micros, p.lot_id) for p in original]
