"""The reads of usage ingest, one statement per table and batch (never one per event): organizations,
projects and members by id or name, events already recorded under the batch's ids, and the holds the
batch settles."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from creditmeter.metering.models import Hold
from creditmeter.orgs.models import Member, Organization, Project

CHUNK = 500


def organizations(session: Session, refs: set[str]) -> dict[str, str]:
    """Organization ids by the references sent (an id or an external id)."""
    found: dict[str, str] = {}
    refs_list = sorted(r for r in refs if "\x00" not in r)
    for start in range(0, len(refs_list), CHUNK):
        chunk = refs_list[start : start + CHUNK]
        for org_id, external_id in session.execute(
            select(Organization.id, Organization.external_id).where(
                or_(Organization.id.in_(chunk), Organization.external_id.in_(chunk))
            )
        ):
            if external_id in refs:
                found.setdefault(external_id, org_id)
            found[org_id] = org_id
    return found


def named(
    session: Session,
    model: type[Project] | type[Member],
    name_column: Any,
    org_ids: list[str],
    refs: set[str],
) -> dict[tuple[str, str], str]:
    """Projects (by id or name) or members (by id or email) of these organizations, keyed by
    (organization, reference)."""
    refs_list = sorted(r for r in refs if "\x00" not in r)
    found: dict[tuple[str, str], str] = {}
    for start in range(0, len(refs_list), CHUNK):
        chunk = refs_list[start : start + CHUNK]
        for row_id, name, org in session.execute(
            select(model.id, name_column, model.organization_id).where(
                model.organization_id.in_(org_ids),
                or_(model.id.in_(chunk), name_column.in_(chunk)),
            )
        ):
            found[(org, row_id)] = row_id
            found[(org, name)] = row_id
    return found


_EXISTING_COLUMNS = (
    "organization_id, event_id, request_hash, credits_micros, breakdown, rate_card_version"
)
# One probe of the unique index per key, whatever the statistics say: the LIMIT keeps the lateral
# subquery from being flattened into a join, which PostgreSQL without statistics (a new database, or
# autovacuum off) planned as a hash join over every event of the environment, once per batch.
_EXISTING_PG = text(
    "SELECT e.* FROM unnest(CAST(:orgs AS text[]), CAST(:ids AS text[])) AS k(org, id) "  # noqa: S608 - no input in it
    f"CROSS JOIN LATERAL (SELECT {_EXISTING_COLUMNS} FROM usage_events "
    "WHERE organization_id = k.org AND environment = :env AND event_id = k.id LIMIT 1) AS e"
)
_EXISTING_SQLITE: dict[int, str] = {}


def _existing_sqlite(count: int) -> str:
    sql = _EXISTING_SQLITE.get(count)
    if sql is None:
        sql = _EXISTING_SQLITE[count] = (
            f"SELECT {_EXISTING_COLUMNS} FROM usage_events "  # noqa: S608 - no input in it
            f"WHERE organization_id = ? AND environment = ? AND event_id IN ({','.join('?' * count)})"
        )
    return sql


def existing_events(
    session: Session, env: str, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Events already recorded under these (organization, event id) pairs, as ``(organization, event
    id, request hash, credits, breakdown, rate card version)``. Every key is one probe of the unique
    (organization, environment, event id) index, so the cost follows the batch, never the size of
    the table: a join with ``unnest`` on PostgreSQL, one ``event_id IN`` per organization on SQLite
    (both plan an index search; a row-value IN over several organizations would scan)."""
    unique = sorted(set(keys))
    rows: list[Any] = []
    if session.get_bind().dialect.name == "postgresql":
        for start in range(0, len(unique), 5_000):
            chunk = unique[start : start + 5_000]
            rows += session.execute(
                _EXISTING_PG,
                {"orgs": [k[0] for k in chunk], "ids": [k[1] for k in chunk], "env": env},
            ).all()
    else:
        by_org: dict[str, list[str]] = defaultdict(list)
        for org, event_id in unique:
            by_org[org].append(event_id)
        conn = session.connection()
        for org, ids in by_org.items():
            for start in range(0, len(ids), CHUNK):
                part = ids[start : start + CHUNK]
                rows += conn.exec_driver_sql(
                    _existing_sqlite(len(part)), (org, env, *part)
                ).fetchall()
    found: dict[tuple[str, str], tuple[Any, ...]] = {}
    for row in rows:
        org, event_id, request_hash, credits, breakdown, version = row
        if isinstance(breakdown, str | bytes):  # raw SQL returns the JSON text on some drivers
            breakdown = orjson.loads(breakdown)
        found[(org, event_id)] = (org, event_id, request_hash, credits, breakdown, version)
    return found


def holds(session: Session, org_ids: list[str], env: str, ids: set[str]) -> dict[str, Hold]:
    """The holds these events settle, read under the organizations' locks. ``populate_existing``:
    a hold this session loaded before taking the lock (the settle route does) may have been
    released or settled since; its state as of now is what counts, or it would be released twice."""
    if not ids:
        return {}
    return {
        h.id: h
        for h in session.scalars(
            select(Hold)
            .where(
                Hold.id.in_(sorted(ids)),
                Hold.organization_id.in_(org_ids),
                Hold.environment == env,
            )
            .execution_options(populate_existing=True)
        )
    }
