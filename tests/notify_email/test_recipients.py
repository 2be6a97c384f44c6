"""Who is e-mailed of an event: the owners and admins (not members or viewers); an alert's own
recipients when its rule names some; members' preferences remove messages; test-environment
events are e-mailed with ``[test]`` in the subject; one message per event and address, written with
its job in the publishing transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id
from creditmeter.notify import email, events, preferences
from creditmeter.notify.models import AlertRule, Email
from tests.notify_email.conftest import (
    ADMIN,
    MEMBER,
    OWNER,
    PAUSED,
    PUBLIC_URL,
    VIEWER,
    alert_data,
    emails_of,
    publish,
)


def add_rule(db: Database, org: str, recipients: list[str], environment: str = "live") -> str:
    rule_id = new_id("alr")
    with db.write() as session:
        session.add(
            AlertRule(
                id=rule_id,
                organization_id=org,
                environment=environment,
                type="credits_below",
                name="Low balance",
                threshold=100_000_000,
                hysteresis_bp=1000,
                project_id=None,
                recipients=recipients,
                enabled=True,
                state="ok",
                created_at=clock.now(),
                updated_at=clock.now(),
            )
        )
    return rule_id


def email_jobs(db: Database) -> list[outbox.Job]:
    with db.read() as session:
        return list(session.scalars(select(outbox.Job).where(outbox.Job.kind == email.EMAIL_SEND)))


def test_an_organization_paused_is_e_mailed_to_its_owners_and_admins_only(
    db: Database, acme: dict[str, str]
) -> None:
    event_id = publish(db, "organization.paused", acme["org"], PAUSED)
    rows = emails_of(db, event_id)
    assert [r.to_address for r in rows] == [ADMIN, OWNER]
    for row in rows:
        assert row.status == "queued"
        assert row.subject == "Acme AI: operations paused: no credits left"
        assert row.dedupe_key == f"event:{event_id}:{row.to_address}"
        assert row.organization_id == acme["org"]
        assert row.environment == "live"
        assert "-0.25" in row.text_body
        assert "-0.25" in row.html_body
        assert f"{PUBLIC_URL}/v1/organizations/{acme['org']}/purchases" in row.text_body
        assert f"{PUBLIC_URL}/v1/unsubscribe/" in row.text_body
    jobs = email_jobs(db)
    assert sorted(j.payload["email_id"] for j in jobs) == sorted(r.id for r in rows)
    assert {(j.max_attempts, j.state, j.organization_id) for j in jobs} == {
        (8, "pending", acme["org"])
    }


def test_a_type_that_is_not_e_mailed_and_an_event_without_organization_send_nothing(
    db: Database, acme: dict[str, str]
) -> None:
    publish(db, "organization.resumed", acme["org"], {"available_credits": "5", "at": clock.now()})
    publish(db, "organization.paused", None, PAUSED)
    assert emails_of(db) == []
    assert email_jobs(db) == []


def test_test_environment_events_are_e_mailed_with_test_in_the_subject(
    db: Database, acme: dict[str, str]
) -> None:
    event_id = publish(db, "organization.paused", acme["org"], PAUSED, environment="test")
    rows = emails_of(db, event_id)
    assert len(rows) == 2
    assert all(r.subject.startswith("[test] Acme AI:") for r in rows)
    assert all("TEST environment" in r.text_body and r.environment == "test" for r in rows)


def test_an_alert_goes_to_the_addresses_its_rule_names(db: Database, acme: dict[str, str]) -> None:
    """A named viewer gets it (a rule may name anyone), a named outsider too (without an unsubscribe
    link: the message says who can remove the address); the owners and admins do not."""
    rule = add_rule(db, acme["org"], [VIEWER, "Ops@Partner.test "])
    event_id = publish(db, "alert.triggered", acme["org"], alert_data(rule))
    rows = {r.to_address: r for r in emails_of(db, event_id)}
    assert sorted(rows) == ["ops@partner.test", VIEWER]
    outsider, viewer = rows["ops@partner.test"], rows[VIEWER]
    assert outsider.subject == ("Acme AI: Alert: Low balance (87.5 credits; threshold 100 credits)")
    for row in (outsider, viewer):
        assert "Value now:    87.5 credits" in row.text_body
        assert "Threshold:    100 credits" in row.text_body
        assert "Buy credits" in row.text_body
        assert "auto top-up" in row.text_body
    assert "/v1/unsubscribe/" in viewer.text_body
    assert "/v1/unsubscribe/" not in outsider.text_body
    assert "remove this address from the alert rule" in outsider.text_body
    assert "names this address" in outsider.text_body


def test_an_alert_whose_rule_names_no_one_goes_to_the_owners_and_admins(
    db: Database, acme: dict[str, str]
) -> None:
    rule = add_rule(db, acme["org"], [])
    triggered = publish(db, "alert.triggered", acme["org"], alert_data(rule))
    resolved = publish(db, "alert.resolved", acme["org"], alert_data(rule, value="150"))
    assert [r.to_address for r in emails_of(db, triggered)] == [ADMIN, OWNER]
    [resolved_mail, _] = emails_of(db, resolved)
    assert resolved_mail.subject == "Acme AI: Resolved: Low balance (150 credits)"
    assert "Nothing to do" in resolved_mail.text_body


def test_a_project_budget_alert_says_to_raise_the_budget(
    db: Database, acme: dict[str, str]
) -> None:
    rule = add_rule(db, acme["org"], [OWNER])
    data = alert_data(rule, value="91.5", available_credits=None)
    data["alert"] |= {"type": "project_budget_percent", "threshold": "90", "project_id": "proj_X"}
    [row] = emails_of(db, publish(db, "alert.triggered", acme["org"], data))
    assert row.subject == "Acme AI: Alert: Low balance (91.5%; threshold 90%)"
    assert f"PUT {PUBLIC_URL}/v1/organizations/{acme['org']}/projects/proj_X/budget" in (
        row.text_body
    )
    assert "Buy credits" not in row.text_body


def test_an_alert_of_another_organizations_rule_falls_back_to_the_owners_and_admins(
    db: Database, acme: dict[str, str], make_org: Any
) -> None:
    other = make_org("Globex")
    foreign_rule = add_rule(db, other, ["spy@globex.test"])
    event_id = publish(db, "alert.triggered", acme["org"], alert_data(foreign_rule))
    assert [r.to_address for r in emails_of(db, event_id)] == [ADMIN, OWNER]


def test_preferences_remove_messages_but_never_outsiders_named_by_a_rule(
    db: Database, acme: dict[str, str]
) -> None:
    with db.write() as session:
        preferences.set_preferences(
            session,
            acme["org"],
            acme[OWNER],
            event_types=["invoice.issued"],
            unsubscribed=False,
            now=clock.now(),
        )
        preferences.set_preferences(
            session, acme["org"], acme[ADMIN], event_types=None, unsubscribed=True, now=clock.now()
        )
    assert emails_of(db, publish(db, "organization.paused", acme["org"], PAUSED)) == []
    rule = add_rule(db, acme["org"], [OWNER, ADMIN, "ops@partner.test"])
    event_id = publish(db, "alert.triggered", acme["org"], alert_data(rule))
    assert [r.to_address for r in emails_of(db, event_id)] == ["ops@partner.test"]


def test_an_event_fans_out_once(db: Database, acme: dict[str, str]) -> None:
    """Running the fan-out of one event again adds no row and no job."""
    first = publish(db, "organization.paused", acme["org"], PAUSED)
    with db.write() as session:
        event = session.get(events.NotificationEvent, first)
        assert event is not None
        email.emails_for(session, event, clock.now())
    assert len(emails_of(db)) == 2
    assert len(email_jobs(db)) == 2


def test_a_rolled_back_cause_leaves_no_message(db: Database, acme: dict[str, str]) -> None:
    class Boom(Exception):
        pass

    try:
        with db.write() as session:
            events.publish(
                session,
                "organization.paused",
                organization_id=acme["org"],
                environment="live",
                data=PAUSED,
                now=clock.now(),
            )
            raise Boom
    except Boom:
        pass
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Email)) == 0
    assert email_jobs(db) == []


def test_queue_direct_sends_as_given_once_per_key_and_skips_the_unsubscribed(
    db: Database, acme: dict[str, str]
) -> None:
    with db.write() as session:
        preferences.set_preferences(
            session, acme["org"], acme[ADMIN], event_types=None, unsubscribed=True, now=clock.now()
        )

    def queue() -> list[str]:
        with db.write() as session:
            return email.queue_direct(
                session,
                organization_id=acme["org"],
                environment="live",
                to=[OWNER, ADMIN, " Ops@Partner.test", MEMBER],
                subject="Webhook endpoint disabled\r\nBcc: x@evil.test",
                text="Your endpoint failed for 5 days.",
                html="<p>Your endpoint failed for 5 days.</p>",
                dedupe_key="webhook-disabled:we_1",
                now=clock.now(),
            )

    ids = queue()
    assert queue() == []  # the same key again adds nothing
    rows = emails_of(db)
    assert sorted(r.id for r in rows) == sorted(ids)
    assert [r.to_address for r in rows] == [MEMBER, OWNER, "ops@partner.test"]
    assert {r.subject for r in rows} == {"Webhook endpoint disabled Bcc: x@evil.test"}
    assert {r.dedupe_key for r in rows} == {
        f"webhook-disabled:we_1:{a}" for a in (MEMBER, OWNER, "ops@partner.test")
    }
    assert {r.event_id for r in rows} == {None}
    assert len(email_jobs(db)) == 3
