"""An event reaches exactly the enabled endpoints of its organization and environment whose filter
matches it, plus the operator-wide endpoints of that environment; never another organization's.
The receiver (a separate process) checks every request's signature with ``standardwebhooks``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from creditmeter.config import Settings
from creditmeter.kit import outbox
from creditmeter.kit.db import Database
from creditmeter.notify import webhook_http, webhooks
from creditmeter.notify.models import WebhookDelivery, WebhookEndpoint
from tests.notify_webhooks.conftest import Receiver, make_endpoint, publish, real_now, run_jobs


def deliveries(db: Database) -> set[tuple[str, str]]:
    """(endpoint, event) of every delivery."""
    with db.read() as s:
        rows = s.execute(select(WebhookDelivery.endpoint_id, WebhookDelivery.event_id))
        return {(endpoint_id, event_id) for endpoint_id, event_id in rows}


def test_events_fan_out_to_matching_endpoints_only(
    db: Database,
    settings: Settings,
    receiver: Receiver,
    make_org: Callable[..., str],
) -> None:
    at = real_now()
    acme, globex = make_org("Acme"), make_org("Globex")
    everything = make_endpoint(db, receiver, acme, receiver.url("ok", to="acme-all"))
    credits_only = make_endpoint(
        db, receiver, acme, receiver.url("ok", to="acme-credits"), event_types=["credits.*"]
    )
    exact = make_endpoint(
        db, receiver, acme, receiver.url("ok", to="acme-exact"), event_types=["balance.depleted"]
    )
    switched_off = make_endpoint(db, receiver, acme, receiver.url("ok", to="off"))
    with db.write() as s:
        row = s.get(WebhookEndpoint, switched_off)
        assert row is not None
        webhooks.disable(s, row, "by hand", at, ending=webhooks.CANCELLED)
    acme_test = make_endpoint(db, receiver, acme, receiver.url("ok"), environment="test")
    theirs = make_endpoint(db, receiver, globex, receiver.url("ok", to="globex"))
    operator_wide = make_endpoint(db, receiver, None, receiver.url("ok", to="operator"))
    operator_test = make_endpoint(db, receiver, None, receiver.url("ok"), environment="test")

    depleted = publish(db, "balance.depleted", acme, at)
    expired = publish(db, "credits.expired", acme, at)
    globex_event = publish(db, "balance.depleted", globex, at)
    in_test = publish(db, "organization.resumed", acme, at, environment="test")

    assert deliveries(db) == {
        (everything, depleted),
        (exact, depleted),
        (operator_wide, depleted),
        (everything, expired),
        (credits_only, expired),
        (operator_wide, expired),
        (theirs, globex_event),
        (operator_wide, globex_event),
        (acme_test, in_test),
        (operator_test, in_test),
    }
    with db.read() as s:
        jobs = list(s.scalars(select(outbox.Job).where(outbox.Job.kind == "webhook_delivery")))
        rows = {d.id: d for d in s.scalars(select(WebhookDelivery))}
    assert len(jobs) == 10
    for job in jobs:
        row = rows[job.payload["delivery_id"]]
        assert job.payload == {"delivery_id": row.id, "attempt": 1}
        assert job.run_at == at
        assert job.max_attempts == 5
        assert job.dedupe_key == f"webhook:{row.id}"
        assert (job.organization_id, job.environment) == {
            depleted: (acme, "live"),
            expired: (acme, "live"),
            globex_event: (globex, "live"),
            in_test: (acme, "test"),
        }[row.event_id]
    assert {(r.kind, r.status, r.dedupe_key) for r in rows.values()} == {
        ("automatic", "pending", f"auto:{r.endpoint_id}:{r.event_id}") for r in rows.values()
    }

    outcomes = run_jobs(db, settings, at)
    assert [o.error for o in outcomes] == [None] * 10
    assert all(str(o.result).startswith("succeeded") for o in outcomes), outcomes
    got = receiver.requests(wait_for=10)
    assert len(got) == 10
    by_route: dict[str, set[tuple[str, str | None]]] = {}
    for request in got:
        # each request verifies (signature and timestamp) with its endpoint's secret only
        assert len(request["verified_with"]) == 1, request
        assert request["signatures"] == 1
        assert request["webhook_id"] == request["event_id"]
        assert request["user_agent"] == webhook_http.USER_AGENT
        assert request["content_type"] == "application/json"
        by_route.setdefault(request["query"].get("to", request["verified_with"][0]), set()).add(
            (request["event_id"], request["organization_id"])
        )
    assert by_route["acme-all"] == {(depleted, acme), (expired, acme)}
    assert by_route["acme-credits"] == {(expired, acme)}
    assert by_route["acme-exact"] == {(depleted, acme)}
    assert by_route["globex"] == {(globex_event, globex)}
    assert by_route["operator"] == {(depleted, acme), (expired, acme), (globex_event, globex)}
    assert "off" not in by_route
    with db.read() as s:
        assert set(s.scalars(select(WebhookDelivery.status))) == {"succeeded"}


def test_the_test_event_is_never_fanned_out(
    db: Database, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    acme = make_org()
    make_endpoint(db, receiver, acme, receiver.url())
    make_endpoint(db, receiver, None, receiver.url())
    from creditmeter.kit import clock
    from creditmeter.notify import events

    with db.write() as s:
        events.publish(
            s,
            "webhook.test",
            organization_id=acme,
            environment="live",
            data={"message": "hi"},
            now=clock.now(),
        )
    assert deliveries(db) == set()


def test_an_event_without_endpoints_queues_nothing(
    db: Database, make_org: Callable[..., str], receiver: Receiver
) -> None:
    acme = make_org()
    publish(db, "balance.depleted", acme, real_now())
    assert deliveries(db) == set()
    with db.read() as s:
        assert s.scalar(select(outbox.Job.id).where(outbox.Job.kind == "webhook_delivery")) is None


def test_one_statement_inserts_every_delivery_of_an_event(
    db: Database, make_org: Callable[..., str], receiver: Receiver
) -> None:
    from sqlalchemy import event as sa_event

    acme = make_org()
    for _ in range(20):
        make_endpoint(db, None, acme, receiver.url())
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(str(args[2]))

    sa_event.listen(db.engine, "before_cursor_execute", seen)
    try:
        publish(db, "balance.depleted", acme, real_now())
    finally:
        sa_event.remove(db.engine, "before_cursor_execute", seen)
    inserts = [
        s for s in statements if s.lstrip().upper().startswith("INSERT INTO WEBHOOK_DELIVERIES")
    ]
    assert len(inserts) == 1
    assert len(deliveries(db)) == 20
