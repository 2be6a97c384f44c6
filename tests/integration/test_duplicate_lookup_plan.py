"""The duplicate-id lookup of usage ingest reads one index entry per id, whatever the statistics say.

Story: a new database's ``usage_events`` is analyzed while it holds one event per organization; then
one busy organization sends tens of thousands of events before the statistics are taken again. With the
occurred-at index usable for the lookup, PostgreSQL estimated one row per organization for both indexes
and read the busy organization's whole history once per id, inside its lock (ingest slowed to ~170
events/s). The lookup must plan on the unique ``(organization, environment, event id)`` index, and
still find exactly the recorded ids.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from creditmeter.kit.db import Database
from creditmeter.metering import lookups
from creditmeter.orgs import service as orgs
from tests.conftest import utc

NOW = utc(2026, 3, 10, 12)
UNIQUE = "uq_usage_events_organization_id_environment_event_id"
BY_TIME = "ix_usage_events_org_env_occurred"
BUSY_EVENTS = 20_000

_INSERT = text(
    "INSERT INTO usage_events (organization_id, environment, event_id, operation, quantities, "
    "cache_hit, occurred_at, received_at, credits_micros, breakdown, rate_card_version, "
    "request_hash, allocation) VALUES (:org, 'live', :id, 'inference', '{}', false, :at, :at, 1, "
    "'[]', 'v1', 'h', '{}')"
)


def _history(db: Database, analyze: bool = True) -> tuple[str, list[str]]:
    """Eight organizations with one event each, statistics taken (unless not ``analyze``: a server
    with autovacuum off), then BUSY_EVENTS more for the first; returns (the busy organization, every
    organization)."""
    with db.write() as session:
        ids = [orgs.create_organization(session, f"org {i}", None, NOW).id for i in range(8)]
    with db.write() as session:
        session.execute(_INSERT, [{"org": org, "id": f"first-{org}", "at": NOW} for org in ids])
    if analyze:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE usage_events"))
    with db.write() as session:
        session.execute(
            _INSERT,
            [
                {"org": ids[0], "id": f"busy-{i}", "at": NOW - timedelta(seconds=i)}
                for i in range(BUSY_EVENTS)
            ],
        )
    return ids[0], ids


def _plan(db: Database, busy: str, ids: list[str]) -> str:
    with db.read() as session:
        if db.dialect == "postgresql":
            rows = session.execute(
                text(f"EXPLAIN {lookups._EXISTING_PG.text}"),
                {"orgs": [busy] * len(ids), "ids": ids, "env": "live"},
            ).all()
            return "\n".join(r[0] for r in rows)
        sql = lookups._existing_sqlite(len(ids))
        rows = (
            session.connection()
            .exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", (busy, "live", *ids))
            .all()
        )
        return "\n".join(str(r[-1]) for r in rows)


def test_the_busy_organizations_lookup_plans_on_the_unique_index(db: Database) -> None:
    busy, _ = _history(db)
    wanted = [f"new-{i}" for i in range(50)] + ["busy-7", "busy-19999"]
    plan = _plan(db, busy, wanted)
    assert UNIQUE in plan or "sqlite_autoindex_usage_events" in plan, plan
    assert BY_TIME not in plan, plan


def test_without_statistics_each_id_is_one_probe_of_the_unique_index(db: Database) -> None:
    """No ANALYZE ever ran (autovacuum off): a batch of 5,000 ids must still probe the unique index
    once per id, never hash every event of the environment."""
    busy, _ = _history(db, analyze=False)
    plan = _plan(db, busy, [f"new-{i}" for i in range(5_000)])
    assert UNIQUE in plan or "sqlite_autoindex_usage_events" in plan, plan
    assert BY_TIME not in plan, plan
    assert "Hash" not in plan, plan
    assert "Seq Scan on usage_events" not in plan, plan


def test_the_lookup_finds_exactly_the_recorded_ids(db: Database) -> None:
    busy, everyone = _history(db)
    keys = [(busy, "busy-7"), (busy, "busy-19999"), (busy, "new-1"), (everyone[3], "busy-7")]
    keys += [(org, f"first-{org}") for org in everyone[1:3]]
    with db.read() as session:
        found = lookups.existing_events(session, "live", keys)
    assert set(found) == {
        (busy, "busy-7"),
        (busy, "busy-19999"),
        (everyone[1], f"first-{everyone[1]}"),
        (everyone[2], f"first-{everyone[2]}"),
    }
