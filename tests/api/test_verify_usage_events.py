"""``creditmeter verify``'s metering check: each usage transaction's consumption equals the credits of
the events it carries. Tampered behind the service, the check names the organization and the journal
transaction; it reads grouped sums per organization (never a list of transaction ids, which a large
database would push past the driver's 65,535 parameters)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from creditmeter.kit.db import Database
from creditmeter.ledger.verify import verify
from creditmeter.metering.verify import CHECKS
from tests.metering import Headers, event, grant


def _mismatches(db: Database) -> list[Any]:
    with db.read() as s:
        return verify(s, extra_checks=CHECKS)


def test_an_event_whose_credits_were_changed_is_named_with_its_organization(
    client: Any, db: Database, operator: Headers, make_org: Callable[..., str]
) -> None:
    orgs = [make_org("Acme AI"), make_org("Globex")]
    for org in orgs:
        grant(client, operator, org, "100")
    batch = {"events": [event(f"e{i}-{org}", org) for org in orgs for i in range(3)]}
    assert client.post("/v1/usage/batch", json=batch, headers=operator).status_code == 200
    assert _mismatches(db) == []
    with db.write() as s:
        s.execute(
            text("UPDATE usage_events SET credits_micros = credits_micros + 1 WHERE event_id = :e"),
            {"e": f"e1-{orgs[1]}"},
        )
    found = _mismatches(db)
    assert [(m.check, m.organization_id) for m in found] == [("usage-events", orgs[1])]
    assert found[0].subject.startswith("journal transaction txn_")
