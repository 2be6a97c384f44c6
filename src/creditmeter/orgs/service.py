"""Organization services: tenants, projects, members and API keys. They never commit."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from creditmeter.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from creditmeter.kit.db import driver_timestamp, fetch_one
from creditmeter.kit.ids import new_id
from creditmeter.kit.pagination import decode_cursor
from creditmeter.ledger import service as ledger
from creditmeter.orgs.models import ApiKey, Member, Organization, Project


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


class Scope(StrEnum):
    OPERATOR = "operator"
    ORG_ADMIN = "org:admin"
    ORG_INGEST = "org:ingest"
    ORG_READ = "org:read"


class Environment(StrEnum):
    LIVE = "live"
    TEST = "test"


ORG_SCOPES = frozenset({Scope.ORG_ADMIN, Scope.ORG_INGEST, Scope.ORG_READ})
KEY_PREFIX_LENGTH = 12
#: The width of the id columns (``String(40)``).
ID_MAX_LENGTH = 40


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's identity, scopes and environment."""

    key_id: str
    organization_id: str | None
    scopes: frozenset[str]
    environment: str

    @property
    def is_operator(self) -> bool:
        return Scope.OPERATOR in self.scopes


def _savepoint_insert(session: Session, statement: object, conflict_detail: str, code: str) -> None:
    try:
        with session.begin_nested():
            session.execute(statement)  # type: ignore[call-overload]
    except IntegrityError as exc:
        raise Conflict(conflict_detail, code=code) from exc


def create_organization(
    session: Session, name: str, external_id: str | None, now: datetime
) -> Organization:
    org_id = new_id("org")
    _savepoint_insert(
        session,
        insert(Organization).values(
            id=org_id, name=name, external_id=external_id, status="active", created_at=now
        ),
        f"an organization with external_id {external_id!r} already exists",
        "external_id_taken",
    )
    ledger.create_balances(session, org_id, now)
    return get_organization(session, org_id)


def _storable_id(value: str) -> bool:
    """Whether ``value`` could be a stored id. Anything else (too long for the column, or carrying a NUL
    that PostgreSQL refuses in text) is simply not found, never a database error."""
    return 0 < len(value) <= ID_MAX_LENGTH and "\x00" not in value


def get_organization(session: Session, org_id: str) -> Organization:
    org = session.get(Organization, org_id) if _storable_id(org_id) else None
    if org is None:
        raise NotFound(f"organization {org_id} not found")
    return org


#: An organization's status: ``active``, or ``suspended`` (billing suspended it: the gate refuses
#: every operation with ``organization_suspended`` until it is active again).
ACTIVE, SUSPENDED = "active", "suspended"
STATUSES = (ACTIVE, SUSPENDED)


def lock_organization(session: Session, org_id: str) -> Organization:
    """The organization's row, locked until the caller's transaction ends (serializes changes of
    its status). 404 when it does not exist."""
    org = session.scalars(
        select(Organization).where(Organization.id == org_id).with_for_update()
    ).first()
    if org is None:
        raise NotFound(f"organization {org_id} not found")
    return org


def set_status(session: Session, org_id: str, status: str) -> bool:
    """Set the organization's status (``active`` or ``suspended``); returns whether it changed.
    The gate reads the row itself, so the change is in force when the caller commits."""
    if status not in STATUSES:
        raise ValueError(f"unknown organization status {status!r}")
    org = lock_organization(session, org_id)
    if org.status == status:
        return False
    org.status = status
    session.flush()
    return True


def resolve_organization(session: Session, ref: str) -> Organization:
    """Find an organization by its id or its external id."""
    if "\x00" in ref:
        raise NotFound("organization not found")
    org = session.get(Organization, ref) if _storable_id(ref) else None
    if org is None:
        org = session.scalars(select(Organization).where(Organization.external_id == ref)).first()
    if org is None:
        raise NotFound(f"organization {ref} not found")
    return org


_Listed = TypeVar("_Listed", Organization, Project, Member, ApiKey)


def _page(
    session: Session,
    model: type[_Listed],
    prefix: str,
    cursor: str | None,
    limit: int,
    *filters: ColumnElement[bool],
) -> tuple[list[_Listed], str | None]:
    """One page of rows in id order after ``cursor``, and the id to continue after (or None)."""
    query = select(model).where(*filters).order_by(model.id).limit(limit + 1)
    after = decode_cursor(cursor, prefix)
    if after:
        query = query.where(model.id > after)
    rows = list(session.scalars(query))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def list_organizations(
    session: Session, cursor: str | None, limit: int, only: str | None = None
) -> tuple[list[Organization], str | None]:
    filters = [] if only is None else [Organization.id == only]
    return _page(session, Organization, "org_", cursor, limit, *filters)


def create_project(session: Session, org_id: str, name: str, now: datetime) -> Project:
    project_id = new_id("proj")
    _savepoint_insert(
        session,
        insert(Project).values(id=project_id, organization_id=org_id, name=name, created_at=now),
        f"a project named {name!r} already exists in this organization",
        "project_exists",
    )
    project = session.get(Project, project_id)
    assert project is not None
    return project


def list_projects(
    session: Session, org_id: str, cursor: str | None, limit: int
) -> tuple[list[Project], str | None]:
    return _page(session, Project, "proj_", cursor, limit, Project.organization_id == org_id)


def add_member(session: Session, org_id: str, email: str, role: Role, now: datetime) -> Member:
    member_id = new_id("mem")
    normalized = email.strip().lower()
    _savepoint_insert(
        session,
        insert(Member).values(
            id=member_id, organization_id=org_id, email=normalized, role=role.value, created_at=now
        ),
        f"{normalized} is already a member of this organization",
        "member_exists",
    )
    member = session.get(Member, member_id)
    assert member is not None
    return member


def list_members(
    session: Session, org_id: str, cursor: str | None, limit: int
) -> tuple[list[Member], str | None]:
    return _page(session, Member, "mem_", cursor, limit, Member.organization_id == org_id)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    session: Session,
    org_id: str | None,
    name: str,
    scopes: list[Scope],
    environment: Environment,
    now: datetime,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never stored and never shown again."""
    if not scopes:
        raise InvalidRequest("give the key at least one scope", code="invalid_scopes")
    if org_id is None and set(scopes) != {Scope.OPERATOR}:
        raise InvalidRequest(
            "an operator key has exactly the scope 'operator'", code="invalid_scopes"
        )
    if org_id is not None and Scope.OPERATOR in scopes:
        raise InvalidRequest(
            "an organization key cannot have the operator scope; "
            "use org:admin, org:ingest or org:read",
            code="invalid_scopes",
        )
    secret = f"cm_{environment.value}_{secrets.token_urlsafe(32)}"
    key_id = new_id("key")
    session.execute(
        insert(ApiKey).values(
            id=key_id,
            organization_id=org_id,
            name=name,
            prefix=secret[:KEY_PREFIX_LENGTH],
            key_hash=hash_key(secret),
            scopes=sorted({s.value for s in scopes}),
            environment=environment.value,
            created_at=now,
        )
    )
    key = session.get(ApiKey, key_id)
    assert key is not None
    return key, secret


def list_api_keys(
    session: Session, org_id: str, cursor: str | None, limit: int
) -> tuple[list[ApiKey], str | None]:
    return _page(session, ApiKey, "key_", cursor, limit, ApiKey.organization_id == org_id)


def revoke_api_key(session: Session, org_id: str | None, key_id: str, now: datetime) -> ApiKey:
    """Revoke a key (idempotent: revoking twice keeps the first revocation time)."""
    if not _storable_id(key_id):
        raise NotFound(f"API key {key_id} not found")
    query = select(ApiKey).where(ApiKey.id == key_id)
    query = query.where(
        ApiKey.organization_id.is_(None) if org_id is None else ApiKey.organization_id == org_id
    )
    key = session.scalars(query).first()
    if key is None:
        raise NotFound(f"API key {key_id} not found")
    if key.revoked_at is None:
        key.revoked_at = now
        session.flush()
    return key


#: The columns of an API key that authentication needs, for a statement over ``api_keys`` aliased
#: ``k``: id, organization, scopes, environment, revoked?, last use due to be recorded?
KEY_COLUMNS = """k.id, k.organization_id, k.scopes, k.environment,
       CASE WHEN k.revoked_at IS NULL THEN 0 ELSE 1 END,
       CASE WHEN k.last_used_at IS NULL OR k.last_used_at <= :touch_before THEN 1 ELSE 0 END"""
_KEY_SQL = f"SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.key_hash = :key_hash"  # noqa: S608


def key_params(engine: Engine, secret: str, now: datetime, touch_interval: float) -> dict[str, Any]:
    """The parameters of :data:`KEY_COLUMNS` and the key lookup."""
    touch_before = now - timedelta(seconds=touch_interval)
    return {
        "key_hash": hash_key(secret),
        "touch_before": driver_timestamp(engine.dialect.name, touch_before),
    }


def principal_of(row: Sequence[Any] | None) -> tuple[Principal, bool]:
    """The principal behind the :data:`KEY_COLUMNS` of a row, and whether its last use is due to be
    recorded; 401 for no row or a revoked key."""
    if row is None or row[4]:
        raise Unauthorized(
            "the API key is unknown or revoked; send 'Authorization: Bearer cm_live_…'. A key "
            "made with `creditmeter api-key create` exists only in the database that command used "
            "(it prints which): give the CLI this server's CREDITMETER_DATABASE_URL",
            code="invalid_api_key",
        )
    scopes = json.loads(row[2]) if isinstance(row[2], str) else row[2]
    return Principal(row[0], row[1], frozenset(scopes), row[3]), bool(row[5])


def authenticate(
    engine: Engine, secret: str, now: datetime, touch_interval_seconds: float
) -> tuple[Principal, bool]:
    """The principal behind a bearer secret, and whether its last-use time is due to be recorded
    (at most once per touch interval, so the hot path stays read-only). One statement on a pooled
    driver connection: this runs for every request."""
    params = key_params(engine, secret, now, touch_interval_seconds)
    return principal_of(fetch_one(engine, _KEY_SQL, params))


def touch_api_key(session: Session, key_id: str, now: datetime) -> None:
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
