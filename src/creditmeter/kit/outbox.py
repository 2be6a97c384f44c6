"""The outbox: background work as rows of ``jobs``, written in the same transaction as the change that
caused it, so a job exists exactly when its cause was committed.

- :func:`enqueue` adds jobs in the caller's transaction (it never commits). A job may carry a
  ``dedupe_key``: at most one *pending* job has a given key (a partial unique index), so a burst of
  causes enqueues one job. A job already running does not count, so a cause that comes while its
  job runs enqueues one more, which runs after it and sees the new state.
- :func:`claim` takes due jobs for a worker in one statement: ``UPDATE … WHERE id IN (SELECT … FOR
  UPDATE SKIP LOCKED) RETURNING`` on PostgreSQL (concurrent workers skip each other's rows), the
  same single ``UPDATE … RETURNING`` on SQLite (whose writers are serialized). A claim is a lease:
  a job whose worker died is claimed again once ``claimed_until`` has passed.
- :func:`complete` and :func:`fail` end a claim (only the claim's own token can). A failure retries
  with exponential backoff; after ``max_attempts`` attempts the job is ``dead``: kept, with its last
  error, for an operator to see (:func:`counts`, :func:`jobs_in`) and retry (:func:`retry_dead`).
- :func:`run` is the worker's loop body: claim a few due jobs at a time, call each kind's handler
  outside any transaction, record the outcome; one failing handler never stops the others.

Handlers must be idempotent: a job can run more than once (a worker that dies after the handler's
work but before :func:`complete` leaves the job to be claimed again when its lease runs out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Index,
    Integer,
    String,
    and_,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from creditmeter.kit import clock
from creditmeter.kit.db import Base, BigIntPK, Database, UTCDateTime
from creditmeter.kit.ids import ulid

log = logging.getLogger("creditmeter.outbox")

PENDING, RUNNING, DONE, DEAD = "pending", "running", "done", "dead"
STATES = (PENDING, RUNNING, DONE, DEAD)
#: How long a claim lasts; a job still running after it is given to another worker.
DEFAULT_LEASE = timedelta(minutes=10)
DEFAULT_MAX_ATTEMPTS = 8
#: The wait after the first failure, doubled after each further one, at most ``BACKOFF_MAX``.
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
#: Jobs claimed per statement; a worker claims again once these are done, so a lease is never
#: spent waiting behind a long queue of its own.
CLAIM_CHUNK = 10

_PENDING_ONLY = text("state = 'pending'")


class Job(Base):
    """One unit of background work (see the module note)."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'running', 'done', 'dead')", name="state"),
        Index("ix_jobs_state_run_at", "state", "run_at"),
        Index(
            "uq_jobs_pending_dedupe_key",
            "dedupe_key",
            unique=True,
            sqlite_where=_PENDING_ONLY,
            postgresql_where=_PENDING_ONLY,
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(60))
    organization_id: Mapped[str | None] = mapped_column(String(40))
    environment: Mapped[str | None] = mapped_column(String(10))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(10))
    run_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class NewJob:
    kind: str
    run_at: datetime
    organization_id: str | None = None
    environment: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    dedupe_key: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


@dataclass(frozen=True)
class Claimed:
    """A job a worker holds until ``claimed_until``; ``token`` identifies this claim."""

    id: int
    kind: str
    organization_id: str | None
    environment: str | None
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    token: str


@dataclass(frozen=True)
class Outcome:
    job: Claimed
    result: object = None
    #: The handler's error (the job was retried later, or died); None when it succeeded.
    error: str | None = None
    state: str = DONE


def _insert(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(Job)


def enqueue(
    session: Session, jobs: Iterable[NewJob], *, now: datetime, pull_forward: bool = False
) -> None:
    """Add jobs in the caller's transaction, with one statement. A job whose ``dedupe_key`` is already
    pending is not added (a burst enqueues one job); with ``pull_forward`` the pending job is moved
    to the new job's ``run_at`` when that is earlier (run no later than asked)."""
    rows = [
        {
            "kind": j.kind,
            "organization_id": j.organization_id,
            "environment": j.environment,
            "payload": j.payload,
            "dedupe_key": j.dedupe_key,
            "state": PENDING,
            "run_at": j.run_at,
            "attempts": 0,
            "max_attempts": j.max_attempts,
            "created_at": now,
        }
        # In key order: two transactions enqueueing the same keys wait for each other in one
        # order, never in a cycle (PostgreSQL's unique check waits on an uncommitted twin).
        for j in sorted(jobs, key=lambda j: (j.dedupe_key is None, j.dedupe_key or ""))
    ]
    if not rows:
        return
    stmt = _insert(session)
    if pull_forward:
        stmt = stmt.on_conflict_do_update(
            index_elements=[Job.dedupe_key],
            index_where=_PENDING_ONLY,
            set_={"run_at": stmt.excluded.run_at},
            where=Job.run_at > stmt.excluded.run_at,
        )
    else:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=[Job.dedupe_key], index_where=_PENDING_ONLY
        )
    session.execute(stmt, rows)


def ensure(session: Session, job: NewJob, now: datetime) -> bool:
    """Enqueue ``job`` unless a job with its ``dedupe_key`` is pending or running (a recurring job
    keeps exactly one instance). Returns whether it was added."""
    assert job.dedupe_key is not None
    live = session.scalar(
        select(Job.id)
        .where(Job.dedupe_key == job.dedupe_key, Job.state.in_([PENDING, RUNNING]))
        .limit(1)
    )
    if live is not None:
        return False
    enqueue(session, [job], now=now)
    return True


def claim(
    session: Session,
    kinds: Sequence[str],
    *,
    now: datetime,
    limit: int = CLAIM_CHUNK,
    worker: str = "worker",
    lease: timedelta = DEFAULT_LEASE,
) -> list[Claimed]:
    """Claim up to ``limit`` due jobs of these kinds (pending and due, or running with a lapsed
    lease), oldest ``run_at`` first, for ``lease``. Two concurrent claims never return the same
    job. A job whose lease lapsed on its last attempt is marked dead instead."""
    if not kinds:
        return []
    session.execute(
        update(Job)
        .where(
            Job.kind.in_(kinds),
            Job.state == RUNNING,
            Job.claimed_until <= now,
            Job.attempts >= Job.max_attempts,
        )
        .values(
            state=DEAD,
            done_at=now,
            claimed_by=None,
            claimed_until=None,
            last_error="the lease ran out on the last attempt (the worker stopped mid-job)",
        )
    )
    token = f"{worker[:60]}:{ulid()}"
    due = (
        select(Job.id)
        .where(
            Job.kind.in_(kinds),
            or_(
                and_(Job.state == PENDING, Job.run_at <= now),
                and_(Job.state == RUNNING, Job.claimed_until <= now),
            ),
        )
        .order_by(Job.run_at, Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # SQLite renders no locking clause: one writer anyway
    )
    rows = list(
        session.execute(
            update(Job)
            .where(Job.id.in_(due))
            .values(
                state=RUNNING,
                attempts=Job.attempts + 1,
                claimed_by=token,
                claimed_until=now + lease,
            )
            .returning(
                Job.id,
                Job.kind,
                Job.organization_id,
                Job.environment,
                Job.payload,
                Job.attempts,
                Job.max_attempts,
                Job.run_at,
            )
        ).all()
    )
    rows.sort(key=lambda r: (r.run_at, r.id))
    return [
        Claimed(
            r.id,
            r.kind,
            r.organization_id,
            r.environment,
            r.payload,
            r.attempts,
            r.max_attempts,
            token,
        )
        for r in rows
    ]


def complete(session: Session, job: Claimed, now: datetime) -> bool:
    """Mark a claimed job done. False when the claim was lost (its lease ran out and another worker
    took the job): that worker records the outcome instead."""
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.claimed_by == job.token, Job.state == RUNNING)
        .values(state=DONE, done_at=now, claimed_until=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def backoff(attempts: int) -> timedelta:
    """The wait before attempt ``attempts + 1``: 30 s, 1 min, 2 min, … at most an hour."""
    wait: timedelta = BACKOFF_BASE * (2 ** max(attempts - 1, 0))
    return min(wait, BACKOFF_MAX)


def fail(session: Session, job: Claimed, error: str, now: datetime) -> str:
    """Record a failed attempt: the job is pending again after :func:`backoff`, or ``dead`` after its
    last attempt. A job whose key was enqueued again meanwhile is retired (``done``, with the error),
    the newer job doing its work. Returns the job's state (``running`` if the claim was lost)."""
    mine = and_(Job.id == job.id, Job.claimed_by == job.token, Job.state == RUNNING)
    error = error[:2000]
    values: dict[str, object]
    if job.attempts >= job.max_attempts:
        state, values = DEAD, {"done_at": now}
    else:
        state, values = PENDING, {"run_at": now + backoff(job.attempts), "claimed_by": None}
    try:
        with session.begin_nested():
            changed = session.execute(
                update(Job)
                .where(mine)
                .values(state=state, claimed_until=None, last_error=error, **values)
            ).rowcount  # type: ignore[attr-defined]
    except IntegrityError:  # a pending job with the same dedupe key exists: it does the work
        state = DONE
        changed = session.execute(
            update(Job)
            .where(mine)
            .values(
                state=DONE,
                done_at=now,
                claimed_until=None,
                last_error=f"{error[:1900]} (superseded by a newer job with the same key)",
            )
        ).rowcount  # type: ignore[attr-defined]
    return state if changed else RUNNING


def retry_dead(session: Session, job_id: int, now: datetime) -> bool:
    """Give a dead job a fresh set of attempts, due now. False when it is not dead (or its key is
    pending again: the pending job does its work)."""
    try:
        with session.begin_nested():
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == DEAD)
                .values(state=PENDING, run_at=now, attempts=0, done_at=None, claimed_by=None)
            )
    except IntegrityError:
        return False
    return bool(result.rowcount)  # type: ignore[attr-defined]


def purge_done(session: Session, before: datetime, limit: int = 1000) -> int:
    """Delete up to ``limit`` done jobs due before ``before`` (dead jobs are kept). Returns how many."""
    old = select(Job.id).where(Job.state == DONE, Job.run_at < before).limit(limit)
    result = session.execute(delete(Job).where(Job.id.in_(old)))
    return int(result.rowcount)  # type: ignore[attr-defined]


def counts(session: Session) -> dict[tuple[str, str], int]:
    """Jobs by (kind, state)."""
    rows = session.execute(select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state))
    return {(kind, state): int(n) for kind, state, n in rows}


def jobs_in(session: Session, state: str, limit: int = 100) -> list[Job]:
    """The most recent jobs in ``state`` (``dead`` ones are what an operator looks at)."""
    return list(
        session.scalars(select(Job).where(Job.state == state).order_by(Job.id.desc()).limit(limit))
    )


Handler = Callable[[Claimed], object]


def run(
    db: Database,
    handlers: dict[str, Handler],
    *,
    now: datetime,
    limit: int = 100,
    worker: str = "worker",
    lease: timedelta = DEFAULT_LEASE,
) -> list[Outcome]:
    """Run up to ``limit`` jobs due at ``now`` whose kind has a handler, each outside any
    transaction, claiming :data:`CLAIM_CHUNK` at a time. A handler's exception fails its job (retried
    with backoff, dead after its last attempt) and the next job runs."""
    outcomes: list[Outcome] = []
    while len(outcomes) < limit:
        with db.write() as session:
            chunk = claim(
                session,
                sorted(handlers),
                now=now,
                limit=min(CLAIM_CHUNK, limit - len(outcomes)),
                worker=worker,
                lease=lease,
            )
        if not chunk:
            break
        outcomes += [run_claimed(db, handlers[job.kind], job) for job in chunk]
    return outcomes


def run_claimed(db: Database, handler: Handler, job: Claimed) -> Outcome:
    """Run one claimed job's handler outside any transaction and record its outcome (done; failed
    and retried with backoff; dead after its last attempt)."""
    try:
        result = handler(job)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.exception("job %s (%s) failed on attempt %s", job.id, job.kind, job.attempts)
        try:
            with db.write() as session:
                state = fail(session, job, error, clock.now())
        except Exception:  # the lease runs out and the job is claimed again
            log.exception("could not record the failure of job %s", job.id)
            state = RUNNING
        if state == DEAD:
            log.error(
                "job %s (%s) is dead after %s attempts: %s", job.id, job.kind, job.attempts, error
            )
        return Outcome(job, None, error, state)
    try:
        with db.write() as session:
            complete(session, job, clock.now())
    except Exception:  # the lease runs out and the (idempotent) job runs again
        log.exception("could not record job %s as done", job.id)
        return Outcome(job, result, None, RUNNING)
    return Outcome(job, result)
