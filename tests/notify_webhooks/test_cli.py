"""``creditmeter webhooks``: an operator lists endpoints, reads an endpoint's delivery log and replays
deliveries from the command line, against the same databases as the rest of the suite."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from creditmeter.cli.main import app
from creditmeter.config import Settings
from creditmeter.kit.db import Database
from creditmeter.notify.models import WebhookDelivery
from tests.notify_webhooks.conftest import Receiver, make_endpoint, publish, real_now, run_jobs


@pytest.fixture
def cli(db: Database) -> Callable[..., Any]:
    runner = CliRunner()
    env = {"CREDITMETER_DATABASE_URL": db.url, "COLUMNS": "200"}

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args), env=env)

    return run


def deliveries_of(db: Database, endpoint_id: str) -> list[WebhookDelivery]:
    with db.read() as s:
        return list(
            s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == endpoint_id)
                .order_by(WebhookDelivery.id)
            )
        )


def test_list_shows_every_endpoint_or_one_organizations(
    cli: Callable[..., Any], db: Database, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    acme, globex = make_org("Acme", "acme"), make_org("Globex")
    a = make_endpoint(db, None, acme, receiver.url(), event_types=["invoice.*"])
    g = make_endpoint(db, None, globex, receiver.url())
    wide = make_endpoint(db, None, None, receiver.url())
    listed = cli("webhooks", "list")
    assert listed.exit_code == 0, listed.output
    for endpoint_id in (a, g, wide):
        assert endpoint_id in listed.stdout
    assert "invoice.*" in listed.stdout
    only = cli("webhooks", "list", "--org", "acme")
    assert a in only.stdout
    assert g not in only.stdout
    assert wide not in only.stdout
    assert cli("webhooks", "list", "--environment", "test").stdout.strip() == "no webhook endpoints"
    missing = cli("webhooks", "list", "--org", "nobody")
    assert missing.exit_code == 3
    assert "not_found" in missing.stderr


def test_deliveries_shows_each_delivery_with_its_attempts(
    cli: Callable[..., Any],
    db: Database,
    settings: Settings,
    receiver: Receiver,
    make_org: Callable[..., str],
) -> None:
    t0 = real_now()
    org = make_org()
    endpoint = make_endpoint(db, receiver, org, receiver.url("fail"))
    event = publish(db, "balance.depleted", org, t0)
    run_jobs(db, settings, t0)
    run_jobs(db, settings, t0 + timedelta(seconds=6))
    shown = cli("webhooks", "deliveries", endpoint)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert event in lines[0]
    assert "balance.depleted" in lines[0]
    assert "pending, 2 attempt(s), next attempt" in lines[0]
    assert lines[1].startswith("  #1 ")
    assert " 500 " in lines[1]
    assert lines[1].endswith("- HTTP 500")
    assert lines[2].startswith("  #2 ")
    assert cli("webhooks", "deliveries", endpoint, "--status", "failed").stdout.startswith(
        "no deliveries"
    )
    assert cli("webhooks", "deliveries", "we_nothing").exit_code == 3
    assert cli("webhooks", "deliveries", endpoint, "--status", "lost").exit_code == 2


def test_replay_and_replay_failed_queue_new_deliveries_of_the_same_events(
    cli: Callable[..., Any],
    db: Database,
    settings: Settings,
    receiver: Receiver,
    make_org: Callable[..., str],
) -> None:
    t0 = real_now()
    org = make_org()
    endpoint = make_endpoint(db, receiver, org, receiver.url("ok"))
    first = publish(db, "balance.depleted", org, t0)
    second = publish(db, "credits.expired", org, t0)
    third = publish(db, "organization.resumed", org, t0)
    with db.write() as s:  # as if the first two had failed for good
        for row in s.scalars(select(WebhookDelivery)):
            if row.event_id in {first, second}:
                row.status = "failed"
    replayed = cli("webhooks", "replay", deliveries_of(db, endpoint)[2].id)
    assert replayed.exit_code == 0, replayed.output
    new_id = replayed.stdout.strip()
    assert new_id.startswith("wd_")

    failed = cli("webhooks", "replay-failed", endpoint, "--since", t0.isoformat())
    assert failed.exit_code == 0, failed.output
    assert "2 failed deliveries queued again" in failed.stderr
    assert len(failed.stdout.split()) == 2
    again = cli("webhooks", "replay-failed", endpoint)  # already pending again: nothing more
    assert "0 failed deliveries queued again" in again.stderr

    rows = deliveries_of(db, endpoint)
    assert [(r.kind, r.event_id) for r in rows[3:]] == [
        ("redelivery", third),
        ("redelivery", first),
        ("redelivery", second),
    ]
    run_jobs(db, settings, real_now() + timedelta(seconds=1))
    got = receiver.requests(wait_for=4)
    assert sorted(r["webhook_id"] for r in got) == sorted([third, third, first, second])
    assert cli("webhooks", "replay", "wd_nothing").exit_code == 3
    bad = cli("webhooks", "replay-failed", endpoint, "--since", "yesterday")
    assert bad.exit_code == 2


def test_replaying_to_a_disabled_endpoint_is_refused(
    cli: Callable[..., Any], db: Database, receiver: Receiver, make_org: Callable[..., str]
) -> None:
    org = make_org()
    endpoint = make_endpoint(db, None, org, receiver.url())
    publish(db, "balance.depleted", org, real_now())
    cli("webhooks", "list")
    from creditmeter.kit import clock
    from creditmeter.notify import webhooks
    from creditmeter.notify.models import WebhookEndpoint

    with db.write() as s:
        row = s.get(WebhookEndpoint, endpoint)
        assert row is not None
        webhooks.disable(s, row, "by hand", clock.now(), ending=webhooks.CANCELLED)
    refused = cli("webhooks", "replay", deliveries_of(db, endpoint)[0].id)
    assert refused.exit_code == 4
    assert "webhook_endpoint_disabled" in refused.stderr
