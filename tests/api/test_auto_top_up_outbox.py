"""Auto top-up through the outbox: the write that takes an organization below its threshold (usage —
batch, single, CloudEvents —, a hold, a debit) enqueues one ``low_balance`` job in its own
transaction, and the worker's job buys once: never two in flight, a cooldown, the monthly cap, a
decline that turns it off, and a crash anywhere that never charges twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select, text

from creditmeter.billing import auto_top_up, purchases
from creditmeter.billing.payments.models import Purchase
from creditmeter.billing.payments.provider import ChargeResult
from creditmeter.billing.payments.sandbox import SandboxProvider
from creditmeter.billing.payments.sandbox_models import SandboxCharge
from creditmeter.billing.plans import load_catalog
from creditmeter.kit import clock, outbox
from creditmeter.kit.credits import format_credits, parse_credits
from creditmeter.kit.db import Database
from creditmeter.kit.outbox import DONE, PENDING, RUNNING, Job
from creditmeter.ledger import marks, watch
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import Balance
from creditmeter.ledger.verify import verify
from creditmeter.worker import runner
from tests.api.test_payments import INSUFFICIENT, JAN_16, add_card, available, sandbox_charges, url
from tests.conftest import utc

Headers = dict[str, str]
SETTING = {"enabled": True, "threshold_credits": "100", "package": "standard",
           "monthly_limit_money": 12000}  # fmt: skip
#: One H100 hour at 10:15 UTC under rate card 2026-01: 1 + 3600 x 0.0016 credits; ten of them.
TEN_H100_HOURS = {"gpu_seconds": "36000", "accelerator": "h100"}


@pytest.fixture(autouse=True)
def january() -> Iterator[None]:
    with clock.frozen_at(JAN_16):
        yield


@pytest.fixture
def org(client: TestClient, make_org: Callable[..., str], make_key: Callable[..., Headers]) -> str:
    """A Standard organization (its plan credits for the rest of January) with a card."""
    org_id = make_org()
    admin = make_key(org_id, "org:admin")
    assert client.put(
        url(org_id, "subscription"), json={"plan": "standard"}, headers=admin
    ).is_success
    assert add_card(client, org_id, admin).is_success
    return org_id


@pytest.fixture
def admin(org: str, make_key: Callable[..., Headers]) -> Headers:
    return make_key(org, "org:admin")


@pytest.fixture
def ingest(org: str, make_key: Callable[..., Headers]) -> Headers:
    return make_key(org, "org:ingest")


def enable(client: TestClient, org: str, admin: Headers, **change: Any) -> None:
    response = client.put(url(org, "auto-top-up"), json={**SETTING, **change}, headers=admin)
    assert response.status_code == 200, response.text


def events(org: str, prefix: str, n: int, quantities: dict[str, str] = TEN_H100_HOURS) -> list[Any]:
    body = {"organization": org, "operation": "training", "quantities": quantities}
    return [{"id": f"{prefix}-{i}", **body} for i in range(n)]


def send_batch(client: TestClient, headers: Headers, body: list[Any]) -> None:
    response = client.post("/v1/usage/batch", json={"events": body}, headers=headers)
    assert response.status_code == 200, response.text
    assert {r["status"] for r in response.json()["results"]} == {"applied"}, response.text


def low_jobs(db: Database, org: str) -> list[tuple[str, Any]]:
    with db.read() as s:
        rows = s.execute(
            select(Job.state, Job.run_at)
            .where(Job.kind == watch.LOW_BALANCE, Job.organization_id == org)
            .order_by(Job.id)
        ).all()
    return [(state, run_at) for state, run_at in rows]


def top_ups(db: Database, org: str) -> list[Purchase]:
    with db.read() as s:
        return list(
            s.scalars(
                select(Purchase)
                .where(Purchase.organization_id == org, Purchase.purpose == "auto_top_up")
                .order_by(Purchase.created_at, Purchase.id)
            )
        )


def run(db: Database, provider: Any = None) -> list[Purchase]:
    """One pass of the worker's outbox step; the purchases the jobs made."""
    provider = provider or SandboxProvider(db)
    outcomes = runner.run_jobs(db, provider, load_catalog(), clock.now())
    return [o.result for o in outcomes if isinstance(o.result, Purchase)]


#: The price of one event of :func:`events` (ten H100 hours).
PRICE = parse_credits("58.6")


def crossing(client: TestClient, org: str, admin: Headers, threshold: str = "100") -> int:
    """How many events of :func:`events` take the organization from where it is to below the
    threshold (the last one crosses it)."""
    room = parse_credits(available(client, org, admin)) - parse_credits(threshold)
    return room // PRICE + 1


def spend_to_below_threshold(
    client: TestClient, org: str, admin: Headers, ingest: Headers, tag: str
) -> None:
    """Usage in one batch that leaves the organization just below the threshold."""
    send_batch(client, ingest, events(org, tag, crossing(client, org, admin)))


def test_a_batch_that_crosses_the_threshold_enqueues_one_job_and_the_worker_buys_once(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    enable(client, org, admin)
    assert low_jobs(db, org) == []  # 1,000 credits: above the threshold
    send_batch(client, ingest, events(org, "above", 1))
    assert low_jobs(db, org) == []  # 941.4 left: still above
    spend_to_below_threshold(client, org, admin, ingest, "burst")
    send_batch(client, ingest, events(org, "more", 3, {"gpu_seconds": "60", "accelerator": "h100"}))
    assert low_jobs(db, org) == [(PENDING, JAN_16)]  # the whole burst: one job
    left = parse_credits(available(client, org, admin))
    assert left < parse_credits("100")
    [bought] = run(db)
    assert (bought.status, bought.amount_minor, bought.idempotency_key) == (
        "succeeded",
        6000,
        f"auto-top-up:job:{bought_job_id(db, org)}",
    )
    assert parse_credits(available(client, org, admin)) == left + parse_credits("1000")
    assert [state for state, _ in low_jobs(db, org)] == [DONE]
    assert run(db) == []
    assert sandbox_charges(db) == 1
    with db.read() as s:
        assert verify(s) == []


def bought_job_id(db: Database, org: str) -> int:
    with db.read() as s:
        return int(
            s.scalars(
                select(Job.id).where(Job.kind == watch.LOW_BALANCE, Job.organization_id == org)
            ).one()
        )


def test_single_events_and_cloudevents_that_cross_the_threshold_enqueue_the_job(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    enable(client, org, admin)
    for body in events(org, "single", crossing(client, org, admin) - 1):
        response = client.post("/v1/usage", json=body, headers=ingest)
        assert response.status_code == 201, response.text
    assert low_jobs(db, org) == []  # just above the threshold
    cloud = {"specversion": "1.0", "id": "ce-1", "type": "training", "source": "/trainer",
             "subject": org, "data": {"quantities": TEN_H100_HOURS}}  # fmt: skip
    response = client.post(
        "/v1/events",
        content=json.dumps(cloud),
        headers={**ingest, "Content-Type": "application/cloudevents+json"},
    )
    assert response.status_code in (200, 201), response.text
    assert low_jobs(db, org) == [(PENDING, JAN_16)]
    [bought] = run(db)
    assert bought.status == "succeeded"
    response = client.post("/v1/usage", json=events(org, "after", 1)[0], headers=ingest)
    assert response.status_code == 201, response.text
    assert [state for state, _ in low_jobs(db, org)] == [DONE]  # above again: no job


def test_holds_and_ledger_debits_that_cross_the_threshold_enqueue_the_job(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    enable(client, org, admin)
    hold = format_credits(parse_credits(available(client, org, admin)) - parse_credits("50"))
    response = client.post(
        "/v1/holds",
        json={"organization": org, "operation": "training", "credits": hold},
        headers=ingest,
    )
    assert response.status_code == 201, response.text
    assert low_jobs(db, org) == [(PENDING, JAN_16)]
    with db.write() as s:
        s.execute(delete(Job))
        ledger.debit(s, org, "live", 1, "inference", "a debit", clock.now())
    assert low_jobs(db, org) == [(PENDING, JAN_16)]


def test_organizations_without_auto_top_up_or_with_it_off_enqueue_nothing(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    spend_to_below_threshold(client, org, admin, ingest, "never")
    enable(client, org, admin, enabled=False)
    send_batch(client, ingest, events(org, "off", 2, {"gpu_seconds": "60", "accelerator": "h100"}))
    assert low_jobs(db, org) == []
    with db.read() as s:
        others = Job.kind.not_in([runner.SWEEP, marks.BALANCE_CROSSING])  # crossings: notify's
        assert s.scalar(select(func.count()).select_from(Job).where(others)) == 0


def test_enabling_while_already_below_the_threshold_enqueues_at_once(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    spend_to_below_threshold(client, org, admin, ingest, "before")
    assert low_jobs(db, org) == []
    enable(client, org, admin)
    assert low_jobs(db, org) == [(PENDING, JAN_16)]
    [bought] = run(db)
    assert bought.status == "succeeded"


def test_the_cooldown_delays_the_next_top_up_to_its_end_without_more_usage(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    enable(client, org, admin)
    spend_to_below_threshold(client, org, admin, ingest, "one")
    [first] = run(db)
    later = JAN_16 + timedelta(minutes=3)
    with clock.frozen_at(later):
        spend_to_below_threshold(client, org, admin, ingest, "two")
        assert run(db) == []  # the cooldown: a follow-up for when it ends
        assert low_jobs(db, org)[-1] == (PENDING, JAN_16 + auto_top_up.COOLDOWN)
        send_batch(client, ingest, events(org, "three", 1))
        assert low_jobs(db, org)[-1] == (PENDING, JAN_16 + auto_top_up.COOLDOWN)  # kept
    with clock.frozen_at(JAN_16 + auto_top_up.COOLDOWN):
        [second] = run(db)
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert sandbox_charges(db) == 2


def test_the_monthly_cap_defers_the_top_up_to_the_next_cycle(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    enable(client, org, admin, monthly_limit_money=6000)
    spend_to_below_threshold(client, org, admin, ingest, "one")
    [bought] = run(db)
    with clock.frozen_at(JAN_16 + timedelta(minutes=20)):
        spend_to_below_threshold(client, org, admin, ingest, "two")
        assert run(db) == []
        assert low_jobs(db, org)[-1] == (PENDING, utc(2026, 2, 1))
    assert [p.id for p in top_ups(db, org)] == [bought.id]


def test_a_decline_turns_it_off_removes_the_mark_and_no_more_jobs_come(
    client: TestClient,
    db: Database,
    org: str,
    admin: Headers,
    ingest: Headers,
) -> None:
    assert add_card(client, org, admin, INSUFFICIENT, default=True).is_success
    enable(client, org, admin)
    spend_to_below_threshold(client, org, admin, ingest, "one")
    [failed] = run(db)
    assert (failed.status, failed.failure_code) == ("failed", "insufficient_funds")
    shown = client.get(url(org, "auto-top-up"), headers=admin).json()
    assert not shown["enabled"]
    assert "insufficient_funds" in shown["disabled_reason"]
    with db.read() as s:
        assert s.get(Balance, (org, "live")).watch_below_micros is None  # type: ignore[union-attr]
    send_batch(client, ingest, events(org, "two", 1))
    assert [state for state, _ in low_jobs(db, org)] == [DONE]
    with clock.frozen_at(JAN_16 + timedelta(hours=1)):
        assert run(db) == []  # no retry loop, the sweep included


def test_never_two_in_flight_while_a_top_up_purchase_is_pending(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    enable(client, org, admin)
    with db.write() as s:  # a purchase another job began and has not finished
        begun = purchases.begin(
            s,
            load_catalog(),
            org,
            "live",
            purchases.PurchaseRequest("standard"),
            "elsewhere",
            clock.now(),
            purpose=auto_top_up.PURPOSE,
        )
    spend_to_below_threshold(client, org, admin, ingest, "one")
    assert run(db) == []
    assert low_jobs(db, org)[-1] == (PENDING, JAN_16 + auto_top_up.IN_FLIGHT_RECHECK)
    assert [p.id for p in top_ups(db, org)] == [begun.id]


def test_concurrent_ingest_and_two_workers_buy_exactly_once(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    enable(client, org, admin)
    spend_to_below_threshold(client, org, admin, ingest, "first")
    with db.write() as s:  # worker A holds the first job (its handler has not run yet)
        [held] = outbox.claim(s, [watch.LOW_BALANCE], now=clock.now(), worker="a")
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def guarded(work: Callable[[], object]) -> Callable[[], None]:
        def go() -> None:
            try:
                start.wait()
                work()
            except BaseException as exc:  # reported by the assert below
                errors.append(exc)

        return go

    provider = SandboxProvider(db)
    catalog = load_catalog()
    threads = [
        threading.Thread(target=guarded(lambda: send_batch(client, ingest, events(org, "x", 2)))),
        threading.Thread(target=guarded(lambda: send_batch(client, ingest, events(org, "y", 2)))),
        threading.Thread(
            target=guarded(
                lambda: auto_top_up.on_low_balance(db, provider, catalog, held, clock.now())
            )
        ),
        threading.Thread(target=guarded(lambda: run(db, provider))),  # worker B
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    run(db, provider)
    made = top_ups(db, org)
    assert len(made) == 1
    assert made[0].status == "succeeded"
    assert sandbox_charges(db) == 1
    with db.read() as s:
        assert verify(s) == []


def test_a_worker_that_dies_after_buying_leaves_a_job_that_runs_again_without_charging_twice(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    enable(client, org, admin)
    spend_to_below_threshold(client, org, admin, ingest, "one")
    provider, catalog = SandboxProvider(db), load_catalog()
    with db.write() as s:
        [job] = outbox.claim(s, [watch.LOW_BALANCE], now=clock.now(), lease=timedelta(minutes=2))
    bought = auto_top_up.on_low_balance(db, provider, catalog, job, clock.now())
    assert bought is not None
    assert bought.status == "succeeded"
    # ... and the worker dies before recording the job as done
    with clock.frozen_at(JAN_16 + timedelta(minutes=1)):
        assert run(db) == []  # still leased
    with clock.frozen_at(JAN_16 + timedelta(minutes=2)):
        [again] = run(db)
    assert again.id == bought.id
    assert [p.id for p in top_ups(db, org)] == [bought.id]
    assert sandbox_charges(db) == 1
    assert [state for state, _ in low_jobs(db, org)] == [DONE]


class CrashOnce(SandboxProvider):
    """A provider whose first charge dies before it reaches the processor."""

    crashed = False

    def charge(self, *args: Any, **kwargs: Any) -> ChargeResult:
        if not self.crashed:
            CrashOnce.crashed = True
            raise ConnectionError("the network went away")
        return super().charge(*args, **kwargs)


def test_a_crash_between_beginning_and_charging_is_retried_with_the_same_key(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    enable(client, org, admin)
    spend_to_below_threshold(client, org, admin, ingest, "one")
    CrashOnce.crashed = False
    provider = CrashOnce(db)
    assert run(db, provider) == []  # the job failed and backs off; the purchase is pending
    [pending] = top_ups(db, org)
    assert pending.status == "pending"
    assert low_jobs(db, org)[-1] == (PENDING, JAN_16 + outbox.backoff(1))
    with clock.frozen_at(JAN_16 + outbox.backoff(1)):
        [done] = run(db, provider)
    assert (done.id, done.status) == (pending.id, "succeeded")
    assert sandbox_charges(db) == 1


def test_the_sweep_tops_up_an_organization_whose_job_was_lost(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers
) -> None:
    enable(client, org, admin)
    spend_to_below_threshold(client, org, admin, ingest, "one")
    with db.write() as s:
        s.execute(delete(Job))  # lost (an operator's hand, a restore)
    [bought] = run(db)  # the first tick schedules and runs the sweep, which enqueues the job
    assert bought.status == "succeeded"
    with db.read() as s:
        sweep_at = s.scalar(
            select(Job.run_at).where(Job.kind == runner.SWEEP, Job.state == PENDING)
        )
        running = s.scalar(select(func.count()).where(Job.state == RUNNING))
    assert (sweep_at, running) == (JAN_16 + runner.SWEEP_EVERY, 0)


def test_the_migration_matches_the_outbox_and_watch_models(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from creditmeter.models import metadata

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if "jobs" in repr(d) or "watch_below" in repr(d)] == []


def test_upgrading_to_0008_watches_the_auto_top_ups_enabled_before(tmp_path: Any) -> None:
    """The backfill statement of migration 0008 (the same SQL on PostgreSQL; run here on a fresh
    SQLite file, as the shared PostgreSQL database of a test run cannot be downgraded)."""
    from creditmeter.kit.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0007_refunds")
    at = "2026-01-01 00:00:00.000000"
    old = Database(url)
    try:
        with old.write() as s:
            for org, enabled in (("org_on", True), ("org_off", False), ("org_none", None)):
                s.execute(
                    text("INSERT INTO organizations VALUES (:org, :org, NULL, 'active', :at)"),
                    {"org": org, "at": at},
                )
                for env in ("live", "test"):
                    s.execute(
                        text(
                            "INSERT INTO balances (organization_id, environment, lots_micros, "
                            "arrears_micros, held_micros, updated_at) VALUES (:org, :env, 0, 0, 0, :at)"
                        ),
                        {"org": org, "env": env, "at": at},
                    )
                if enabled is not None:
                    s.execute(
                        text(
                            "INSERT INTO auto_top_ups VALUES (:id, :org, 'live', :on, 7, NULL, 9, 1, "
                            "'USD', NULL, NULL, :at, :at)"
                        ),
                        {"id": f"atu_{org}", "org": org, "on": enabled, "at": at},
                    )
    finally:
        old.dispose()
    upgrade(url)
    new = Database(url)
    try:
        with new.read() as s:
            marks = s.execute(
                select(
                    Balance.organization_id, Balance.environment, Balance.watch_below_micros
                ).where(Balance.watch_below_micros.is_not(None))
            ).all()
    finally:
        new.dispose()
    assert [tuple(m) for m in marks] == [("org_on", "live", 7)]


# --- a property: any run of usage, waiting and worker passes keeps every guard ----------------

_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("spend"), st.sampled_from(["50", "300", "700", "1500"])),
        st.tuples(st.just("wait"), st.sampled_from([1, 4, 9, 30])),
        st.tuples(st.just("run"), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=_STEPS)
def test_any_run_of_usage_and_worker_passes_keeps_the_guards_and_forgets_no_low_balance(
    client: TestClient,
    db: Database,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
    steps: list[tuple[str, Any]],
) -> None:
    org_id = make_org()
    admin = make_key(org_id, "org:admin")
    assert client.put(url(org_id, "subscription"), json={"plan": "standard"}, headers=admin)
    assert add_card(client, org_id, admin).is_success
    enable(client, org_id, admin)
    at = JAN_16
    for step, arg in steps:
        with clock.frozen_at(at):
            if step == "spend":
                with db.write() as s:
                    ledger.debit(s, org_id, "live", parse_credits(arg), "inference", "use", at)
            elif step == "wait":
                at += timedelta(minutes=arg)
            else:
                run(db)
                _assert_nothing_forgotten(client, db, org_id, admin)
        made = top_ups(db, org_id)
        gaps = [b.created_at - a.created_at for a, b in pairwise(made)]
        assert all(gap >= auto_top_up.COOLDOWN for gap in gaps)  # the cooldown
        assert sum(p.amount_minor for p in made) <= SETTING["monthly_limit_money"]  # the cap
        assert all(p.status == "succeeded" for p in made)  # none left in flight
        assert all(charges_of(db, p) == 1 for p in made)  # each charged once
    with db.read() as s:
        assert verify(s) == []


def charges_of(db: Database, bought: Purchase) -> int:
    with db.read() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(SandboxCharge)
                .where(SandboxCharge.description.contains(f"purchase {bought.id}:"))
            )
            or 0
        )


def _assert_nothing_forgotten(client: TestClient, db: Database, org: str, admin: Headers) -> None:
    """After a worker pass, an organization still below its threshold has a job that will look again
    (at the cooldown's end, or the next cycle when the cap is reached)."""
    if parse_credits(available(client, org, admin)) >= parse_credits("100"):
        return
    assert PENDING in [state for state, _ in low_jobs(db, org)]


def test_refunding_an_auto_top_up_turns_it_off_instead_of_buying_again(
    client: TestClient, db: Database, org: str, admin: Headers, ingest: Headers, operator: Headers
) -> None:
    enable(client, org, admin)
    spend_to_below_threshold(client, org, admin, ingest, "burst")
    [bought] = run(db)
    refunded = client.post(
        f"/v1/payments/{bought.payment_id}/refunds",
        json={"reason": "the customer did not want it"},
        headers={**operator, "Idempotency-Key": "refund-top-up"},
    )
    assert refunded.status_code == 201, refunded.text
    setting = client.get(url(org, "auto-top-up"), headers=admin).json()
    assert setting["enabled"] is False
    assert f"auto top-up purchase {bought.id} was refunded" in setting["disabled_reason"]
    assert parse_credits(available(client, org, admin)) < parse_credits("100")
    assert run(db) == []  # below the threshold again, but off: nothing bought
    assert sandbox_charges(db) == 1
    with db.read() as s:
        assert verify(s) == []
