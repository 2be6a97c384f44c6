"""E-mail over HTTP: an organization's messages (held ones included when no SMTP server is
configured) with cursor pagination, one message with its bodies, the operator's list of all;
members' notification preferences; the public unsubscribe link (GET, and POST for one-click); who
may read what (another organization's are 404); bad input is a 4xx problem that changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.notify import email
from tests.metering import assert_problem
from tests.notify_email.conftest import (
    ADMIN,
    OWNER,
    PAUSED,
    emails_of,
    publish,
    run_emails,
    smtp_settings,
)

Headers = dict[str, str]


def emails_url(org: str, rest: str = "") -> str:
    return f"/v1/organizations/{org}/emails{rest}"


def prefs_url(org: str, member: str) -> str:
    return f"/v1/organizations/{org}/members/{member}/notification-preferences"


def test_without_smtp_messages_are_held_and_listed_newest_first(
    client: TestClient, db: Database, acme: dict[str, str], make_key: Callable[..., Headers]
) -> None:
    org = acme["org"]
    first = publish(db, "organization.paused", org, PAUSED)
    second = publish(db, "organization.paused", org, PAUSED)
    run_emails(db, smtp_settings(db, None))
    reader = make_key(org, "org:read")
    page = client.get(emails_url(org), params={"limit": 3}, headers=reader)
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["has_more"] is True
    rest = client.get(emails_url(org), params={"cursor": body["next_cursor"]}, headers=reader)
    listed = body["data"] + rest.json()["data"]
    assert rest.json()["has_more"] is False
    assert [m["id"] for m in listed] == sorted((m["id"] for m in listed), reverse=True)
    assert len(listed) == 4
    assert {m["event_id"] for m in listed} == {first, second}
    one = listed[0]
    assert one["status"] == "held"
    assert one["to"] in {OWNER, ADMIN}
    assert one["subject"] == "Acme AI: operations paused: no credits left"
    assert (one["attempts"], one["last_error"], one["sent_at"]) == (0, None, None)
    assert one["organization_id"] == org
    assert one["environment"] == "live"
    assert one["attachments"] == []
    assert one["created_at"].endswith("Z")
    assert "text" not in one
    held = client.get(emails_url(org), params={"status": "held"}, headers=reader).json()
    assert len(held["data"]) == 4
    sent = client.get(emails_url(org), params={"status": "sent"}, headers=reader).json()
    assert sent["data"] == []
    detail = client.get(emails_url(org, f"/{one['id']}"), headers=reader)
    assert detail.status_code == 200, detail.text
    assert "-0.25" in detail.json()["text"]
    assert "<html" in detail.json()["html"]


def test_the_operator_lists_every_organizations_messages(
    client: TestClient,
    db: Database,
    acme: dict[str, str],
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    publish(db, "organization.paused", acme["org"], PAUSED)
    publish(db, "organization.paused", acme["org"], PAUSED, environment="test")
    response = client.get("/v1/emails", headers=operator)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 4
    live = client.get("/v1/emails", params={"environment": "live"}, headers=operator).json()
    assert {m["environment"] for m in live["data"]} == {"live"}
    # an operator's organization path shows both environments unless asked
    assert len(client.get(emails_url(acme["org"]), headers=operator).json()["data"]) == 4
    # an organization key sees its own environment only
    test_key = make_key(acme["org"], "org:admin", environment="test")
    mine = client.get(emails_url(acme["org"]), headers=test_key).json()["data"]
    assert {m["environment"] for m in mine} == {"test"}
    assert_problem(client.get("/v1/emails", headers=test_key), 403, "operator_only")


def test_an_organization_key_cannot_see_another_organizations_messages(
    client: TestClient,
    db: Database,
    acme: dict[str, str],
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    publish(db, "organization.paused", acme["org"], PAUSED)
    [message, _] = emails_of(db)
    globex = make_org("Globex")
    globex_admin = make_key(globex, "org:admin")
    assert_problem(client.get(emails_url(acme["org"]), headers=globex_admin), 404, "not_found")
    assert_problem(
        client.get(emails_url(acme["org"], f"/{message.id}"), headers=globex_admin),
        404,
        "not_found",
    )
    assert_problem(
        client.get(emails_url(globex, f"/{message.id}"), headers=globex_admin),
        404,
        "email_not_found",
    )
    assert client.get(emails_url(globex), headers=globex_admin).json()["data"] == []
    ingest = make_key(acme["org"], "org:ingest")
    assert_problem(client.get(emails_url(acme["org"]), headers=ingest), 403, "insufficient_scope")
    assert_problem(client.get(emails_url(acme["org"])), 401, "missing_api_key")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"status": "lost"}, "validation_failed"),
        ({"limit": 0}, "validation_failed"),
        ({"cursor": "not-a-cursor!"}, "invalid_cursor"),
        ({"cursor": "b3JnXzEyMw"}, "invalid_cursor"),  # a cursor of organizations
        ({"environment": "staging"}, "validation_failed"),
    ],
)
def test_bad_list_queries_are_422(
    client: TestClient,
    acme: dict[str, str],
    operator: Headers,
    params: dict[str, object],
    code: str,
) -> None:
    assert_problem(client.get(emails_url(acme["org"]), params=params, headers=operator), 422, code)


def test_preferences_read_and_replace(
    client: TestClient, db: Database, acme: dict[str, str], make_key: Callable[..., Headers]
) -> None:
    org, owner = acme["org"], acme[OWNER]
    admin = make_key(org, "org:admin")
    got = client.get(prefs_url(org, owner), headers=admin)
    assert got.status_code == 200, got.text
    defaults = got.json()
    assert defaults["event_types"] is None
    assert defaults["unsubscribed"] is False
    assert defaults["updated_at"] is None
    assert defaults["effective_event_types"] == defaults["available_event_types"]
    assert "invoice.issued" in defaults["available_event_types"]
    assert "credits.granted" not in defaults["available_event_types"]  # not e-mailed
    put = client.put(
        prefs_url(org, owner),
        json={"event_types": ["invoice.issued", "alert.triggered", "invoice.issued"]},
        headers=admin,
    )
    assert put.status_code == 200, put.text
    assert put.json()["event_types"] == ["alert.triggered", "invoice.issued"]  # catalog order
    assert put.json()["effective_event_types"] == ["alert.triggered", "invoice.issued"]
    assert client.get(prefs_url(org, owner), headers=admin).json() == put.json()
    publish(db, "organization.paused", org, PAUSED)
    assert [m.to_address for m in emails_of(db)] == [ADMIN]
    off = client.put(prefs_url(org, owner), json={"unsubscribed": True}, headers=admin).json()
    assert (off["event_types"], off["effective_event_types"]) == (None, [])
    back = client.put(prefs_url(org, owner), json={}, headers=admin).json()
    assert back["effective_event_types"] == defaults["available_event_types"]


def test_bad_preferences_are_4xx_and_change_nothing(
    client: TestClient,
    acme: dict[str, str],
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> None:
    org, owner = acme["org"], acme[OWNER]
    admin = make_key(org, "org:admin")
    body = assert_problem(
        client.put(
            prefs_url(org, owner),
            json={"event_types": ["invoice.issued", "credits.granted", "nope"]},
            headers=admin,
        ),
        422,
        "unknown_event_type",
    )
    assert [e["field"] for e in body["errors"]] == ["event_types[1]", "event_types[2]"]
    assert_problem(
        client.put(prefs_url(org, owner), json={"unsubscribed": "maybe"}, headers=admin),
        422,
        "validation_failed",
    )
    assert_problem(
        client.put(prefs_url(org, owner), json={"muted": True}, headers=admin),
        422,
        "validation_failed",
    )
    assert_problem(
        client.put(prefs_url(org, owner), content=b"unsubscribed=1", headers=admin),
        415,
        "unsupported_media_type",
    )
    assert_problem(client.get(prefs_url(org, "mem_nobody"), headers=admin), 404, "member_not_found")
    globex = make_org("Globex")
    globex_admin = make_key(globex, "org:admin")
    assert_problem(client.get(prefs_url(org, owner), headers=globex_admin), 404, "not_found")
    assert_problem(
        client.get(prefs_url(globex, owner), headers=globex_admin), 404, "member_not_found"
    )
    reader = make_key(org, "org:read")
    assert_problem(client.get(prefs_url(org, owner), headers=reader), 403, "insufficient_scope")
    assert client.get(prefs_url(org, owner), headers=admin).json()["updated_at"] is None


def _link_token(db: Database, address: str) -> str:
    [row] = [r for r in emails_of(db) if r.to_address == address]
    return row.text_body.split("/v1/unsubscribe/")[1].split()[0]


def test_the_unsubscribe_link_stops_every_message_without_an_api_key(
    client: TestClient, db: Database, acme: dict[str, str]
) -> None:
    org = acme["org"]
    publish(db, "organization.paused", org, PAUSED)
    token = _link_token(db, OWNER)
    page = client.get(f"/v1/unsubscribe/{token}", headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "Unsubscribed" in page.text
    assert OWNER in page.text
    again = client.get(f"/v1/unsubscribe/{token}")  # twice is harmless
    assert again.json() == {"unsubscribed": True, "email": OWNER, "organization_id": org}
    publish(db, "organization.paused", org, PAUSED)
    with db.write() as session:
        email.queue_direct(
            session,
            organization_id=org,
            environment="live",
            to=[OWNER],
            subject="s",
            text="t",
            html="h",
            dedupe_key="direct:1",
            now=clock.now(),
        )
    assert sorted(m.to_address for m in emails_of(db)) == [ADMIN, ADMIN, OWNER]


def test_one_click_unsubscribe_posts_a_form(
    client: TestClient, db: Database, acme: dict[str, str]
) -> None:
    """RFC 8058: the mail client posts ``List-Unsubscribe=One-Click`` as a form, not JSON."""
    publish(db, "organization.paused", acme["org"], PAUSED)
    token = _link_token(db, ADMIN)
    response = client.post(
        f"/v1/unsubscribe/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["unsubscribed"] is True
    publish(db, "organization.paused", acme["org"], PAUSED)
    assert sorted(m.to_address for m in emails_of(db)) == [ADMIN, OWNER, OWNER]


@pytest.mark.parametrize("token", ["unknown", "x" * 65, "%C3%A9t%C3%A9"])
def test_an_unknown_unsubscribe_token_is_404(
    client: TestClient, acme: dict[str, str], token: str
) -> None:
    assert_problem(client.get(f"/v1/unsubscribe/{token}"), 404, "unknown_unsubscribe_token")
    assert_problem(client.post(f"/v1/unsubscribe/{token}"), 404, "unknown_unsubscribe_token")
