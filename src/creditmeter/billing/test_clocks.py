"""Test clocks: rehearse billing months ahead without waiting for them.

The operator creates a clock frozen at a time and attaches rehearsal organizations to it. From then
on the organization is billed on the clock's time, not real time: the worker and
``creditmeter cycle run`` leave its cycle closes, dunning retries and lot expiries alone
(``include_clocked`` unset), and each ``advance`` of the clock runs, in time order, exactly what the
worker would have run on time: the closes due at each month boundary passed (with ``now`` = the
boundary), each dunning retry at its own time in between, the lots due to expire by then, and
finally the same for the clock's new time.

- **Only test organizations**: an organization with an active ``live`` subscription cannot be
  attached (``409 live_subscription``): a clock must never close, invoice or charge live money
  early. One clock per organization; attaching again moves it to the new clock.
- **Forward only**: ``advance`` to an earlier time is ``422 clock_backwards``; to the same time it
  changes nothing.
- A close that fails during an advance is reported and stays unfinished; the next advance resumes
  it first (closes are idempotent and resumable), the clock still moves.
- **Detach** (``detach``): from then on the organization is billed on real time again. What the
  clock already ran stays: closes are idempotent per (organization, environment, period), so when
  real time reaches a boundary the clock already passed, that close is found done and never runs
  twice; the first close real time runs is the first period the clock had not closed. A clock
  *behind* real time leaves closes due: the worker catches them up boundary by boundary, as after
  downtime. A clock with organizations attached cannot be deleted (``409 test_clock_in_use``).
- **The organization's "now"** (``now_for``, ``org_time``): for an attached organization, the API's
  operations (subscriptions, purchases, paying and voiding invoices, refunds, payment methods,
  grants and ledger reversals, the balance, usage) take the clock's time as now; others real time.
  ``clocked_ids`` is a per-process cache of the attached organizations for the hot paths
  (invalidated by attach and detach in this process, reloaded after ``CACHE_SECONDS`` otherwise).

Functions that take a ``Session`` never commit; ``advance`` runs the closes itself, one
transaction per step, like the worker.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.billing import cycle, domain, dunning, notices, org_time
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.domain import Catalog
from creditmeter.billing.models import Subscription, TestClock, TestClockAttachment
from creditmeter.billing.payments.provider import PaymentProvider
from creditmeter.errors import Conflict, InvalidRequest, NotFound
from creditmeter.kit import clock as real_clock
from creditmeter.kit.clock import ensure_utc
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import Lot
from creditmeter.orgs import service as orgs

__test__ = False  # not a pytest module


class TestClockNotFound(NotFound):
    __test__ = False
    code = "test_clock_not_found"


class NotAttached(NotFound):
    code = "test_clock_not_attached"


#: How long another process's attach or detach may go unseen by this process's hot paths.
CACHE_SECONDS = 2.0
_cache_lock = threading.Lock()
_cache: tuple[float, frozenset[str]] | None = None


@dataclass
class Advanced:
    """What an advance did: the boundaries it crossed and each close it ran."""

    clock: TestClock
    boundaries: list[datetime] = field(default_factory=list)
    closes: list[cycle.CloseResult] = field(default_factory=list)


def create(session: Session, frozen_time: datetime, name: str, now: datetime) -> TestClock:
    clock = TestClock(
        id=new_id("clock"),
        name=name,
        frozen_time=ensure_utc(frozen_time),
        created_at=now,
        updated_at=now,
    )
    session.add(clock)
    session.flush()
    return clock


def get(session: Session, clock_id: str) -> TestClock:
    clock = session.get(TestClock, clock_id) if 0 < len(clock_id) <= 40 else None
    if clock is None:
        raise TestClockNotFound(f"test clock {clock_id} not found")
    return clock


def organizations_of(session: Session, clock_id: str) -> list[str]:
    return list(
        session.scalars(
            select(TestClockAttachment.organization_id)
            .where(TestClockAttachment.test_clock_id == clock_id)
            .order_by(TestClockAttachment.organization_id)
        )
    )


def attach(session: Session, organization_id: str, clock_id: str, now: datetime) -> TestClock:
    """Bill ``organization_id`` on the clock from now on. Refused for an organization with an
    active live subscription."""
    orgs.get_organization(session, organization_id)
    clock = get(session, clock_id)
    live = session.scalars(
        select(Subscription.id).where(
            Subscription.organization_id == organization_id,
            Subscription.environment == "live",
            Subscription.status == subs.ACTIVE,
        )
    ).first()
    if live is not None:
        raise Conflict(
            f"organization {organization_id} has a live subscription; only test organizations "
            "can be billed on a test clock",
            code="live_subscription",
        )
    row = session.get(TestClockAttachment, organization_id)
    if row is None:
        session.add(
            TestClockAttachment(
                organization_id=organization_id, test_clock_id=clock.id, attached_at=now
            )
        )
    else:
        row.test_clock_id, row.attached_at = clock.id, now
    session.flush()
    invalidate()
    return clock


@dataclass(frozen=True)
class Detached:
    """The clock an organization was on when it was detached, and its time then."""

    organization_id: str
    clock: TestClock
    attached_at: datetime


def detach(session: Session, organization_id: str) -> Detached:
    """Bill ``organization_id`` on real time again. What the clock ran stays (see the module note);
    ``404 test_clock_not_attached`` when it is on no clock."""
    orgs.get_organization(session, organization_id)
    row = session.get(TestClockAttachment, organization_id)
    if row is None:
        raise NotAttached(f"organization {organization_id} is not attached to a test clock")
    done = Detached(organization_id, get(session, row.test_clock_id), row.attached_at)
    session.delete(row)
    session.flush()
    invalidate()
    return done


def delete(session: Session, clock_id: str) -> TestClock:
    """Delete a clock that has no organization attached (``409 test_clock_in_use`` otherwise: detach
    them first, so that deleting a clock never changes how anyone is billed)."""
    clock = get(session, clock_id)
    members = organizations_of(session, clock_id)
    if members:
        raise Conflict(
            f"test clock {clock_id} has {len(members)} organization(s) attached; detach them first "
            f"(DELETE /v1/organizations/{{org_id}}/test-clock): {', '.join(members[:10])}",
            code="test_clock_in_use",
        )
    session.delete(clock)
    session.flush()
    return clock


def refuse_live_on_clock(session: Session, organization_id: str, environment: str) -> None:
    """A live subscription for an organization on a test clock is refused (``409
    test_clock_attached``): the clock would close, invoice and charge live money early."""
    if environment == "live" and session.get(TestClockAttachment, organization_id) is not None:
        raise Conflict(
            f"organization {organization_id} is billed on a test clock; only test subscriptions "
            "can be rehearsed on a clock (detach it first for a live subscription)",
            code="test_clock_attached",
        )


def attachment_of(session: Session, organization_id: str) -> tuple[TestClock, datetime] | None:
    """The clock ``organization_id`` is attached to and when it was attached, or None."""
    row = session.get(TestClockAttachment, organization_id)
    if row is None:
        return None
    return get(session, row.test_clock_id), row.attached_at


def invalidate() -> None:
    """Forget the cached attached organizations (attach and detach call it)."""
    global _cache  # noqa: PLW0603
    with _cache_lock:
        _cache = None


def clocked_ids(db: Database) -> frozenset[str]:
    """The organizations attached to a clock, from the per-process cache: no query while it is
    fresh, one small read at most every ``CACHE_SECONDS`` (for the ingest and gate hot paths)."""
    global _cache  # noqa: PLW0603
    cached = _cache
    if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
        return cached[1]
    with db.read() as session:
        ids = frozenset(session.scalars(select(TestClockAttachment.organization_id)))
    with _cache_lock:
        _cache = (time.monotonic(), ids)
    return ids


def hot_now_for(db: Database, organization_id: str | None) -> datetime:
    """``org_time.now_for`` for the hot paths: real time without any query for an organization the cache
    knows is on no clock (or for None: an operator key, any organization)."""
    if organization_id is None or organization_id not in clocked_ids(db):
        return real_clock.now()
    with db.read() as session:
        return org_time.now_for(session, organization_id)


def advance(
    db: Database,
    catalog: Catalog,
    clock_id: str,
    to: datetime,
    *,
    now: datetime,
    charge: cycle.Charge | None = None,
    provider: PaymentProvider | None = None,
) -> Advanced:
    """Move the clock forward to ``to``, running for its organizations everything the worker would
    have run on the way, in time order: at each month boundary the closes due (charged through
    ``charge``, by default the provider's first attempt) and the expiries; between them each
    dunning retry at its own time (``provider``, by default the one the environment configures);
    and all of it once more at ``to``."""
    to = ensure_utc(to)
    with db.read() as session:
        clock = get(session, clock_id)
        start = clock.frozen_time
        members = organizations_of(session, clock_id)
    if to < start:
        raise InvalidRequest(
            f"a test clock only moves forward: it is at {start.isoformat()}, "
            f"{to.isoformat()} is earlier",
            code="clock_backwards",
        )
    result = Advanced(clock)
    period = domain.period_of(start, catalog.zone)
    moments = []
    while period.end <= to:
        if period.end > start:
            moments.append(period.end)
        period = domain.shift(period, 1, catalog.zone)
    result.boundaries = list(moments)
    if not moments or moments[-1] != to:
        moments.append(to)
    payments = _Payments(db, provider, charge)
    done = start
    for moment in moments:
        while (retry := _next_retry(db, members, done, moment)) is not None:
            _run_at(db, catalog, members, retry, payments, result, closes=False)
            done = retry
        _run_at(db, catalog, members, moment, payments, result, closes=True)
        done = moment
    with db.write() as session:
        clock = get(session, clock_id)
        if to > clock.frozen_time:
            clock.frozen_time = to
            clock.updated_at = now
        session.flush()
        result.clock = clock
    return result


class _Payments:
    """The provider and the close's charge hook of one advance, built once and only if needed."""

    def __init__(
        self, db: Database, provider: PaymentProvider | None, charge: cycle.Charge | None
    ) -> None:
        self._db, self._provider, self._charge = db, provider, charge

    @property
    def provider(self) -> PaymentProvider:
        if self._provider is None:
            from creditmeter.billing.payments import build_provider
            from creditmeter.config import Settings

            settings = Settings.from_env()
            self._provider = build_provider(
                settings.payment_provider, self._db, settings.stripe_secret_key
            )
        return self._provider

    @property
    def charge(self) -> cycle.Charge:
        if self._charge is None:
            self._charge = dunning.charger(self.provider)
        return self._charge


def _next_retry(
    db: Database, members: list[str], after: datetime, before: datetime
) -> datetime | None:
    """The earliest dunning attempt of the clock's organizations strictly inside (after, before)."""
    times = [dunning.next_due_at(db, org) for org in members]
    return min((t for t in times if t is not None and after < t < before), default=None)


def _run_at(
    db: Database,
    catalog: Catalog,
    members: list[str],
    moment: datetime,
    payments: _Payments,
    result: Advanced,
    *,
    closes: bool,
) -> None:
    """One worker tick at ``moment`` for the clock's organizations: the closes due (at a boundary
    and at the clock's new time), the dunning attempts due, the lots due to expire."""
    for org in members:
        if closes:
            result.closes += cycle.run_due(
                db, moment, org, catalog=catalog, charge=payments.charge, include_clocked=True
            )
        if dunning.next_due_at(db, org) is not None:
            dunning.run_due(db, payments.provider, moment, org, include_clocked=True)
        with db.write() as session:
            expire_due(session, moment, org)


def expire_due(
    session: Session, now: datetime, organization_id: str | None = None
) -> list[tuple[str, str, int]]:
    """``ledger.expire_due`` (of one organization, or all) with its ``credits.expired`` events: one
    per organization, environment and run, in the same transaction (``billing.notices``)."""
    mark = notices.journal_mark(session)
    results = ledger.expire_due(session, now, organization_id)
    notices.expired_since(session, mark, [org for org, _, _ in results], now)
    return results


def expire_due_on_real_time(session: Session, now: datetime) -> list[tuple[str, str, int]]:
    """``expire_due`` for the worker: every organization except those on a test clock (their lots
    expire when their clock passes them)."""
    clocked = set(session.scalars(select(TestClockAttachment.organization_id)))
    if not clocked:
        return expire_due(session, now)
    due = session.scalars(
        select(Lot.organization_id)
        .where(Lot.remaining_micros > 0, Lot.expires_at.is_not(None), Lot.expires_at <= now)
        .distinct()
        .order_by(Lot.organization_id)
    )
    results = []
    for org in list(due):
        if org not in clocked:
            results += expire_due(session, now, org)
    return results
