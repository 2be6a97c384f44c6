"""Sending deliveries to a real receiver process: the retry schedule (time driven by the clock),
success after failures, Retry-After, 410 Gone, five days of failures, timeouts, redirects, secret
rotation, re-runs after a crash and the destination checked again at sending time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from creditmeter.config import Settings
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.notify import delivery, webhooks
from creditmeter.notify.models import Email, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Role
from tests.notify_webhooks.conftest import (
    Receiver,
    make_endpoint,
    publish,
    real_now,
    run_jobs,
    with_timeout,
)


def the_delivery(db: Database) -> WebhookDelivery:
    with db.read() as s:
        [row] = s.scalars(select(WebhookDelivery))
        return row


def attempts_of(db: Database, delivery_id: str) -> list[WebhookAttempt]:
    with db.read() as s:
        return list(
            s.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.number)
            )
        )


def pending_jobs(db: Database) -> list[outbox.Job]:
    with db.read() as s:
        return list(
            s.scalars(
                select(outbox.Job).where(
                    outbox.Job.kind == delivery.WEBHOOK_DELIVERY, outbox.Job.state == "pending"
                )
            )
        )


def endpoint_row(db: Database, endpoint_id: str) -> WebhookEndpoint:
    with db.read() as s:
        row = s.get(WebhookEndpoint, endpoint_id)
        assert row is not None
        return row


def next_job(db: Database) -> outbox.Job:
    [job] = pending_jobs(db)
    return job


def test_a_failing_delivery_follows_the_schedule_for_about_three_days_then_fails(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    endpoint = make_endpoint(db, receiver, org, receiver.url("fail"))
    event = publish(db, "balance.depleted", org, t0)
    at = t0
    for number in range(1, len(delivery.SCHEDULE) + 1):
        [outcome] = run_jobs(db, settings, at)
        assert outcome.error is None  # an HTTP failure is recorded, not raised
        if number == len(delivery.SCHEDULE):
            assert outcome.result == "failed: HTTP 500; no attempt left"
            assert pending_jobs(db) == []
            break
        job = next_job(db)
        wait, planned = job.run_at - at, delivery.SCHEDULE[number]
        assert planned * 0.9 <= wait <= planned * 1.1, (number, wait)
        assert job.payload["attempt"] == number + 1
        assert the_delivery(db).next_attempt_at == job.run_at
        assert run_jobs(db, settings, job.run_at - timedelta(seconds=1)) == []  # not before
        at = job.run_at
    last = at

    row = the_delivery(db)
    assert (row.status, row.attempts, row.next_attempt_at, row.last_status_code) == (
        "failed",
        12,
        None,
        500,
    )
    tried = attempts_of(db, row.id)
    assert [a.number for a in tried] == list(range(1, 13))
    assert {(a.status_code, a.succeeded, a.error) for a in tried} == {(500, False, "HTTP 500")}
    assert tried[0].started_at == t0
    assert "receiver error" in tried[0].response_excerpt
    assert "\x00" not in tried[0].response_excerpt  # PostgreSQL refuses NUL in text
    assert timedelta(hours=60) < last - t0 < timedelta(hours=76)  # about three days
    assert endpoint_row(db, endpoint).failing_since == t0
    assert endpoint_row(db, endpoint).status == "enabled"

    got = receiver.requests(wait_for=12)
    assert len(got) == 12
    assert {r["webhook_id"] for r in got} == {event}  # the same id on every attempt
    assert all(r["signed_with"] == [endpoint] for r in got)
    assert got[0]["verified_with"] == [endpoint]  # the first one, sent at the real time


def test_a_delivery_that_fails_once_succeeds_at_the_next_attempt(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    endpoint = make_endpoint(db, receiver, org, receiver.url("flaky", fail=1))
    publish(db, "balance.depleted", org, t0)
    run_jobs(db, settings, t0)
    assert endpoint_row(db, endpoint).failing_since == t0
    [outcome] = run_jobs(db, settings, next_job(db).run_at)
    assert outcome.result == "succeeded: HTTP 200"
    row = the_delivery(db)
    assert (row.status, row.attempts, row.next_attempt_at) == ("succeeded", 2, None)
    assert [(a.status_code, a.succeeded) for a in attempts_of(db, row.id)] == [
        (500, False),
        (200, True),
    ]
    assert attempts_of(db, row.id)[1].response_excerpt == "ok at last"
    assert endpoint_row(db, endpoint).failing_since is None
    assert pending_jobs(db) == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": 429, "seconds": 3600}, timedelta(hours=1)),
        ({"status": 503, "seconds": 7200, "date": 1}, timedelta(hours=2)),
        ({"status": 429, "seconds": 400000}, timedelta(hours=24)),  # capped
    ],
    ids=["seconds", "http-date", "capped"],
)
def test_retry_after_is_honoured_when_it_asks_for_later(
    db: Database,
    settings: Settings,
    receiver: Receiver,
    make_org: Callable[..., str],
    query: dict[str, int],
    expected: timedelta,
) -> None:
    t0 = real_now()
    org = make_org()
    make_endpoint(db, receiver, org, receiver.url("retry-after", **query))
    publish(db, "balance.depleted", org, t0)
    [outcome] = run_jobs(db, settings, t0)
    wait = next_job(db).run_at - t0
    assert abs(wait - expected) <= timedelta(seconds=3), outcome.result
    assert attempts_of(db, the_delivery(db).id)[0].status_code == query["status"]


def test_a_retry_after_shorter_than_the_schedule_changes_nothing(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    make_endpoint(db, receiver, org, receiver.url("retry-after", seconds=1))
    publish(db, "balance.depleted", org, t0)
    run_jobs(db, settings, t0)
    assert timedelta(seconds=4.5) <= next_job(db).run_at - t0 <= timedelta(seconds=5.5)


def test_410_gone_disables_the_endpoint_and_fails_its_pending_deliveries(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    endpoint = make_endpoint(db, receiver, org, receiver.url("gone"))
    publish(db, "balance.depleted", org, t0)
    publish(db, "credits.expired", org, t0)
    outcomes = run_jobs(db, settings, t0)
    assert sorted(str(o.result) for o in outcomes) == [
        "failed: 410 Gone, the endpoint is disabled",
        "skipped: the delivery is failed",
    ]
    row = endpoint_row(db, endpoint)
    assert (row.status, row.disabled_reason) == ("disabled", "the endpoint answered 410 Gone")
    assert row.disabled_at == t0
    with db.read() as s:
        assert sorted(s.scalars(select(WebhookDelivery.status))) == ["failed", "failed"]
    assert len(receiver.requests(wait_for=1)) == 1
    assert pending_jobs(db) == []
    publish(db, "balance.depleted", org, t0)  # a disabled endpoint is sent nothing more
    with db.read() as s:
        assert len(list(s.scalars(select(WebhookDelivery)))) == 2


def test_an_endpoint_failing_for_five_days_is_disabled_and_its_admins_are_emailed(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    with db.write() as s:
        orgs.add_member(s, org, "owner@acme.example", Role.OWNER, t0)
        orgs.add_member(s, org, "admin@acme.example", Role.ADMIN, t0)
        orgs.add_member(s, org, "dev@acme.example", Role.MEMBER, t0)
    endpoint = make_endpoint(db, receiver, org, receiver.url("fail"))
    publish(db, "balance.depleted", org, t0)
    run_jobs(db, settings, t0)  # failing since t0
    # four days on, a new event fails too: still enabled
    day4 = t0 + timedelta(days=4)
    publish(db, "credits.expired", org, day4)
    assert len(run_jobs(db, settings, day4)) == 2  # the first event's retry fails too
    assert endpoint_row(db, endpoint).status == "enabled"
    # five days after the first failure, the next failure disables it
    day5 = t0 + timedelta(days=5, minutes=1)
    publish(db, "organization.resumed", org, day5)
    outcomes = run_jobs(db, settings, day5)
    assert any("is disabled" in str(o.result) for o in outcomes), outcomes
    row = endpoint_row(db, endpoint)
    assert row.status == "disabled"
    assert row.disabled_reason is not None
    assert row.disabled_reason.startswith("every attempt failed for 5 days")
    assert pending_jobs(db) == []
    with db.read() as s:
        assert "pending" not in set(s.scalars(select(WebhookDelivery.status)))
    with db.read() as s:
        sent = {(m.to_address, m.organization_id) for m in s.scalars(select(Email))}
        subjects = set(s.scalars(select(Email.subject)))
    assert sent == {("owner@acme.example", org), ("admin@acme.example", org)}
    assert subjects == {f"Webhook endpoint disabled: {receiver.url('fail')}"}


def test_an_operator_wide_endpoint_failing_for_five_days_is_disabled_with_a_warning(
    db: Database,
    settings: Settings,
    receiver: Receiver,
    make_org: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    t0 = real_now()
    org = make_org()
    endpoint = make_endpoint(db, receiver, None, receiver.url("fail"))
    with db.write() as s:
        row = s.get(WebhookEndpoint, endpoint)
        assert row is not None
        row.failing_since = t0 - timedelta(days=5)
    publish(db, "balance.depleted", org, t0)
    with caplog.at_level(logging.WARNING, logger="creditmeter.webhooks"):
        run_jobs(db, settings, t0)
    assert endpoint_row(db, endpoint).status == "disabled"
    assert any(endpoint in r.getMessage() for r in caplog.records)
    with db.read() as s:
        assert list(s.scalars(select(Email))) == []


def test_a_slow_receiver_times_out_and_is_retried(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    make_endpoint(db, receiver, org, receiver.url("slow", seconds=3))
    publish(db, "balance.depleted", org, t0)
    [outcome] = run_jobs(db, with_timeout(settings, 0.5), t0)
    assert outcome.result is not None
    assert "timed out" in str(outcome.result)
    [attempt] = attempts_of(db, the_delivery(db).id)
    assert attempt.status_code is None
    assert attempt.error == "timed out: no answer within 0.5 s"
    assert 400 <= attempt.latency_ms < 3000
    assert the_delivery(db).status == "pending"
    assert len(pending_jobs(db)) == 1


def test_redirects_are_not_followed(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    make_endpoint(db, receiver, org, receiver.url("redirect"))
    publish(db, "balance.depleted", org, t0)
    run_jobs(db, settings, t0)
    [attempt] = attempts_of(db, the_delivery(db).id)
    assert attempt.status_code == 302
    assert attempt.error == "redirects are not followed (302 to /ok)"
    assert [r["mode"] for r in receiver.requests(wait_for=1)] == ["redirect"]


def test_a_long_response_keeps_its_first_1000_characters(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    make_endpoint(db, receiver, org, receiver.url("big"))
    publish(db, "balance.depleted", org, t0)
    run_jobs(db, settings, t0)
    [attempt] = attempts_of(db, the_delivery(db).id)
    assert attempt.response_excerpt == "x" * 1000


def test_during_a_rotation_both_secrets_sign_and_afterwards_only_the_new_one(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    endpoint = make_endpoint(db, None, org, receiver.url("ok"))
    with db.write() as s:
        row = s.get(WebhookEndpoint, endpoint)
        assert row is not None
        old = row.secret
        new = webhooks.rotate_secret(s, row, timedelta(hours=24), t0)
    receiver.trust("old", old)
    receiver.trust("new", new)
    during = publish(db, "balance.depleted", org, t0)
    run_jobs(db, settings, t0)
    after = publish(db, "credits.expired", org, t0 + timedelta(hours=25))
    run_jobs(db, settings, t0 + timedelta(hours=25))
    got = {r["event_id"]: r for r in receiver.requests(wait_for=2)}
    assert got[during]["signatures"] == 2
    assert sorted(got[during]["verified_with"]) == ["new", "old"]
    assert got[after]["signatures"] == 1
    assert got[after]["signed_with"] == ["new"]


def test_a_job_run_again_after_a_crash_does_not_record_or_send_its_attempt_twice(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    make_endpoint(db, receiver, org, receiver.url("fail"))
    publish(db, "balance.depleted", org, t0)
    lease = timedelta(seconds=60)
    with db.write() as s:
        [job] = outbox.claim(s, [delivery.WEBHOOK_DELIVERY], now=t0, lease=lease)
    with clock.frozen_at(t0):
        delivery.run_delivery(db, settings, job)  # the worker dies before completing the job
    later = t0 + lease + timedelta(seconds=1)
    with db.write() as s:  # the lease lapsed: the job is claimed again, with attempt 2's
        claimed = outbox.claim(s, [delivery.WEBHOOK_DELIVERY], now=later, lease=lease)
    assert [(j.id, j.payload["attempt"]) for j in claimed] == [(job.id, 1), (job.id + 1, 2)]
    with clock.frozen_at(later):
        results = [delivery.run_delivery(db, settings, j) for j in claimed]
    assert results[0] == "skipped: attempt 1 was recorded already"
    assert results[1].startswith("failed: HTTP 500; attempt 3 at ")
    assert [a.number for a in attempts_of(db, the_delivery(db).id)] == [1, 2]
    assert len(receiver.requests(wait_for=3, timeout=0.5)) == 2
    assert [j.payload["attempt"] for j in pending_jobs(db)] == [3]  # scheduled once


def test_the_destination_is_checked_again_when_sending(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    make_endpoint(db, receiver, org, receiver.url("ok"))  # allowed when it was created
    publish(db, "balance.depleted", org, t0)
    strict = replace(settings, webhook_allow_private=False)
    run_jobs(db, strict, t0)
    [attempt] = attempts_of(db, the_delivery(db).id)
    assert attempt.status_code is None
    assert attempt.error == (
        "webhook_url_not_allowed: webhooks cannot be sent to 127.0.0.1: it is a loopback address"
    )
    assert receiver.requests(timeout=0.3) == []


def test_deliveries_of_a_disabled_or_deleted_endpoint_are_not_sent(
    db: Database, settings: Settings, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    t0 = real_now()
    org = make_org()
    disabled = make_endpoint(db, receiver, org, receiver.url("ok"))
    publish(db, "balance.depleted", org, t0)
    with db.write() as s:  # disabled after the delivery was queued (a race with the fan-out)
        row = s.get(WebhookEndpoint, disabled)
        assert row is not None
        row.status = "disabled"
    assert [o.result for o in run_jobs(db, settings, t0)] == ["cancelled: the endpoint is disabled"]
    assert the_delivery(db).status == "cancelled"

    deleted = make_endpoint(db, receiver, org, receiver.url("ok"))
    publish(db, "credits.expired", org, t0)
    with db.write() as s:
        row = s.get(WebhookEndpoint, deleted)
        assert row is not None
        webhooks.delete_endpoint(s, row)
    assert [o.result for o in run_jobs(db, settings, t0)] == [
        "skipped: the delivery no longer exists (its endpoint was deleted)"
    ]
    assert receiver.requests(timeout=0.3) == []


def test_an_unreachable_receiver_is_a_recorded_failure(
    db: Database, settings: Settings, make_org: Callable[..., str]
) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    t0 = real_now()
    org = make_org()
    make_endpoint(db, None, org, f"http://127.0.0.1:{port}/hook")
    publish(db, "balance.depleted", org, t0)
    [outcome] = run_jobs(db, settings, t0)
    assert outcome.error is None
    [attempt] = attempts_of(db, the_delivery(db).id)
    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("could not connect to 127.0.0.1 (127.0.0.1)")
