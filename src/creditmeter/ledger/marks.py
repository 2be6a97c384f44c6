"""Balance marks: lines on an organization's available credits whose crossing the write path records
in the same transaction as the write that crossed them.

A mark belongs to an owner higher up (an alert rule of ``notify``; the ledger only knows its opaque
``owner`` text) and has two lines: it *fires* when available credits go below ``below_micros`` and
*re-arms* when they come back to ``rearm_micros`` or more (``rearm_micros >= below_micros``: the gap
is the hysteresis, so usage hovering at the line does not flap). Besides the marks of its owners,
every balance has one built-in line: it is *paused* when available credits are at or below zero and
*resumed* when they are above.

The cost on the hot path is two integers read with the balance lock it already takes: each balance
keeps its *band* (``band_low_micros``: the highest line that can fire; ``band_high_micros``: the
lowest line that can re-arm). :func:`outside_band` tells the write path whether a post left available
credits outside it; only then does :func:`cross` load the marks, flip the ones crossed, enqueue one
``balance_crossing`` job (``kit.outbox``) per flip, and store the new band, all in the writer's
transaction. The owners' handlers turn those jobs into notifications. :func:`sync` replaces the
marks of one owner group (an owner changed its rules), :func:`sweep` finds balances that time moved
outside their band without a write (a lot became effective or lapsed before the expiry run), and
a grant to a balance flagged ``refresh_on_grant`` enqueues a ``marks_refresh`` job, for owners whose
lines depend on the credits granted (a percentage of the period's grants).

Available here is what ``GET …/balance`` shows: usable lots minus arrears minus held.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Index,
    String,
    Table,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from creditmeter.kit import outbox
from creditmeter.kit.db import Base, BigIntPK, UTCDateTime
from creditmeter.ledger.models import Balance, Lot
from creditmeter.ledger.watch import available_micros

if TYPE_CHECKING:
    from creditmeter.ledger.service import LockedBalance

#: The job enqueued for each line crossed; its payload is a :class:`Crossing`'s fields.
BALANCE_CROSSING = "balance_crossing"
#: The job enqueued when a grant reaches a balance flagged ``refresh_on_grant``.
MARKS_REFRESH = "marks_refresh"
#: ``owner`` of the built-in line at zero (paused / resumed).
PAUSED = "paused"
DOWN, UP = "down", "up"


class BalanceMark(Base):
    __tablename__ = "balance_marks"
    __table_args__ = (
        CheckConstraint("rearm_micros >= below_micros", name="rearm_not_below"),
        Index("ix_balance_marks_org_env", "organization_id", "environment"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(String(40))
    environment: Mapped[str] = mapped_column(String(10))
    #: The owner's reference (e.g. ``alert:alr_…``), unique: one mark per owner.
    owner: Mapped[str] = mapped_column(String(100), unique=True)
    below_micros: Mapped[int] = mapped_column(BigInteger)
    rearm_micros: Mapped[int] = mapped_column(BigInteger)
    fired: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class Line:
    """A mark as its owner wants it: fire below ``below_micros``, re-arm at ``rearm_micros``."""

    owner: str
    below_micros: int
    rearm_micros: int


@dataclass(frozen=True)
class Crossing:
    """One line crossed by a write (``direction`` ``down``: fired / paused; ``up``: re-armed /
    resumed), with the available credits the write left and when."""

    organization_id: str
    environment: str
    owner: str
    direction: str
    available_micros: int
    at: datetime

    @classmethod
    def from_job(cls, job: outbox.Claimed) -> Crossing:
        p = job.payload
        return cls(
            p["organization_id"],
            p["environment"],
            p["owner"],
            p["direction"],
            int(p["available_micros"]),
            datetime.fromisoformat(p["at"]),
        )

    def job(self) -> outbox.NewJob:
        return outbox.NewJob(
            kind=BALANCE_CROSSING,
            run_at=self.at,
            organization_id=self.organization_id,
            environment=self.environment,
            payload={
                "organization_id": self.organization_id,
                "environment": self.environment,
                "owner": self.owner,
                "direction": self.direction,
                "available_micros": self.available_micros,
                "at": self.at.isoformat(),
            },
        )


def outside_band(
    session: Session, balance: LockedBalance, change_micros: int, now: datetime
) -> bool:
    """Whether a post that moved available credits by ``change_micros`` left them outside the
    balance's band (only then is :func:`cross` called). A write that lowered credits can only cross
    a line downwards, one that raised them only upwards."""
    if change_micros < 0 and balance.band_low_micros is not None:
        return available_micros(session, balance, now) < balance.band_low_micros
    if change_micros > 0 and balance.band_high_micros is not None:
        return available_micros(session, balance, now) >= balance.band_high_micros
    return False


def cross(session: Session, balances: Sequence[LockedBalance], now: datetime) -> list[Crossing]:
    """Flip every line of these locked balances that their available credits crossed, enqueue one
    ``balance_crossing`` job per flip, and store each balance's new band (a handful of statements,
    whatever the number of balances). Returns the crossings."""
    if not balances:
        return []
    marks = _marks_of(session, balances)
    crossings: list[Crossing] = []
    flipped: dict[int, bool] = {}
    for b in balances:
        available = available_micros(session, b, now)
        key = (b.organization_id, b.environment)

        def crossed(owner: str, direction: str, b: LockedBalance = b, a: int = available) -> None:
            crossings.append(Crossing(b.organization_id, b.environment, owner, direction, a, now))

        if b.paused_since is None and available <= 0:
            b.paused_since = now
            crossed(PAUSED, DOWN)
        elif b.paused_since is not None and available > 0:
            b.paused_since = None
            crossed(PAUSED, UP)
        for mark in marks.get(key, []):
            if not mark.fired and available < mark.below_micros:
                mark.fired = flipped[mark.id] = True
                crossed(mark.owner, DOWN)
            elif mark.fired and available >= mark.rearm_micros:
                mark.fired = flipped[mark.id] = False
                crossed(mark.owner, UP)
        _set_band(b, marks.get(key, []))
    if flipped:
        for fired in (True, False):
            ids = [mark_id for mark_id, state in flipped.items() if state is fired]
            if ids:
                session.execute(
                    update(BalanceMark)
                    .where(BalanceMark.id.in_(ids))
                    .values(fired=fired, changed_at=now)
                )
    _store_bands(session, balances)
    outbox.enqueue(session, [c.job() for c in crossings], now=now)
    return crossings


@dataclass
class _Mark:
    id: int
    owner: str
    below_micros: int
    rearm_micros: int
    fired: bool


def _marks_of(
    session: Session, balances: Sequence[LockedBalance]
) -> dict[tuple[str, str], list[_Mark]]:
    keys = sorted({(b.organization_id, b.environment) for b in balances})
    found: dict[tuple[str, str], list[_Mark]] = defaultdict(list)
    for start in range(0, len(keys), 500):
        rows = session.execute(
            select(
                BalanceMark.organization_id,
                BalanceMark.environment,
                BalanceMark.id,
                BalanceMark.owner,
                BalanceMark.below_micros,
                BalanceMark.rearm_micros,
                BalanceMark.fired,
            ).where(
                tuple_(BalanceMark.organization_id, BalanceMark.environment).in_(
                    keys[start : start + 500]
                )
            )
        )
        for org, env, mark_id, owner, below, rearm, fired in rows:
            found[(org, env)].append(_Mark(mark_id, owner, below, rearm, fired))
    return found


def _set_band(balance: LockedBalance, marks: Iterable[_Mark]) -> None:
    lows = [m.below_micros for m in marks if not m.fired]
    highs = [m.rearm_micros for m in marks if m.fired]
    if balance.paused_since is None:
        lows.append(1)  # available <= 0 pauses
    else:
        highs.append(1)  # available > 0 resumes
    balance.band_low_micros = max(lows) if lows else None
    balance.band_high_micros = min(highs) if highs else None


_BALANCES = cast(Table, Balance.__table__)
_STORE_BAND = (
    update(_BALANCES)
    .where(
        _BALANCES.c.organization_id == bindparam("b_org"),
        _BALANCES.c.environment == bindparam("b_env"),
    )
    .values(
        band_low_micros=bindparam("b_low"),
        band_high_micros=bindparam("b_high"),
        paused_since=bindparam("b_paused", type_=UTCDateTime()),
    )
)


def _store_bands(session: Session, balances: Sequence[LockedBalance]) -> None:
    """One statement for every balance (executemany)."""
    session.connection().execute(
        _STORE_BAND,
        [
            {
                "b_org": b.organization_id,
                "b_env": b.environment,
                "b_low": b.band_low_micros,
                "b_high": b.band_high_micros,
                "b_paused": b.paused_since,
            }
            for b in balances
        ],
    )


def sync(
    session: Session,
    balance: LockedBalance,
    prefix: str,
    lines: Sequence[Line],
    now: datetime,
    *,
    refresh_on_grant: bool | None = None,
) -> list[Crossing]:
    """Make the marks of one locked balance whose owner starts with ``prefix`` exactly ``lines``: new
    ones start armed, changed ones keep their state, missing ones go. Then every line is checked
    against the available credits at once (a new mark already crossed fires now). With
    ``refresh_on_grant`` set, the balance's flag for ``marks_refresh`` jobs is set too."""
    for line in lines:
        if not line.owner.startswith(prefix):
            raise ValueError(f"mark {line.owner} is not under {prefix}")
        if line.rearm_micros < line.below_micros:
            raise ValueError("a mark re-arms at or above the line where it fires")
    org, env = balance.organization_id, balance.environment
    existing = {
        m.owner: m
        for m in session.scalars(
            select(BalanceMark).where(
                BalanceMark.organization_id == org,
                BalanceMark.environment == env,
                BalanceMark.owner.startswith(prefix, autoescape=True),
            )
        )
    }
    wanted = {line.owner: line for line in lines}
    gone = [m.id for owner, m in existing.items() if owner not in wanted]
    if gone:
        session.execute(delete(BalanceMark).where(BalanceMark.id.in_(gone)))
    for owner, line in wanted.items():
        mark = existing.get(owner)
        if mark is None:
            session.add(
                BalanceMark(
                    organization_id=org,
                    environment=env,
                    owner=owner,
                    below_micros=line.below_micros,
                    rearm_micros=line.rearm_micros,
                    fired=False,
                    changed_at=now,
                )
            )
        elif (mark.below_micros, mark.rearm_micros) != (line.below_micros, line.rearm_micros):
            mark.below_micros, mark.rearm_micros = line.below_micros, line.rearm_micros
    session.flush()
    if refresh_on_grant is not None:
        session.execute(
            update(Balance)
            .where(Balance.organization_id == org, Balance.environment == env)
            .values(refresh_on_grant=refresh_on_grant)
        )
        balance.refresh_on_grant = refresh_on_grant
    return cross(session, [balance], now)


def fired_owners(session: Session, organization_id: str, environment: str) -> set[str]:
    """The owners whose marks are fired now."""
    return set(
        session.scalars(
            select(BalanceMark.owner).where(
                BalanceMark.organization_id == organization_id,
                BalanceMark.environment == environment,
                BalanceMark.fired.is_(True),
            )
        )
    )


def refresh_jobs(balances: Iterable[LockedBalance], now: datetime) -> list[outbox.NewJob]:
    """The ``marks_refresh`` jobs of the balances flagged ``refresh_on_grant`` (one pending each)."""
    return [
        outbox.NewJob(
            kind=MARKS_REFRESH,
            run_at=now,
            organization_id=b.organization_id,
            environment=b.environment,
            dedupe_key=f"{MARKS_REFRESH}:{b.organization_id}:{b.environment}",
        )
        for b in balances
        if b.refresh_on_grant
    ]


def sweep(session: Session, now: datetime) -> list[tuple[str, str]]:
    """The balances whose available credits are outside their band without a write having put them
    there (time made a lot usable or unusable): one query. The caller locks each and calls
    :func:`cross`."""
    usable = (
        select(func.coalesce(func.sum(Lot.remaining_micros), 0))
        .where(
            Lot.organization_id == Balance.organization_id,
            Lot.environment == Balance.environment,
            Lot.remaining_micros > 0,
            Lot.effective_at <= now,
            or_(Lot.expires_at.is_(None), Lot.expires_at > now),
        )
        .scalar_subquery()
    )
    available = usable - Balance.arrears_micros - Balance.held_micros
    rows = session.execute(
        select(Balance.organization_id, Balance.environment)
        .where(
            or_(
                and_(Balance.band_low_micros.is_not(None), available < Balance.band_low_micros),
                and_(Balance.band_high_micros.is_not(None), available >= Balance.band_high_micros),
            )
        )
        .order_by(Balance.organization_id, Balance.environment)
    )
    return [(org, env) for org, env in rows]
