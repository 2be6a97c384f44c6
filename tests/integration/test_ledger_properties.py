"""Hypothesis properties of the ledger against the real databases (SQLite and PostgreSQL).

The stateful property drives random sequences of grants, debits, clock advances, expiries and reversals
through the service, and after every step compares the database with a small in-memory model of the
ledger that uses the reference burn order from the unit tests. Each example gets a fresh organization.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from creditmeter.errors import Conflict
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import Account, LotSource, LotState, Posting
from creditmeter.ledger.models import Balance, JournalTransaction, Lot
from creditmeter.ledger.models import Posting as PostingRow
from creditmeter.ledger.verify import verify
from tests.conftest import utc
from tests.unit.test_ledger_domain import reference_burn_order, reference_split

C = 1_000_000
T0 = utc(2026, 3, 1)
MakeOrg = Callable[..., str]

DB_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

amounts = st.one_of(
    st.integers(min_value=1, max_value=100).map(lambda n: n * C),
    st.integers(min_value=1, max_value=100 * C),
)


# --- the model -----------------------------------------------------------------------------------


@dataclass
class ModelLot:
    id: str
    source: str
    amount: int
    remaining: int
    effective_at: datetime
    expires_at: datetime | None
    priority: int
    created_at: datetime

    def state(self) -> LotState:
        return LotState(
            self.id,
            self.source,
            self.remaining,
            self.effective_at,
            self.expires_at,
            self.priority,
            self.created_at,
        )

    def expired(self, at: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= at


@dataclass
class ExpectedTxn:
    kind: str
    postings: list[Posting]


@dataclass(frozen=True)
class ReversalPlan:
    postings: list[Posting]
    #: (credits, priority) of each new adjustment lot: one per expired lot the reversal would refund
    #: (keeping its priority), then one for arrears already paid (default priority).
    new_lots: list[tuple[int, int]]
    refused: str | None = None

    @property
    def to_new_lot(self) -> int:
        return sum(amount for amount, _ in self.new_lots)


@dataclass
class Model:
    """What the ledger of one organization should hold, computed without the service."""

    lots: dict[str, ModelLot] = field(default_factory=dict)
    arrears: int = 0
    journal: dict[int, ExpectedTxn] = field(default_factory=dict)
    reversed: set[int] = field(default_factory=set)

    def _take(self, amount: int, at: datetime) -> tuple[list[tuple[str, int]], int]:
        takes, left = reference_split([x.state() for x in self.lots.values()], amount, at)
        for lot_id, take in takes:
            self.lots[lot_id].remaining -= take
        return takes, left

    def settle(self, at: datetime) -> list[ExpectedTxn]:
        """New or newly effective credits pay outstanding arrears first."""
        if not self.arrears:
            return []
        takes, _ = self._take(self.arrears, at)
        paid = sum(t for _, t in takes)
        if not paid:
            return []
        self.arrears -= paid
        postings = [Posting(Account.LOT, -t, lot_id) for lot_id, t in takes]
        return [ExpectedTxn("arrears_settlement", [*postings, Posting(Account.ARREARS, paid)])]

    def grant(self, lot: ModelLot, at: datetime) -> list[ExpectedTxn]:
        self.lots[lot.id] = lot
        issued = ExpectedTxn(
            "grant",
            [
                Posting(Account.LOT, lot.amount, lot.id),
                Posting(f"issuance:{lot.source}", -lot.amount),
            ],
        )
        return [issued, *self.settle(at)]

    def debit(
        self, amount: int, operation: str, at: datetime
    ) -> tuple[list[ExpectedTxn], list[tuple[str, int]], int]:
        before = self.settle(at)
        takes, left = self._take(amount, at)
        self.arrears += left
        postings = [Posting(Account.LOT, -t, lot_id) for lot_id, t in takes]
        if left:
            postings.append(Posting(Account.ARREARS, -left))
        postings.append(Posting(f"consumption:{operation}", amount))
        return [*before, ExpectedTxn("debit", postings)], takes, left

    def expire(self, at: datetime) -> tuple[list[ExpectedTxn], int]:
        due = [x for x in self.lots.values() if x.remaining and x.expired(at)]
        if not due:
            return [], 0
        total = sum(x.remaining for x in due)
        postings = [Posting(Account.LOT, -x.remaining, x.id) for x in due]
        for x in due:
            x.remaining = 0
        return [ExpectedTxn("expiry", [*postings, Posting(Account.BREAKAGE, total)])], total

    def reversal_plan(self, txn_id: int, at: datetime) -> ReversalPlan:
        """The reversal's postings (before any new lot) and what must go to a new lot, or the code of
        the Conflict the service must refuse with."""
        original = self.journal[txn_id]
        if original.kind == "reversal":
            return ReversalPlan([], [], refused="not_reversible")
        if txn_id in self.reversed:
            return ReversalPlan([], [], refused="already_reversed")
        postings: list[Posting] = []
        refunds: dict[str, int] = {}
        unpaid = 0
        outstanding = self.arrears
        for p in original.postings:
            back = -p.amount_micros
            if p.account == Account.LOT and back > 0 and self.lots[p.lot_id or ""].expired(at):
                # an expired lot takes nothing back: a new lot keeps its priority
                refunds[p.lot_id or ""] = refunds.get(p.lot_id or "", 0) + back
            elif p.account == Account.ARREARS and back > 0:
                paid = min(back, outstanding)  # only arrears still outstanding can be undone
                outstanding -= paid
                unpaid += back - paid
                if paid:
                    postings.append(Posting(Account.ARREARS, paid))
            else:
                if p.account == Account.ARREARS:
                    outstanding -= back
                postings.append(Posting(p.account, back, p.lot_id))
        for p in postings:
            if (
                p.account == Account.LOT
                and self.lots[p.lot_id or ""].remaining + p.amount_micros < 0
            ):
                return ReversalPlan([], [], refused="ledger_invariant")
        new_lots = [(amount, self.lots[lot_id].priority) for lot_id, amount in refunds.items()]
        if unpaid:
            new_lots.append((unpaid, 100))
        return ReversalPlan(postings, new_lots)

    def apply_reversal(
        self, txn_id: int, postings: list[Posting], new_lots: list[ModelLot], at: datetime
    ) -> list[ExpectedTxn]:
        for new_lot in new_lots:
            self.lots[new_lot.id] = new_lot
            postings = [*postings, Posting(Account.LOT, new_lot.amount, new_lot.id)]
        for p in postings:
            if p.account == Account.LOT:
                self.lots[p.lot_id or ""].remaining += p.amount_micros
            elif p.account == Account.ARREARS:
                self.arrears -= p.amount_micros
        self.reversed.add(txn_id)
        return [ExpectedTxn("reversal", postings), *self.settle(at)]

    def usable(self, at: datetime) -> int:
        return sum(
            x.remaining_micros
            for x in reference_burn_order([x.state() for x in self.lots.values()], at)
        )


# --- operations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantOp:
    amount: int
    source: LotSource
    delay_hours: int
    lifetime_hours: int | None
    priority: int


@dataclass(frozen=True)
class DebitOp:
    amount: int
    operation: str


@dataclass(frozen=True)
class AdvanceOp:
    hours: int


@dataclass(frozen=True)
class ExpireOp:
    pass


@dataclass(frozen=True)
class ReverseOp:
    pick: int


Op = GrantOp | DebitOp | AdvanceOp | ExpireOp | ReverseOp

grant_ops = st.builds(
    GrantOp,
    amount=amounts,
    source=st.sampled_from(list(LotSource)),
    delay_hours=st.one_of(st.just(0), st.just(0), st.integers(min_value=1, max_value=72)),
    lifetime_hours=st.one_of(st.none(), st.integers(min_value=1, max_value=48)),
    priority=st.sampled_from([50, 100, 100, 100]),
)
reverse_ops = st.builds(ReverseOp, pick=st.integers(min_value=0, max_value=10_000))
operations = st.lists(
    st.one_of(
        grant_ops,
        grant_ops,
        st.builds(DebitOp, amount=amounts, operation=st.sampled_from(["inference", "training"])),
        st.builds(DebitOp, amount=amounts, operation=st.sampled_from(["inference", "training"])),
        st.builds(AdvanceOp, hours=st.integers(min_value=1, max_value=48)),
        st.just(ExpireOp()),
        reverse_ops,
        reverse_ops,
    ),
    min_size=4,
    max_size=30,
)


# --- reading the database ------------------------------------------------------------------------


def _posting_key(p: Posting) -> tuple[str, str, int]:
    return (p.account, p.lot_id or "", p.amount_micros)


def new_transactions(db: Database, org: str, after: int) -> list[tuple[int, ExpectedTxn]]:
    with db.read() as s:
        rows = s.execute(
            select(JournalTransaction.id, JournalTransaction.kind)
            .where(JournalTransaction.organization_id == org, JournalTransaction.id > after)
            .order_by(JournalTransaction.id)
        ).all()
        return [(r.id, ExpectedTxn(r.kind, ledger.transaction_postings(s, r.id))) for r in rows]


def assert_same_transactions(
    actual: Sequence[tuple[int, ExpectedTxn]], expected: Sequence[ExpectedTxn]
) -> None:
    assert [t.kind for _, t in actual] == [t.kind for t in expected]
    for (_, got), want in zip(actual, expected, strict=True):
        assert sorted(got.postings, key=_posting_key) == sorted(want.postings, key=_posting_key)


def assert_database_matches(db: Database, org: str, model: Model, now: datetime) -> None:
    with db.read() as s:
        lots = dict(
            s.execute(
                select(Lot.id, Lot.remaining_micros).where(
                    Lot.organization_id == org, Lot.environment == "live"
                )
            ).all()
        )
        row = s.execute(
            select(Balance.lots_micros, Balance.arrears_micros, Balance.held_micros).where(
                Balance.organization_id == org, Balance.environment == "live"
            )
        ).one()
        view = ledger.get_balance(s, org, "live", now)
    assert lots == {x.id: x.remaining for x in model.lots.values()}
    assert tuple(row) == (sum(lots.values()), model.arrears, 0)
    assert view.arrears_micros == model.arrears
    assert view.available_micros == model.usable(now) - model.arrears
    assert all(v >= 0 for v in lots.values())


def unbalanced_transactions(db: Database, org: str) -> list[int]:
    with db.read() as s:
        return list(
            s.scalars(
                select(PostingRow.transaction_id)
                .where(PostingRow.organization_id == org)
                .group_by(PostingRow.transaction_id)
                .having(func.sum(PostingRow.amount_micros) != 0)
            )
        )


def reverse(db: Database, org: str, txn_id: int, now: datetime) -> int:
    with db.write() as s:
        return ledger.reverse(s, org, txn_id, "property", now)


# --- the stateful property -----------------------------------------------------------------------


def run(db: Database, org: str, ops: Sequence[Op]) -> Model:
    model = Model()
    now = T0
    last_txn = 0
    for op in ops:
        expected: list[ExpectedTxn] = []
        if isinstance(op, AdvanceOp):
            now += timedelta(hours=op.hours)
            continue
        if isinstance(op, GrantOp):
            effective_at = now + timedelta(hours=op.delay_hours)
            expires_at = (
                None
                if op.lifetime_hours is None
                else effective_at + timedelta(hours=op.lifetime_hours)
            )
            with db.write() as s:
                lot_id = ledger.grant(
                    s,
                    org,
                    "live",
                    ledger.GrantRequest(
                        op.amount,
                        op.source,
                        "property",
                        effective_at,
                        expires_at,
                        priority=op.priority,
                    ),
                    now,
                )
            expected = model.grant(
                ModelLot(
                    lot_id,
                    op.source.value,
                    op.amount,
                    op.amount,
                    effective_at,
                    expires_at,
                    op.priority,
                    now,
                ),
                now,
            )
        elif isinstance(op, DebitOp):
            with db.write() as s:
                result = ledger.debit(s, org, "live", op.amount, op.operation, "property", now)
            expected, takes, arrears = model.debit(op.amount, op.operation, now)
            assert list(result.takes) == takes  # the database paid in the reference burn order
            assert result.arrears_added_micros == arrears
            if arrears:
                event("a debit ran into arrears")
        elif isinstance(op, ExpireOp):
            with db.write() as s:
                done = ledger.expire_due(s, now, organization_id=org)
            expected, total = model.expire(now)
            if total:
                event("expiry posted breakage")
            assert done == ([(org, "live", total)] if total else [])
        elif isinstance(op, ReverseOp):
            if not model.journal:
                continue
            candidates = sorted(model.journal)
            target = candidates[op.pick % len(candidates)]
            plan = model.reversal_plan(target, now)
            if plan.refused is not None:
                before = new_transactions(db, org, 0)
                with pytest.raises(Conflict) as caught:
                    reverse(db, org, target, now)
                assert caught.value.code == plan.refused
                event(f"a reversal was refused: {plan.refused}")
                assert new_transactions(db, org, 0) == before
                assert_database_matches(db, org, model, now)
                continue
            known = set(model.lots)
            reverse(db, org, target, now)
            with db.read() as s:
                fresh = s.scalars(
                    select(Lot).where(Lot.organization_id == org, Lot.id.not_in(known))
                ).all()
            assert sorted((r.amount_micros, r.priority) for r in fresh) == sorted(plan.new_lots)
            new_lots = []
            for row in fresh:
                assert (row.source, row.expires_at) == ("adjustment", None)
                assert row.effective_at == row.created_at == now
                new_lots.append(
                    ModelLot(row.id, row.source, row.amount_micros, 0, now, None, row.priority, now)
                )
            if new_lots:
                event("a reversal re-credited a new adjustment lot")
            expected = model.apply_reversal(target, plan.postings, new_lots, now)

        actual = new_transactions(db, org, last_txn)
        assert_same_transactions(actual, expected)
        if any(t.kind == "arrears_settlement" for t in expected):
            event(f"arrears were settled after a {type(op).__name__}")
        for txn_id, txn in actual:
            model.journal[txn_id] = txn
            last_txn = txn_id
        assert_database_matches(db, org, model, now)
    return model


@DB_SETTINGS
@given(ops=operations)
@example(  # a refund for credits whose lot has expired becomes a new adjustment lot
    ops=[
        GrantOp(10 * C, LotSource.PLAN, 0, 24, 100),
        DebitOp(4 * C, "inference"),
        AdvanceOp(30),
        ExpireOp(),
        ReverseOp(1),
        ReverseOp(1),  # twice: refused
        ReverseOp(3),  # the reversal itself: refused
    ]
)
@example(  # overdraft, a purchase pays the arrears, then the overdrawn run is refunded
    ops=[
        GrantOp(5 * C, LotSource.PROMO, 0, None, 100),
        DebitOp(8 * C, "training"),
        GrantOp(10 * C, LotSource.PURCHASE, 0, None, 100),
        ReverseOp(1),
        ReverseOp(2),  # the purchase's lot paid arrears: refused
        ReverseOp(3),  # reversing the arrears settlement puts them back, and they are settled again
        DebitOp(1, "inference"),
    ]
)
@example(  # next month's allocation does not pay this month's arrears until it is effective
    ops=[
        GrantOp(10 * C, LotSource.PLAN, 24, 48, 100),
        DebitOp(3 * C, "inference"),
        AdvanceOp(25),
        DebitOp(1 * C, "inference"),
        AdvanceOp(48),
        ExpireOp(),
        ExpireOp(),
        ReverseOp(4),
    ]
)
def test_random_ledger_histories_match_the_model_and_verify_clean(
    db: Database, make_org: MakeOrg, ops: list[Op]
) -> None:
    org = make_org("Hypothesis Labs")
    run(db, org, ops)
    assert unbalanced_transactions(db, org) == []
    with db.read() as s:
        assert [m.describe() for m in verify(s)] == []


# --- focused properties --------------------------------------------------------------------------


lot_specs = st.lists(
    st.tuples(amounts, st.sampled_from(list(LotSource)), st.one_of(st.none(), st.integers(1, 30))),
    max_size=5,
)


@DB_SETTINGS
@given(
    lots=lot_specs,
    future=st.lists(amounts, max_size=2),
    overdraft=amounts,
    payment=amounts,
    source=st.sampled_from(list(LotSource)),
)
def test_arrears_are_paid_first_by_a_new_lot(
    db: Database,
    make_org: MakeOrg,
    lots: list[tuple[int, LotSource, int | None]],
    future: list[int],
    overdraft: int,
    payment: int,
    source: LotSource,
) -> None:
    """Usage runs past zero; the next credits to arrive pay the arrears before anything else, and
    lots that are not effective yet are left alone."""
    org = make_org("Overdraft Inc")
    later = T0 + timedelta(days=7)
    with db.write() as s:
        for amount, lot_source, days in lots:
            expires = None if days is None else T0 + timedelta(days=days)
            ledger.grant(
                s, org, "live", ledger.GrantRequest(amount, lot_source, "lot", T0, expires), T0
            )
        future_ids = [
            ledger.grant(
                s, org, "live", ledger.GrantRequest(a, LotSource.PLAN, "next", later, None), T0
            )
            for a in future
        ]
    usable = sum(a for a, _, _ in lots)
    with db.write() as s:
        result = ledger.debit(s, org, "live", usable + overdraft, "training", "big run", T0)
    assert result.arrears_added_micros == overdraft

    at = T0 + timedelta(hours=1)
    with db.write() as s:
        new_lot = ledger.grant(
            s, org, "live", ledger.GrantRequest(payment, source, "pay", at, None), at
        )
    with db.read() as s:
        view = ledger.get_balance(s, org, "live", at)
        left = {
            r.id: r.remaining_micros
            for r in s.execute(
                select(Lot.id, Lot.remaining_micros).where(Lot.organization_id == org)
            )
        }
    assert view.arrears_micros == max(0, overdraft - payment)
    assert left[new_lot] == max(0, payment - overdraft)
    assert [left[i] for i in future_ids] == future
    assert view.available_micros == payment - overdraft
    with db.read() as s:
        assert verify(s) == []


@DB_SETTINGS
@given(
    lots=lot_specs,
    debits=st.lists(amounts, min_size=1, max_size=5),
    order=st.randoms(use_true_random=False),
)
def test_reversal_restores_the_exact_balance(
    db: Database,
    make_org: MakeOrg,
    lots: list[tuple[int, LotSource, int | None]],
    debits: list[int],
    order: random.Random,
) -> None:
    """Undoing debits newest-first puts every micro-credit back into the lot it came from; undoing
    them in any order restores the same available balance."""

    def snapshot(org: str) -> tuple[dict[str, int], tuple[int, int, int]]:
        with db.read() as s:
            left = dict(
                s.execute(
                    select(Lot.id, Lot.remaining_micros).where(Lot.organization_id == org)
                ).all()
            )
            bal = s.execute(
                select(Balance.lots_micros, Balance.arrears_micros, Balance.held_micros).where(
                    Balance.organization_id == org, Balance.environment == "live"
                )
            ).one()
        return left, (bal[0], bal[1], bal[2])

    at = T0 + timedelta(hours=1)
    results: dict[str, list[ledger.DebitResult]] = {}
    orgs = {"lifo": make_org("Newest First"), "any": make_org("Any Order")}
    for org in orgs.values():
        with db.write() as s:
            for amount, lot_source, days in lots:
                expires = None if days is None else T0 + timedelta(days=days)
                ledger.grant(
                    s, org, "live", ledger.GrantRequest(amount, lot_source, "lot", T0, expires), T0
                )
    before = {name: snapshot(org) for name, org in orgs.items()}
    for name, org in orgs.items():
        results[name] = []
        for amount in debits:
            with db.write() as s:
                results[name].append(ledger.debit(s, org, "live", amount, "inference", "run", at))

    for result in reversed(results["lifo"]):
        with db.write() as s:
            ledger.reverse(s, orgs["lifo"], result.transaction_id, "refund", at)
    assert snapshot(orgs["lifo"]) == before["lifo"]

    shuffled = list(results["any"])
    order.shuffle(shuffled)
    for result in shuffled:
        with db.write() as s:
            ledger.reverse(s, orgs["any"], result.transaction_id, "refund", at)
    _, (lots_total, arrears, held) = snapshot(orgs["any"])
    assert (lots_total - arrears, held) == (before["any"][1][0], 0)
    assert arrears == 0
    with db.read() as s:
        assert (
            ledger.get_balance(s, orgs["any"], "live", at).available_micros == before["any"][1][0]
        )
        assert verify(s) == []
