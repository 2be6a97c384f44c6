"""Organizations, projects, members and API keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.orm import Session

from creditmeter.api.deps import (
    ADMIN_SCOPES,
    BALANCE_SCOPES,
    DB,
    READ_SCOPES,
    Caller,
    Cursor,
    IdempotencyKey,
    Limit,
    authorize_org,
    environment_for,
    require_operator,
)
from creditmeter.api.idempotent import run_once
from creditmeter.api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    MemberCreate,
    MemberOut,
    OrganizationCreate,
    OrganizationOut,
    Page,
    ProjectCreate,
    ProjectOut,
)
from creditmeter.kit import clock
from creditmeter.kit.pagination import DEFAULT_LIMIT, page_of
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Environment

router = APIRouter(prefix="/v1/organizations", tags=["organizations"])


def _dump(model: type[BaseModel], obj: object) -> dict[str, Any]:
    return model.model_validate(obj, from_attributes=True).model_dump(mode="json")


@router.post("", status_code=201, response_model=OrganizationOut)
def create_organization(
    body: OrganizationCreate, caller: Caller, db: DB, idempotency_key: IdempotencyKey = None
) -> object:
    """Create an organization (operator keys only). Its live and test balances start at zero."""
    require_operator(caller)

    def create(session: Session) -> dict[str, Any]:
        org = orgs.create_organization(session, body.name, body.external_id, clock.now())
        return _dump(OrganizationOut, org)

    return run_once(db, "organizations", idempotency_key, body.model_dump(mode="json"), create)


@router.get("", response_model=Page[OrganizationOut])
def list_organizations(
    caller: Caller, db: DB, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> object:
    """Every organization for an operator key; an organization key sees only its own."""
    only = None if caller.is_operator else caller.organization_id
    with db.read() as session:
        rows, next_id = orgs.list_organizations(session, cursor, limit, only)
        return page_of(list(rows), next_id)


@router.get("/{org_id}", response_model=OrganizationOut)
def get_organization(org_id: str, caller: Caller, db: DB) -> object:
    authorize_org(caller, org_id, BALANCE_SCOPES)
    with db.read() as session:
        return orgs.get_organization(session, org_id)


@router.post("/{org_id}/projects", status_code=201, response_model=ProjectOut)
def create_project(
    org_id: str,
    body: ProjectCreate,
    caller: Caller,
    db: DB,
    idempotency_key: IdempotencyKey = None,
) -> object:
    authorize_org(caller, org_id, ADMIN_SCOPES)

    def create(session: Session) -> dict[str, Any]:
        orgs.get_organization(session, org_id)
        return _dump(ProjectOut, orgs.create_project(session, org_id, body.name, clock.now()))

    return run_once(db, f"projects:{org_id}", idempotency_key, body.model_dump(mode="json"), create)


@router.get("/{org_id}/projects", response_model=Page[ProjectOut])
def list_projects(
    org_id: str, caller: Caller, db: DB, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> object:
    authorize_org(caller, org_id, READ_SCOPES)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        rows, next_id = orgs.list_projects(session, org_id, cursor, limit)
        return page_of(list(rows), next_id)


@router.post("/{org_id}/members", status_code=201, response_model=MemberOut)
def add_member(
    org_id: str,
    body: MemberCreate,
    caller: Caller,
    db: DB,
    idempotency_key: IdempotencyKey = None,
) -> object:
    authorize_org(caller, org_id, ADMIN_SCOPES)

    def create(session: Session) -> dict[str, Any]:
        orgs.get_organization(session, org_id)
        member = orgs.add_member(session, org_id, body.email, body.role, clock.now())
        return _dump(MemberOut, member)

    return run_once(db, f"members:{org_id}", idempotency_key, body.model_dump(mode="json"), create)


@router.get("/{org_id}/members", response_model=Page[MemberOut])
def list_members(
    org_id: str, caller: Caller, db: DB, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> object:
    authorize_org(caller, org_id, READ_SCOPES)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        rows, next_id = orgs.list_members(session, org_id, cursor, limit)
        return page_of(list(rows), next_id)


@router.post("/{org_id}/api-keys", status_code=201, response_model=ApiKeyCreated)
def create_api_key(org_id: str, body: ApiKeyCreate, caller: Caller, db: DB) -> object:
    """Create an organization key. The secret is in this response only; it is stored as a hash.

    `Idempotency-Key` is not honoured here: a replay would have to return the secret again, and the
    secret is never stored. Each request makes a new key; revoke any you do not use."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    environment = Environment(environment_for(caller, body.environment.value))
    with db.write() as session:
        orgs.get_organization(session, org_id)
        key, secret = orgs.create_api_key(
            session, org_id, body.name, body.scopes, environment, clock.now()
        )
        out = ApiKeyOut.model_validate(key, from_attributes=True).model_dump()
        return {**out, "key": secret}


@router.get("/{org_id}/api-keys", response_model=Page[ApiKeyOut])
def list_api_keys(
    org_id: str, caller: Caller, db: DB, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> object:
    authorize_org(caller, org_id, ADMIN_SCOPES)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        rows, next_id = orgs.list_api_keys(session, org_id, cursor, limit)
        return page_of(list(rows), next_id)


@router.delete("/{org_id}/api-keys/{key_id}", response_model=ApiKeyOut)
def revoke_api_key(org_id: str, key_id: str, caller: Caller, db: DB) -> object:
    """Revoke a key at once; requests with it get 401 from now on. Revoking twice is harmless."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    with db.write() as session:
        orgs.get_organization(session, org_id)
        return orgs.revoke_api_key(session, org_id, key_id, clock.now())
