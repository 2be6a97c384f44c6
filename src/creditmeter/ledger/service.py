"""Ledger services: the single write path into the journal, and the operations built on it.

Every function takes the caller's ``Session`` and never commits: the request or job wrapper does.
All writes for one organization and environment serialize on its ``balances`` row (``SELECT … FOR UPDATE``
on PostgreSQL; SQLite's writer transactions are already serialized by ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from creditmeter.errors import Conflict, InvalidRequest, NotFound
from creditmeter.kit import outbox
from creditmeter.kit.credits import MAX_BALANCE_MICROS, format_credits
from creditmeter.kit.db import UTCDateTime
from creditmeter.kit.ids import new_id
from creditmeter.ledger import domain, marks, watch
from creditmeter.ledger.domain import Account, LotState, Posting
from creditmeter.ledger.models import Balance, JournalTransaction, Lot
from creditmeter.ledger.models import Posting as PostingRow

ENVIRONMENTS = ("live", "test")


class InvariantViolation(Conflict):
    """A write that would break a ledger invariant; nothing was written."""

    code = "ledger_invariant"


@dataclass(frozen=True)
class TransactionDraft:
    """A journal transaction waiting to be posted."""

    kind: str
    description: str
    postings: Sequence[Posting]
    reverses_id: int | None = None


@dataclass
class LockedBalance:
    """An organization's balance read under its write lock, with the lots loaded under that lock
    (``lots`` stays in step with every posting made through :func:`post`)."""

    organization_id: str
    environment: str
    lots_micros: int
    arrears_micros: int
    held_micros: int
    lots: dict[str, LotState] | None = None
    #: The low-balance mark (``ledger.watch``) read with the lock; ``watch.UNREAD`` when not read.
    watch_below_micros: int | None = watch.UNREAD
    #: The band of ``ledger.marks`` and the paused state, read with the lock.
    band_low_micros: int | None = None
    band_high_micros: int | None = None
    paused_since: datetime | None = None
    refresh_on_grant: bool = False


@dataclass(frozen=True)
class DebitResult:
    transaction_id: int
    amount_micros: int
    takes: tuple[tuple[str, int], ...]
    arrears_added_micros: int


@dataclass(frozen=True)
class BalanceView:
    available_micros: int
    arrears_micros: int
    held_micros: int
    lots: list[Lot] = field(default_factory=list)

    @property
    def paused(self) -> bool:
        return self.available_micros <= 0


def create_balances(session: Session, organization_id: str, now: datetime) -> None:
    """Open the organization's live and test balances (called once, when it is created)."""
    session.execute(
        insert(Balance),
        [
            {
                "organization_id": organization_id,
                "environment": env,
                "lots_micros": 0,
                "arrears_micros": 0,
                "held_micros": 0,
                # No credits yet: paused, resumed by the first credits (ledger.marks).
                "paused_since": now,
                "band_high_micros": 1,
                "refresh_on_grant": False,
                "updated_at": now,
            }
            for env in ENVIRONMENTS
        ],
    )


_MARK_COLUMNS = (
    Balance.band_low_micros,
    Balance.band_high_micros,
    Balance.paused_since,
    Balance.refresh_on_grant,
)
# Statements of the write path, built once: constructing a statement costs more than running it.
_LOCK_BALANCE = (
    select(
        Balance.lots_micros,
        Balance.arrears_micros,
        Balance.held_micros,
        Balance.watch_below_micros,
        *_MARK_COLUMNS,
    )
    .where(Balance.organization_id == bindparam("org"), Balance.environment == bindparam("env"))
    .with_for_update()
)
_LOT_STATES = select(
    Lot.id,
    Lot.source,
    Lot.remaining_micros,
    Lot.effective_at,
    Lot.expires_at,
    Lot.priority,
    Lot.created_at,
).where(
    Lot.organization_id == bindparam("org"),
    Lot.environment == bindparam("env"),
    Lot.remaining_micros > 0,
)
_LOTS = cast(Table, Lot.__table__)
_MOVE_LOTS = (
    update(_LOTS)
    .where(_LOTS.c.id == bindparam("b_lot_id"))
    .values(remaining_micros=_LOTS.c.remaining_micros + bindparam("b_delta"))
)
_BALANCES = cast(Table, Balance.__table__)
_MOVE_BALANCE = (
    update(_BALANCES)
    .where(
        _BALANCES.c.organization_id == bindparam("b_org"),
        _BALANCES.c.environment == bindparam("b_env"),
    )
    .values(
        lots_micros=_BALANCES.c.lots_micros + bindparam("b_lots_delta"),
        arrears_micros=bindparam("b_arrears"),
        held_micros=bindparam("b_held"),
        updated_at=bindparam("b_now", type_=UTCDateTime()),
    )
)
_INSERT_TRANSACTIONS = insert(JournalTransaction).returning(
    JournalTransaction.id, sort_by_parameter_order=True
)
_INSERT_POSTINGS = insert(PostingRow)


def lock_balance(session: Session, organization_id: str, environment: str) -> LockedBalance:
    """Take the organization's write lock and read its materialized balance."""
    row = (
        session.connection()
        .execute(_LOCK_BALANCE, {"org": organization_id, "env": environment})
        .first()
    )
    if row is None:
        raise NotFound(f"organization {organization_id} not found")
    lots, arrears, held, mark, low, high, paused, refresh = row
    return LockedBalance(
        organization_id, environment, lots, arrears, held, None, mark, low, high, paused, refresh
    )


def lock_balances(
    session: Session, organization_ids: Sequence[str], environment: str
) -> dict[str, LockedBalance]:
    """Take the write locks of several organizations in one statement, always in id order (so two
    batches never deadlock), and read their balances."""
    ids = sorted(set(organization_ids))
    found: dict[str, LockedBalance] = {}
    for start in range(0, len(ids), 500):
        rows = session.connection().execute(
            select(
                Balance.organization_id,
                Balance.lots_micros,
                Balance.arrears_micros,
                Balance.held_micros,
                Balance.watch_below_micros,
                *_MARK_COLUMNS,
            )
            .where(
                Balance.environment == environment,
                Balance.organization_id.in_(ids[start : start + 500]),
            )
            .order_by(Balance.organization_id)
            .with_for_update()
        )
        for org, lots, arrears, held, mark, low, high, paused, refresh in rows:
            found[org] = LockedBalance(
                org, environment, lots, arrears, held, None, mark, low, high, paused, refresh
            )
    return found


def load_lots_of(session: Session, balances: Sequence[LockedBalance]) -> None:
    """Load the lots of several locked balances (same environment) with one query."""
    pending = [b for b in balances if b.lots is None]
    if not pending:
        return
    by_org = {b.organization_id: b for b in pending}
    for b in pending:
        b.lots = {}
    env = pending[0].environment
    orgs = sorted(by_org)
    for start in range(0, len(orgs), 500):
        rows = session.connection().execute(
            select(Lot.organization_id, *_LOT_STATES.selected_columns).where(
                Lot.environment == env,
                Lot.organization_id.in_(orgs[start : start + 500]),
                Lot.remaining_micros > 0,
            )
        )
        for org, *state in rows:
            lots = by_org[org].lots
            assert lots is not None
            lots[state[0]] = LotState(*state)


def post(
    session: Session,
    balance: LockedBalance,
    drafts: Sequence[TransactionDraft],
    now: datetime,
) -> list[int]:
    """Post drafts for one organization (see :func:`post_batch`, the one write path)."""
    return post_batch(session, [(balance, drafts)], now)[0]


@dataclass
class _Moves:
    balance: LockedBalance
    drafts: Sequence[TransactionDraft]
    lot_deltas: dict[str, int]
    new_arrears: int
    new_held: int


def _plan_moves(
    session: Session, balance: LockedBalance, drafts: Sequence[TransactionDraft]
) -> _Moves:
    """Check one organization's drafts against every ledger rule and work out what they move."""
    lot_deltas: dict[str, int] = defaultdict(int)
    arrears_delta = held_delta = 0
    for draft in drafts:
        try:
            domain.check_balanced(draft.postings)
        except domain.UnbalancedTransaction as exc:
            raise InvariantViolation(f"{draft.kind}: {exc}") from exc
        for p in draft.postings:
            if p.account == Account.LOT:
                if p.lot_id is None:
                    raise InvariantViolation("a lot posting must name its lot")
                lot_deltas[p.lot_id] += p.amount_micros
            elif p.lot_id is not None:
                raise InvariantViolation(f"account {p.account} cannot name a lot")
            elif p.account == Account.ARREARS:
                arrears_delta += p.amount_micros
            elif p.account == Account.HELD:
                held_delta += p.amount_micros
    _check_lots(session, balance, lot_deltas)
    new_arrears = balance.arrears_micros - arrears_delta
    if new_arrears < 0:
        raise InvariantViolation("arrears would become negative")
    new_held = balance.held_micros + held_delta
    if new_held < 0:
        raise InvariantViolation("held credits would become negative")
    new_lots = balance.lots_micros + sum(lot_deltas.values())
    if max(new_lots, new_arrears, new_held) > MAX_BALANCE_MICROS:
        raise InvalidRequest(
            f"this would take the organization's balance past the largest amount it may hold "
            f"({format_credits(MAX_BALANCE_MICROS)} credits); nothing was written",
            code="balance_limit_exceeded",
        )
    return _Moves(balance, drafts, lot_deltas, new_arrears, new_held)


def post_batch(
    session: Session,
    items: Sequence[tuple[LockedBalance, Sequence[TransactionDraft]]],
    now: datetime,
) -> list[list[int]]:
    """The one write path into the journal.

    Posts every draft of every (locked) organization given — each journal transaction belongs to
    exactly one organization — with one statement per table for the whole call, and moves each lot
    remainder and each organization's balance by exactly its postings' sums (one balance update per
    organization). Every rule is checked before anything is written: each draft sums to zero; every
    lot named belongs to that organization and environment; no lot goes below zero; arrears and
    held never go negative; no balance passes the largest amount. Returns the new transaction ids,
    per item, in order."""
    if len({id(balance) for balance, _ in items}) != len(items):
        raise ValueError("post_batch takes each locked balance once; merge its drafts")
    moves = [_plan_moves(session, balance, drafts) for balance, drafts in items if drafts]
    if not moves:
        return [[] for _ in items]
    conn = session.connection()
    ids = list(
        conn.scalars(
            _INSERT_TRANSACTIONS,
            [
                {
                    "organization_id": m.balance.organization_id,
                    "environment": m.balance.environment,
                    "kind": d.kind,
                    "description": d.description[:500],
                    "reverses_id": d.reverses_id,
                    "created_at": now,
                }
                for m in moves
                for d in m.drafts
            ],
        )
    )
    postings = []
    per_move: list[list[int]] = []
    cursor = 0
    for m in moves:
        mine = ids[cursor : cursor + len(m.drafts)]
        cursor += len(m.drafts)
        per_move.append(mine)
        org, env = m.balance.organization_id, m.balance.environment
        postings += [
            {
                "transaction_id": txn_id,
                "organization_id": org,
                "environment": env,
                "account": p.account,
                "lot_id": p.lot_id,
                "amount_micros": p.amount_micros,
            }
            for txn_id, d in zip(mine, m.drafts, strict=True)
            for p in d.postings
        ]
    conn.execute(_INSERT_POSTINGS, postings)
    changed = [
        {"b_lot_id": lot_id, "b_delta": delta}
        for m in moves
        for lot_id, delta in m.lot_deltas.items()
        if delta
    ]
    if changed:
        conn.execute(_MOVE_LOTS, changed)
    conn.execute(
        _MOVE_BALANCE,
        [
            {
                "b_org": m.balance.organization_id,
                "b_env": m.balance.environment,
                "b_lots_delta": sum(m.lot_deltas.values()),
                "b_arrears": m.new_arrears,
                "b_held": m.new_held,
                "b_now": now,
            }
            for m in moves
        ],
    )
    changes = [(m.balance, _change(m)) for m in moves]
    lowered = [b for b, change in changes if change < 0 and b.watch_below_micros is not None]
    for m in moves:
        _apply_moves(m)
    if lowered:  # watched organizations whose available credits went down (ledger.watch)
        watch.after_post(session, lowered, now)
    crossed = [b for b, change in changes if marks.outside_band(session, b, change, now)]
    if crossed:  # a line of ledger.marks crossed: recorded in this transaction
        marks.cross(session, crossed, now)
    by_balance = {id(m.balance): ids_ for m, ids_ in zip(moves, per_move, strict=True)}
    return [by_balance.get(id(balance), []) for balance, _ in items]


def _change(m: _Moves) -> int:
    """How the moves change available credits (lots up, arrears or held down: positive)."""
    b = m.balance
    change = sum(m.lot_deltas.values()) - (m.new_arrears - b.arrears_micros)
    return change - (m.new_held - b.held_micros)


def _apply_moves(m: _Moves) -> None:
    """Keep the in-memory view of a locked balance equal to what was just written."""
    balance = m.balance
    balance.lots_micros += sum(m.lot_deltas.values())
    balance.arrears_micros = m.new_arrears
    balance.held_micros = m.new_held
    if balance.lots is None:
        return
    for lot_id, delta in m.lot_deltas.items():
        if not delta:
            continue
        if lot_id not in balance.lots:
            balance.lots = None  # a lot created since loading: reload on next use
            return
        lot = balance.lots[lot_id]
        balance.lots[lot_id] = replace(lot, remaining_micros=lot.remaining_micros + delta)


def _check_lots(session: Session, balance: LockedBalance, deltas: dict[str, int]) -> None:
    if not deltas:
        return
    cached = balance.lots
    if cached is not None and all(lot_id in cached for lot_id in deltas):
        # Loaded under this organization's lock, so they are this organization's lots, current.
        for lot_id, delta in deltas.items():
            if cached[lot_id].remaining_micros + delta < 0:
                raise InvariantViolation(f"lot {lot_id} would go below zero")
        return
    rows = (
        session.connection()
        .execute(
            select(Lot.id, Lot.organization_id, Lot.environment, Lot.remaining_micros).where(
                Lot.id.in_(list(deltas))
            )
        )
        .all()
    )
    found = {r.id: r for r in rows}
    for lot_id, delta in deltas.items():
        row = found.get(lot_id)
        if row is None or (row.organization_id, row.environment) != (
            balance.organization_id,
            balance.environment,
        ):
            raise InvariantViolation(
                "a journal transaction may only touch lots of its own organization"
            )
        if row.remaining_micros + delta < 0:
            raise InvariantViolation(f"lot {lot_id} would go below zero")


def lot_states(session: Session, balance: LockedBalance) -> list[LotState]:
    """The locked organization's lots with credits left, loaded once per lock and kept current."""
    if balance.lots is None:
        balance.lots = {
            lot.id: lot
            for lot in load_lot_states(session, balance.organization_id, balance.environment)
        }
    return [lot for lot in balance.lots.values() if lot.remaining_micros > 0]


def load_lot_states(session: Session, organization_id: str, environment: str) -> list[LotState]:
    """Every lot with credits left (usable or not yet), as pure values."""
    rows = session.connection().execute(_LOT_STATES, {"org": organization_id, "env": environment})
    return [LotState(*r) for r in rows]


def settle_arrears(session: Session, balance: LockedBalance, now: datetime) -> int | None:
    """Pay outstanding arrears from usable lots, in burn order. Returns the transaction id, if any."""
    if balance.arrears_micros <= 0:
        return None
    plan = domain.plan_arrears_settlement(lot_states(session, balance), balance.arrears_micros, now)
    postings = domain.settlement_postings(plan)
    if not postings:
        return None
    draft = TransactionDraft("arrears_settlement", "new credits pay outstanding arrears", postings)
    return post(session, balance, [draft], now)[0]


@dataclass(frozen=True)
class GrantRequest:
    amount_micros: int
    source: domain.LotSource
    reason: str
    effective_at: datetime
    expires_at: datetime | None
    priority: int = 100
    cost_basis_micros: int = 0
    currency: str = "USD"


def grant(
    session: Session,
    organization_id: str,
    environment: str,
    request: GrantRequest,
    now: datetime,
) -> str:
    """Create a lot and issue its credits; outstanding arrears are paid first. Returns the lot id."""
    _check_grant(request)
    balance = lock_balance(session, organization_id, environment)
    return grant_many(session, [(balance, request)], now)[0]


def _check_grant(request: GrantRequest) -> None:
    if request.amount_micros <= 0:
        raise InvalidRequest("a grant must be positive", code="invalid_credits")
    if request.cost_basis_micros < 0:
        raise InvalidRequest(
            'cost_basis cannot be negative; send "0" for free credits', code="invalid_cost_basis"
        )
    if request.source == domain.LotSource.PROMO and request.cost_basis_micros:
        raise InvalidRequest(
            "promotional credits have a cost basis of zero; omit cost_basis",
            code="invalid_cost_basis",
        )
    if request.expires_at is not None and request.expires_at <= request.effective_at:
        raise InvalidRequest("expires_at must be later than effective_at", code="invalid_expiry")


def grant_many(
    session: Session, items: Sequence[tuple[LockedBalance, GrantRequest]], now: datetime
) -> list[str]:
    """:func:`grant` for several locked organizations at once (each balance at most once): the lots
    in one insert, the issuances through :func:`post_batch`, then each organization's outstanding
    arrears paid from its lots in burn order (one more :func:`post_batch`). Every request is checked
    before anything is written. Returns the lot ids, in order."""
    for _, request in items:
        _check_grant(request)
    if not items:
        return []
    lot_ids = [new_id("lot") for _ in items]
    session.connection().execute(
        insert(Lot),
        [
            {
                "id": lot_id,
                "organization_id": balance.organization_id,
                "environment": balance.environment,
                "source": r.source.value,
                "amount_micros": r.amount_micros,
                "remaining_micros": 0,
                "effective_at": r.effective_at,
                "expires_at": r.expires_at,
                "priority": r.priority,
                "cost_basis_micros": r.cost_basis_micros,
                "currency": r.currency,
                "reason": r.reason[:500],
                "created_at": now,
            }
            for lot_id, (balance, r) in zip(lot_ids, items, strict=True)
        ],
    )
    balances = [balance for balance, _ in items]
    _load_lots(session, balances)
    for lot_id, (balance, r) in zip(lot_ids, items, strict=True):
        assert balance.lots is not None
        balance.lots[lot_id] = LotState(
            lot_id, r.source.value, 0, r.effective_at, r.expires_at, r.priority, now
        )
    issuances = [
        (
            balance,
            [
                TransactionDraft(
                    "grant",
                    r.reason,
                    [
                        Posting(Account.LOT, r.amount_micros, lot_id),
                        Posting(Account.issuance(r.source.value), -r.amount_micros),
                    ],
                )
            ],
        )
        for lot_id, (balance, r) in zip(lot_ids, items, strict=True)
    ]
    post_batch(session, issuances, now)
    settle_arrears_many(session, balances, now)
    refresh = marks.refresh_jobs(balances, now)
    if refresh:  # a mark's line depends on the credits granted (ledger.marks)
        outbox.enqueue(session, refresh, now=now)
    return lot_ids


def _load_lots(session: Session, balances: Sequence[LockedBalance]) -> None:
    by_env: dict[str, list[LockedBalance]] = defaultdict(list)
    for balance in balances:
        by_env[balance.environment].append(balance)
    for group in by_env.values():
        load_lots_of(session, group)


def settle_arrears_many(session: Session, balances: Sequence[LockedBalance], now: datetime) -> None:
    """:func:`settle_arrears` for several locked organizations, posted with one :func:`post_batch`."""
    owing = [b for b in balances if b.arrears_micros > 0]
    _load_lots(session, owing)
    items = []
    for balance in owing:
        plan = domain.plan_arrears_settlement(
            lot_states(session, balance), balance.arrears_micros, now
        )
        postings = domain.settlement_postings(plan)
        if postings:
            draft = TransactionDraft(
                "arrears_settlement", "new credits pay outstanding arrears", postings
            )
            items.append((balance, [draft]))
    post_batch(session, items, now)


@dataclass(frozen=True)
class DebitRequest:
    amount_micros: int
    operation: str
    description: str


def debit(
    session: Session,
    organization_id: str,
    environment: str,
    amount_micros: int,
    operation: str,
    description: str,
    now: datetime,
) -> DebitResult:
    """Consume credits in burn order; what the lots cannot pay goes to arrears (the usage happened)."""
    return debit_many(
        session,
        organization_id,
        environment,
        [DebitRequest(amount_micros, operation, description)],
        now,
    )[0]


def debit_many(
    session: Session,
    organization_id: str,
    environment: str,
    requests: Sequence[DebitRequest],
    now: datetime,
) -> list[DebitResult]:
    """Several debits of one organization, in order, as one journal transaction each, written with one
    statement per table and one balance update. Each debit sees the lots the previous ones left."""
    for r in requests:
        if r.amount_micros <= 0:
            raise InvalidRequest("a debit must be positive", code="invalid_credits")
    if not requests:
        return []
    balance = lock_balance(session, organization_id, environment)
    settle_arrears(session, balance, now)
    remaining = {lot.id: lot for lot in lot_states(session, balance)}
    plans = []
    for r in requests:
        plan = domain.plan_debit(remaining.values(), r.amount_micros, now)
        for lot_id, take in plan.takes:
            lot = remaining[lot_id]
            remaining[lot_id] = replace(lot, remaining_micros=lot.remaining_micros - take)
        plans.append(plan)
    drafts = [
        TransactionDraft(
            "debit", r.description, domain.debit_postings(plan, Account.consumption(r.operation))
        )
        for r, plan in zip(requests, plans, strict=True)
    ]
    ids = post(session, balance, drafts, now)
    return [
        DebitResult(txn_id, r.amount_micros, plan.takes, plan.arrears_micros)
        for txn_id, r, plan in zip(ids, requests, plans, strict=True)
    ]


def expire_due(
    session: Session,
    now: datetime,
    organization_id: str | None = None,
    environment: str | None = None,
) -> list[tuple[str, str, int]]:
    """Post the remainder of every lot whose expiry has come to breakage, one transaction per
    organization and environment (of one organization, or one environment, when given). Returns
    ``(organization_id, environment, micros expired)``. Running it twice expires nothing the second
    time."""
    due = (
        select(Lot.organization_id, Lot.environment)
        .where(Lot.remaining_micros > 0, Lot.expires_at.is_not(None), Lot.expires_at <= now)
        .distinct()
        .order_by(Lot.organization_id, Lot.environment)  # one lock order: no deadlocks
    )
    if organization_id is not None:
        due = due.where(Lot.organization_id == organization_id)
    if environment is not None:
        due = due.where(Lot.environment == environment)
    results = []
    for org, env in session.execute(due).all():
        balance = lock_balance(session, org, env)
        total = expire_many(session, [balance], now).get(org)
        if total:
            results.append((org, env, total))
    return results


def expire_many(
    session: Session, balances: Sequence[LockedBalance], now: datetime
) -> dict[str, int]:
    """Post the remainder of every lot of these locked organizations whose expiry has come to
    breakage: one ``expiry`` transaction per organization that has any, all through one
    :func:`post_batch`, the lots loaded with one query. Returns the micros expired per organization
    (only those that expired something); running it twice expires nothing the second time."""
    _load_lots(session, balances)
    items = []
    expired: dict[str, int] = {}
    for balance in balances:
        lots = [lot for lot in lot_states(session, balance) if domain.is_due_to_expire(lot, now)]
        if not lots:
            continue
        total = sum(lot.remaining_micros for lot in lots)
        postings = [Posting(Account.LOT, -lot.remaining_micros, lot.id) for lot in lots]
        postings.append(Posting(Account.BREAKAGE, total))
        items.append((balance, [TransactionDraft("expiry", "unused credits expired", postings)]))
        expired[balance.organization_id] = total
    post_batch(session, items, now)
    return expired


def get_balance(
    session: Session, organization_id: str, environment: str, now: datetime
) -> BalanceView:
    """Available = usable lots - arrears - held, read from the same rows the write path changes."""
    row = session.execute(
        select(Balance.arrears_micros, Balance.held_micros).where(
            Balance.organization_id == organization_id, Balance.environment == environment
        )
    ).first()
    if row is None:
        raise NotFound(f"organization {organization_id} not found")
    lots = (
        session.execute(
            select(Lot).where(
                Lot.organization_id == organization_id,
                Lot.environment == environment,
                Lot.remaining_micros > 0,
                (Lot.expires_at.is_(None)) | (Lot.expires_at > now),
            )
        )
        .scalars()
        .all()
    )
    states = {lot.id: _state(lot) for lot in lots}
    usable = domain.burn_order(states.values(), now)
    usable_ids = {s.id for s in usable}
    pending = sorted(
        (s for s in states.values() if s.id not in usable_ids), key=lambda s: s.effective_at
    )
    by_id = {lot.id: lot for lot in lots}
    ordered = [by_id[s.id] for s in [*usable, *pending]]
    available = sum(s.remaining_micros for s in usable) - row.arrears_micros - row.held_micros
    return BalanceView(available, row.arrears_micros, row.held_micros, ordered)


def _state(lot: Lot) -> LotState:
    return LotState(
        lot.id,
        lot.source,
        lot.remaining_micros,
        lot.effective_at,
        lot.expires_at,
        lot.priority,
        lot.created_at,
    )


def transaction_postings(session: Session, transaction_id: int) -> list[Posting]:
    rows = session.execute(
        select(PostingRow.account, PostingRow.amount_micros, PostingRow.lot_id)
        .where(PostingRow.transaction_id == transaction_id)
        .order_by(PostingRow.id)
    ).all()
    return [Posting(r.account, r.amount_micros, r.lot_id) for r in rows]


#: Journal transactions that carry other records (usage events, holds) are corrected through those
#: records, so the two can never disagree.
_REVERSED_ELSEWHERE = {
    "usage": "a usage transaction is corrected per event: POST "
    "/v1/organizations/{org_id}/usage/{event_id}/reverse",
    "usage_reversal": "a usage correction cannot be reversed; record the usage again instead",
    "hold": "a hold is undone by releasing it: DELETE /v1/holds/{hold_id}",
    "release": "a hold release cannot be reversed; place a new hold instead",
    "credit_note": "credits a credit note refunded as money stay refunded; grant credits instead",
    "refund": "credits taken back by a refund stay taken back; grant credits instead",
}


def reverse(
    session: Session,
    organization_id: str,
    transaction_id: int,
    reason: str,
    now: datetime,
    currency: str = "USD",
) -> int:
    """Undo a journal transaction with a new one that negates its postings.

    Credits that would return to a lot that has since expired go to a new adjustment lot that keeps
    that lot's cost basis, currency and priority (one per expired lot); credits that would reduce
    arrears already paid go to a new adjustment lot at zero cost basis in ``currency``. A transaction
    is reversed at most once; a reversal is not itself reversible; a reversal that would take a lot
    below zero (its credits were spent since) is refused and writes nothing."""
    original = session.execute(
        select(JournalTransaction).where(
            JournalTransaction.id == transaction_id,
            JournalTransaction.organization_id == organization_id,
        )
    ).scalar_one_or_none()
    if original is None:
        raise NotFound(f"journal transaction txn_{transaction_id} not found")
    if original.reverses_id is not None:
        raise Conflict(
            "a reversal cannot be reversed; grant or debit again instead", code="not_reversible"
        )
    if original.kind in _REVERSED_ELSEWHERE:
        raise Conflict(_REVERSED_ELSEWHERE[original.kind], code="not_reversible")
    balance = lock_balance(session, organization_id, original.environment)
    already = session.scalar(
        select(func.count()).where(JournalTransaction.reverses_id == transaction_id)
    )
    if already:
        raise Conflict(
            f"journal transaction txn_{transaction_id} was already reversed",
            code="already_reversed",
        )
    negated = domain.reversal_postings(transaction_postings(session, transaction_id))
    postings = restore_postings(
        session, balance, negated, f"re-credit from reversal of txn_{transaction_id}", now, currency
    )
    draft = TransactionDraft("reversal", reason, postings, reverses_id=transaction_id)
    txn_id = post(session, balance, [draft], now)[0]
    settle_arrears(session, balance, now)
    return txn_id


def restore_postings(
    session: Session,
    balance: LockedBalance,
    negated: Sequence[Posting],
    why: str,
    now: datetime,
    currency: str,
) -> list[Posting]:
    """Postings that give credits back exactly: to the lots they came from while those are still valid;
    to a new adjustment lot (keeping the lot's cost basis, currency and priority) for a lot that has
    expired; arrears are reduced only as far as they are still outstanding, the rest goes to a new
    adjustment lot at zero cost basis."""
    expired = _expired_lots(session, [p.lot_id for p in negated if p.lot_id], now)
    postings: list[Posting] = []
    refunds: dict[str, int] = defaultdict(int)
    unpaid_arrears = 0
    arrears_room = balance.arrears_micros
    for p in negated:
        if p.account == Account.LOT and p.amount_micros > 0 and p.lot_id in expired:
            refunds[p.lot_id] += p.amount_micros
        elif p.account == Account.ARREARS and p.amount_micros > 0:
            paid = min(p.amount_micros, arrears_room)
            arrears_room -= paid
            unpaid_arrears += p.amount_micros - paid
            if paid:
                postings.append(Posting(Account.ARREARS, paid))
        else:
            if p.account == Account.ARREARS:
                arrears_room -= p.amount_micros
            postings.append(p)
    for lot_id, amount in refunds.items():
        template = expired[lot_id]
        new_lot = _adjustment_lot(
            session,
            balance,
            amount,
            why,
            now,
            template.currency,
            template.cost_basis_micros,
            template.priority,
        )
        postings.append(Posting(Account.LOT, amount, new_lot))
    if unpaid_arrears:
        new_lot = _adjustment_lot(session, balance, unpaid_arrears, why, now, currency, 0, 100)
        postings.append(Posting(Account.LOT, unpaid_arrears, new_lot))
    return postings


def _expired_lots(session: Session, lot_ids: list[str | None], now: datetime) -> dict[str, Lot]:
    if not lot_ids:
        return {}
    return {
        lot.id: lot
        for lot in session.scalars(
            select(Lot).where(
                Lot.id.in_(lot_ids), Lot.expires_at.is_not(None), Lot.expires_at <= now
            )
        )
    }


def _adjustment_lot(
    session: Session,
    balance: LockedBalance,
    amount: int,
    reason: str,
    now: datetime,
    currency: str,
    cost_basis_micros: int,
    priority: int,
) -> str:
    """An empty adjustment lot that the caller's postings fill (no issuance: the credits are returned,
    not new)."""
    lot_id = new_id("lot")
    balance.lots = None
    session.connection().execute(
        insert(Lot).values(
            id=lot_id,
            organization_id=balance.organization_id,
            environment=balance.environment,
            source=domain.LotSource.ADJUSTMENT.value,
            amount_micros=amount,
            remaining_micros=0,
            effective_at=now,
            expires_at=None,
            priority=priority,
            cost_basis_micros=cost_basis_micros,
            currency=currency,
            reason=reason,
            created_at=now,
        )
    )
    return lot_id
