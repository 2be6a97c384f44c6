"""The outbox (``kit.outbox``) on SQLite and PostgreSQL: a job is enqueued in its cause's transaction
and only then; a burst with one dedupe key is one pending job; two workers never hold the same job;
a worker that dies leaves its job to the next one when the lease runs out; failures back off and
end in a visible dead state."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.kit.outbox import DEAD, DONE, PENDING, RUNNING, Job, NewJob
from tests.conftest import utc

NOW = utc(2026, 2, 3, 9)
MINUTE = timedelta(minutes=1)


@pytest.fixture(autouse=True)
def _frozen() -> Iterator[None]:
    with clock.frozen_at(NOW):
        yield


def add(db: Database, *jobs: NewJob, pull_forward: bool = False) -> None:
    with db.write() as s:
        outbox.enqueue(s, jobs, now=NOW, pull_forward=pull_forward)


def claim(db: Database, at: object = NOW, limit: int = 10, **kw: object) -> list[outbox.Claimed]:
    with db.write() as s:
        return outbox.claim(s, ["ping"], now=at, limit=limit, **kw)  # type: ignore[arg-type]


def states(db: Database) -> list[tuple[str | None, str]]:
    with db.read() as s:
        return [(r.dedupe_key, r.state) for r in s.execute(select(Job).order_by(Job.id)).scalars()]


def ping(key: str | None = None, at: object = NOW, **kw: object) -> NewJob:
    return NewJob("ping", run_at=at, dedupe_key=key, **kw)  # type: ignore[arg-type]


def test_a_job_exists_only_if_its_transaction_commits(db: Database) -> None:
    def cause_that_fails() -> None:
        with db.write() as s:
            outbox.enqueue(s, [ping("k")], now=NOW)
            raise RuntimeError("the cause failed")

    with pytest.raises(RuntimeError):
        cause_that_fails()
    assert states(db) == []
    add(db, ping("k"))
    assert states(db) == [("k", PENDING)]


def test_a_burst_with_one_dedupe_key_is_one_pending_job_and_one_more_while_it_runs(
    db: Database,
) -> None:
    for _ in range(5):
        add(db, ping("org_1"), ping("org_2"), ping(None))
    assert (
        states(db)
        == [("org_1", PENDING), ("org_2", PENDING), (None, PENDING)] + [(None, PENDING)] * 4
    )
    [first] = claim(db, limit=1)
    assert first.attempts == 1
    add(db, ping("org_1"), ping("org_1"))  # a cause while org_1's job runs: one more job
    with db.read() as s:
        pending = s.scalar(
            select(func.count()).where(Job.dedupe_key == "org_1", Job.state == PENDING)
        )
    assert pending == 1


def test_a_later_job_is_not_due_and_pull_forward_brings_it_to_the_earlier_time(
    db: Database,
) -> None:
    add(db, ping("k", at=NOW + 10 * MINUTE))
    assert claim(db) == []
    add(db, ping("k", at=NOW + 20 * MINUTE), pull_forward=True)  # later: left where it is
    assert claim(db, at=NOW + 15 * MINUTE) != []


def test_pull_forward_moves_a_pending_job_to_now(db: Database) -> None:
    add(db, ping("k", at=NOW + 10 * MINUTE))
    add(db, ping("k"))  # plain enqueue: the pending job keeps its time
    assert claim(db) == []
    add(db, ping("k"), pull_forward=True)
    [job] = claim(db)
    assert job.attempts == 1
    assert states(db) == [("k", RUNNING)]


def test_two_workers_claiming_at_once_never_get_the_same_job(db: Database) -> None:
    add(db, *[ping(f"k{i}" if i % 2 else None) for i in range(120)])
    start = threading.Barrier(4)

    def worker(n: int) -> list[int]:
        start.wait()
        got: list[int] = []
        while batch := claim(db, limit=3, worker=f"w{n}"):
            got += [j.id for j in batch]
        return got

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(worker, range(4)))
    claimed = [job_id for r in results for job_id in r]
    assert len(claimed) == len(set(claimed)) == 120
    assert claim(db) == []


def test_a_lapsed_lease_gives_the_job_to_another_worker_and_the_first_claim_is_void(
    db: Database,
) -> None:
    add(db, ping("k"))
    [first] = claim(db, lease=5 * MINUTE, worker="a")
    assert claim(db, at=NOW + 4 * MINUTE, worker="b") == []  # still held
    [again] = claim(db, at=NOW + 5 * MINUTE, worker="b")  # worker a died
    assert (again.id, again.attempts) == (first.id, 2)
    assert again.token != first.token
    with db.write() as s:
        assert not outbox.complete(s, first, NOW)  # a's late answer changes nothing
        assert outbox.fail(s, first, "late", NOW) == RUNNING
        assert outbox.complete(s, again, NOW)
    assert states(db) == [("k", DONE)]
    assert claim(db, at=NOW + 60 * MINUTE) == []


def test_failures_back_off_exponentially_then_the_job_is_dead_and_visible(db: Database) -> None:
    add(db, ping("k", max_attempts=3))
    at = NOW
    waits = []
    for attempt in (1, 2):
        [job] = claim(db, at=at)
        assert job.attempts == attempt
        with db.write() as s:
            assert outbox.fail(s, job, f"boom {attempt}", at) == PENDING
        with db.read() as s:
            row = s.scalars(select(Job)).one()
        waits.append(row.run_at - at)
        assert claim(db, at=row.run_at - timedelta(seconds=1)) == []
        at = row.run_at
    assert waits == [timedelta(seconds=30), timedelta(seconds=60)]
    [job] = claim(db, at=at)
    with db.write() as s:
        assert outbox.fail(s, job, "boom 3", at) == DEAD
    assert claim(db, at=at + timedelta(days=1)) == []
    with db.read() as s:
        assert outbox.counts(s) == {("ping", DEAD): 1}
        [dead] = outbox.jobs_in(s, DEAD)
        assert (dead.attempts, dead.last_error) == (3, "boom 3")
    with db.write() as s:
        assert outbox.retry_dead(s, dead.id, at)
    [job] = claim(db, at=at)
    assert job.attempts == 1


def test_a_job_whose_worker_dies_on_its_last_attempt_is_dead_not_lost(db: Database) -> None:
    add(db, ping("k", max_attempts=1))
    claim(db, lease=MINUTE)
    assert claim(db, at=NOW + MINUTE) == []
    assert states(db) == [("k", DEAD)]


def test_a_failed_job_whose_key_was_enqueued_again_gives_way_to_the_newer_one(
    db: Database,
) -> None:
    add(db, ping("k"))
    [job] = claim(db)
    add(db, ping("k"))
    with db.write() as s:
        assert outbox.fail(s, job, "boom", NOW) == DONE
    assert states(db) == [("k", DONE), ("k", PENDING)]


def test_run_calls_each_handler_and_one_failing_never_stops_the_others(db: Database) -> None:
    add(db, *[ping() for _ in range(25)])
    seen: list[int] = []

    def handler(job: outbox.Claimed) -> int:
        seen.append(job.id)
        if job.id % 5 == 0:
            raise ValueError(f"job {job.id} is bad")
        return job.id * 2

    outcomes = outbox.run(db, {"ping": handler}, now=NOW, limit=20)
    assert len(outcomes) == len(seen) == 20  # bounded: the rest wait for the next run
    assert {o.state for o in outcomes if o.error} == {PENDING}
    assert all(o.result == o.job.id * 2 for o in outcomes if o.error is None)
    rest = outbox.run(db, {"ping": handler}, now=NOW, limit=20)
    assert len(rest) == 5
    assert outbox.run(db, {"other": handler}, now=NOW + timedelta(hours=1)) == []
    with db.read() as s:
        counts = outbox.counts(s)
    assert counts == {("ping", DONE): 20, ("ping", PENDING): 5}
    with db.write() as s:
        assert outbox.purge_done(s, NOW + MINUTE) == 20


# --- a property: any interleaving of enqueues, claims, completions, failures and time ----------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.sampled_from(["a", "b", None])),
        st.tuples(st.just("claim"), st.integers(1, 3)),
        st.tuples(st.just("complete"), st.integers(0, 20)),
        st.tuples(st.just("fail"), st.integers(0, 20)),
        st.tuples(st.just("stale"), st.integers(0, 20)),
        st.tuples(st.just("wait"), st.sampled_from([0, 20, 45, 200, 700])),
    ),
    max_size=40,
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_OPS)
def test_any_interleaving_keeps_one_pending_job_per_key_and_one_holder_per_job(
    db: Database, ops: list[tuple[str, object]]
) -> None:
    with db.write() as s:
        s.execute(delete(Job))
    lease = timedelta(seconds=300)
    at = NOW
    held: dict[int, tuple[outbox.Claimed, object]] = {}  # job id -> (claim, until)
    stale: list[outbox.Claimed] = []
    finished: set[int] = set()
    for op, arg in ops:
        if op == "enqueue":
            add(db, ping(arg, at=at, max_attempts=3))  # type: ignore[arg-type]
        elif op == "claim":
            for job_id, (old, until) in list(held.items()):
                if until <= at and old.attempts >= old.max_attempts:  # type: ignore[operator]
                    del held[job_id]  # its worker is presumed dead, on its last attempt: dead
                    stale.append(old)
                    finished.add(job_id)
            for job in claim(db, at=at, limit=arg, lease=lease):  # type: ignore[arg-type]
                assert job.id not in finished
                previous = held.get(job.id)
                assert previous is None or previous[1] <= at  # type: ignore[operator]
                if previous is not None:
                    stale.append(previous[0])
                held[job.id] = (job, at + lease)
        elif op in ("complete", "fail") and held:
            job, _ = held.pop(sorted(held)[arg % len(held)])  # type: ignore[operator]
            with db.write() as s:
                if op == "complete":
                    assert outbox.complete(s, job, at)
                    finished.add(job.id)
                elif outbox.fail(s, job, "boom", at) in (DONE, DEAD):
                    finished.add(job.id)
        elif op == "stale" and stale:
            with db.write() as s:
                assert not outbox.complete(s, stale[arg % len(stale)], at)  # type: ignore[operator]
        elif op == "wait":
            at += timedelta(seconds=arg)  # type: ignore[arg-type]
        with db.read() as s:
            pending = s.execute(
                select(Job.dedupe_key, func.count())
                .where(Job.state == PENDING, Job.dedupe_key.is_not(None))
                .group_by(Job.dedupe_key)
            ).all()
            assert all(n == 1 for _, n in pending)
            assert s.scalar(select(func.count()).where(Job.attempts > Job.max_attempts)) == 0
