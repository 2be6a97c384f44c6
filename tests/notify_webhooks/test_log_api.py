"""The delivery log over the API: deliveries with their attempts (paged), redelivering one (the
same ``webhook-id``), sending a test event to one endpoint only, and the notification events of an
organization (its own only) and of all of them (operator)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient

from creditmeter.config import Settings
from creditmeter.kit.db import Database
from tests.api.test_bad_input import assert_problem
from tests.notify_webhooks.conftest import Headers, Receiver, publish, real_now, run_jobs


def endpoints(org: str) -> str:
    return f"/v1/organizations/{org}/webhook-endpoints"


def hook(
    client: TestClient, receiver: Receiver, org: str, headers: Headers, mode: str = "ok"
) -> str:
    made = client.post(endpoints(org), json={"url": receiver.url(mode)}, headers=headers)
    assert made.status_code == 201, made.text
    receiver.trust(made.json()["id"], made.json()["secret"])
    endpoint_id: str = made.json()["id"]
    return endpoint_id


def test_the_log_lists_deliveries_newest_first_with_their_attempts(
    client: TestClient,
    db: Database,
    settings: Settings,
    receiver: Receiver,
    org_admin: Callable[..., Any],
) -> None:
    t0 = real_now()
    org, admin = org_admin()
    endpoint = hook(client, receiver, org, admin, "flaky")
    first = publish(db, "balance.depleted", org, t0)
    second = publish(db, "credits.expired", org, t0)
    run_jobs(db, settings, t0)  # both fail once (flaky fails the first request of each id)
    page = client.get(f"{endpoints(org)}/{endpoint}/deliveries", headers=admin).json()
    assert [d["event_id"] for d in page["data"]] == [second, first]
    newest = page["data"][0]
    assert newest["event_type"] == "credits.expired"
    assert newest["kind"] == "automatic"
    assert newest["status"] == "pending"
    assert newest["next_attempt_at"] is not None
    assert newest["last_status_code"] == 500
    [attempt] = newest["attempts"]
    assert attempt["number"] == 1
    assert attempt["status_code"] == 500
    assert attempt["succeeded"] is False
    assert attempt["error"] == "HTTP 500"
    assert attempt["response_excerpt"] == "failing request 1"
    assert attempt["latency_ms"] >= 0
    assert attempt["started_at"].endswith("Z")

    run_jobs(db, settings, t0 + timedelta(seconds=10))
    done = client.get(f"{endpoints(org)}/{endpoint}/deliveries", headers=admin).json()["data"]
    assert {d["status"] for d in done} == {"succeeded"}
    assert [[a["status_code"] for a in d["attempts"]] for d in done] == [[500, 200], [500, 200]]

    one = client.get(f"{endpoints(org)}/{endpoint}/deliveries?limit=1", headers=admin).json()
    assert one["has_more"] is True
    rest = client.get(
        f"{endpoints(org)}/{endpoint}/deliveries?limit=1&cursor={one['next_cursor']}",
        headers=admin,
    ).json()
    assert [d["event_id"] for d in one["data"] + rest["data"]] == [second, first]
    assert rest["has_more"] is False
    failed = client.get(f"{endpoints(org)}/{endpoint}/deliveries?status=failed", headers=admin)
    assert failed.json()["data"] == []
    bad = client.get(f"{endpoints(org)}/{endpoint}/deliveries?status=lost", headers=admin)
    assert_problem(bad, 422, "validation_failed")
    assert_problem(
        client.get(f"{endpoints(org)}/{endpoint}/deliveries?cursor=we_x", headers=admin),
        422,
        "invalid_cursor",
    )


def test_a_redelivery_sends_the_same_event_with_the_same_webhook_id(
    client: TestClient,
    db: Database,
    settings: Settings,
    receiver: Receiver,
    org_admin: Callable[..., Any],
) -> None:
    t0 = real_now()
    org, admin = org_admin()
    endpoint = hook(client, receiver, org, admin)
    event = publish(db, "balance.depleted", org, t0)
    run_jobs(db, settings, t0)
    [original] = client.get(f"{endpoints(org)}/{endpoint}/deliveries", headers=admin).json()["data"]
    path = f"{endpoints(org)}/{endpoint}/deliveries/{original['id']}/redeliver"
    keyed = {**admin, "Idempotency-Key": "again-1"}
    again = client.post(path, headers=keyed)
    assert again.status_code == 202, again.text
    assert client.post(path, headers=keyed).json() == again.json()  # one redelivery per key
    body = again.json()
    assert body["id"] != original["id"]
    assert (body["kind"], body["status"], body["event_id"]) == ("redelivery", "pending", event)
    assert body["attempts"] == []
    run_jobs(db, settings, real_now() + timedelta(seconds=1))
    got = receiver.requests(wait_for=2)
    assert [r["webhook_id"] for r in got] == [event, event]
    assert all(r["verified_with"] == [endpoint] for r in got)
    log = client.get(f"{endpoints(org)}/{endpoint}/deliveries", headers=admin).json()["data"]
    assert [(d["kind"], d["status"]) for d in log] == [
        ("redelivery", "succeeded"),
        ("automatic", "succeeded"),
    ]
    assert_problem(
        client.post(f"{endpoints(org)}/{endpoint}/deliveries/wd_nothing/redeliver", headers=admin),
        404,
        "webhook_delivery_not_found",
    )


def test_a_test_event_goes_to_the_endpoint_tested_only(
    client: TestClient,
    db: Database,
    settings: Settings,
    receiver: Receiver,
    org_admin: Callable[..., Any],
    operator: Headers,
) -> None:
    org, admin = org_admin()
    tested = hook(client, receiver, org, admin)
    other = hook(client, receiver, org, admin)
    wide = client.post("/v1/webhook-endpoints", json={"url": receiver.url()}, headers=operator)
    assert wide.status_code == 201
    sent = client.post(f"{endpoints(org)}/{tested}/test", json={"message": "ping"}, headers=admin)
    assert sent.status_code == 202, sent.text
    assert (sent.json()["kind"], sent.json()["event_type"]) == ("test", "webhook.test")
    run_jobs(db, settings, real_now() + timedelta(seconds=1))
    [request] = receiver.requests(wait_for=1)
    assert request["verified_with"] == [tested]
    assert request["type"] == "webhook.test"
    assert request["organization_id"] == org
    assert client.get(f"{endpoints(org)}/{other}/deliveries", headers=admin).json()["data"] == []
    # no body: a default message; a disabled endpoint is refused with what to do
    assert client.post(f"{endpoints(org)}/{other}/test", headers=admin).status_code == 202
    client.patch(f"{endpoints(org)}/{other}", json={"status": "disabled"}, headers=admin)
    refused = client.post(f"{endpoints(org)}/{other}/test", headers=admin)
    assert "enable it" in assert_problem(refused, 409, "webhook_endpoint_disabled")["detail"]
    assert_problem(
        client.post(f"{endpoints(org)}/{tested}/test", json={"message": 5}, headers=admin),
        422,
        "validation_failed",
    )
    # the operator tests its own endpoint the same way
    op_test = client.post(f"/v1/webhook-endpoints/{wide.json()['id']}/test", headers=operator)
    assert op_test.status_code == 202, op_test.text


def test_events_are_listed_newest_first_to_their_organization_only(
    client: TestClient,
    db: Database,
    org_admin: Callable[..., Any],
    make_key: Callable[..., Headers],
    operator: Headers,
) -> None:
    t0 = real_now()
    acme, acme_admin = org_admin("Acme")
    globex, _ = org_admin("Globex")
    a1 = publish(db, "balance.depleted", acme, t0)
    a2 = publish(db, "credits.expired", acme, t0)
    g1 = publish(db, "balance.depleted", globex, t0)
    reader = make_key(acme, "org:read")
    path = f"/v1/organizations/{acme}/notification-events"
    for key in (acme_admin, reader, operator):
        listed = client.get(path, headers=key).json()
        assert [e["id"] for e in listed["data"]] == [a2, a1]
    first = client.get(path, headers=acme_admin).json()["data"][1]
    assert first["type"] == "balance.depleted"
    assert first["data"] == {"available_credits": "0", "at": t0.isoformat().replace("+00:00", "Z")}
    assert first["organization_id"] == acme
    only = client.get(path + "?type=credits.expired", headers=reader).json()["data"]
    assert [e["id"] for e in only] == [a2]
    assert_problem(
        client.get(path + "?type=credits.lost", headers=reader), 422, "unknown_event_type"
    )
    paged = client.get(path + "?limit=1", headers=reader).json()
    more = client.get(path + f"?limit=1&cursor={paged['next_cursor']}", headers=reader).json()
    assert [e["id"] for e in paged["data"] + more["data"]] == [a2, a1]
    assert_problem(
        client.get(f"/v1/organizations/{globex}/notification-events", headers=acme_admin),
        404,
        "not_found",
    )
    everyone = client.get("/v1/notification-events", headers=operator).json()["data"]
    assert [e["id"] for e in everyone] == [g1, a2, a1]
    theirs = client.get(f"/v1/notification-events?organization_id={globex}", headers=operator)
    assert [e["id"] for e in theirs.json()["data"]] == [g1]
    assert_problem(client.get("/v1/notification-events", headers=reader), 403, "operator_only")


def test_an_organization_cannot_read_or_redeliver_another_organizations_deliveries(
    client: TestClient,
    db: Database,
    settings: Settings,
    receiver: Receiver,
    org_admin: Callable[..., Any],
) -> None:
    t0 = real_now()
    acme, acme_admin = org_admin("Acme")
    globex, globex_admin = org_admin("Globex")
    theirs = hook(client, receiver, globex, globex_admin)
    mine = hook(client, receiver, acme, acme_admin)
    publish(db, "balance.depleted", globex, t0)
    run_jobs(db, settings, t0)
    [delivery] = client.get(
        f"{endpoints(globex)}/{theirs}/deliveries", headers=globex_admin
    ).json()["data"]
    assert_problem(
        client.get(f"{endpoints(acme)}/{theirs}/deliveries", headers=acme_admin),
        404,
        "webhook_endpoint_not_found",
    )
    # their delivery through my own endpoint's path: not mine either
    assert_problem(
        client.post(
            f"{endpoints(acme)}/{mine}/deliveries/{delivery['id']}/redeliver", headers=acme_admin
        ),
        404,
        "webhook_delivery_not_found",
    )
    assert len(receiver.requests(wait_for=1)) == 1
