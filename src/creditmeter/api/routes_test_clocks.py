"""Test clocks (operator keys only): create, read, delete, attach and detach an organization,
advance.

An advance runs, for the attached organizations, every cycle close, dunning retry and lot expiry
real time would have run on the way, in time order (``billing.test_clocks``). A detached organization is
billed on real time again; a clock cannot be deleted while organizations are attached."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from creditmeter.api.deps import ADMIN_SCOPES, DB, Caller, authorize_org, require_operator
from creditmeter.api.routes_billing import Plans
from creditmeter.api.routes_payments import Provider
from creditmeter.api.schemas_corrections import (
    OrganizationTestClock,
    TestClockAdvance,
    TestClockAdvanced,
    TestClockAttach,
    TestClockAttached,
    TestClockCreate,
    TestClockDeleted,
    TestClockDetached,
    TestClockOut,
)
from creditmeter.billing import test_clocks
from creditmeter.billing.models import TestClock
from creditmeter.kit import clock
from creditmeter.orgs import service as orgs

router = APIRouter(tags=["test clocks"])


def clock_json(session: Any, row: TestClock) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "frozen_time": row.frozen_time,
        "organizations": test_clocks.organizations_of(session, row.id),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


@router.post("/v1/test-clocks", status_code=201, response_model=TestClockOut)
def create_test_clock(body: TestClockCreate, caller: Caller, db: DB) -> Any:
    """A clock frozen at `frozen_time`, to bill test organizations on."""
    require_operator(caller)
    with db.write() as session:
        row = test_clocks.create(session, body.frozen_time, body.name or "", clock.now())
        return TestClockOut.model_validate(clock_json(session, row)).model_dump(mode="json")


@router.get("/v1/test-clocks/{clock_id}", response_model=TestClockOut)
def get_test_clock(clock_id: str, caller: Caller, db: DB) -> Any:
    require_operator(caller)
    with db.read() as session:
        row = test_clocks.get(session, clock_id)
        return TestClockOut.model_validate(clock_json(session, row)).model_dump(mode="json")


@router.post("/v1/test-clocks/{clock_id}/advance", response_model=TestClockAdvanced)
def advance_test_clock(
    clock_id: str,
    body: TestClockAdvance,
    caller: Caller,
    db: DB,
    catalog: Plans,
    provider: Provider,
) -> Any:
    """Move the clock forward to `to` (422 `clock_backwards` for an earlier time), running for its
    organizations every month boundary passed and every dunning retry on the way, in time order,
    exactly as real time would."""
    require_operator(caller)
    done = test_clocks.advance(db, catalog, clock_id, body.to, now=clock.now(), provider=provider)
    with db.read() as session:
        out = clock_json(session, test_clocks.get(session, clock_id))
    out["boundaries"] = done.boundaries
    out["closes"] = [
        {
            "organization_id": r.due.organization_id,
            "environment": r.due.environment,
            "period": r.due.period.label,
            "steps_run": r.steps_run,
            "invoice_number": r.invoice_number,
            "error": r.error,
        }
        for r in done.closes
    ]
    return TestClockAdvanced.model_validate(out).model_dump(mode="json")


@router.post("/v1/organizations/{org_id}/test-clock", response_model=TestClockAttached)
def attach_test_clock(org_id: str, body: TestClockAttach, caller: Caller, db: DB) -> Any:
    """Bill the organization on a test clock from now on (409 `live_subscription` for an
    organization with a live subscription)."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    require_operator(caller)
    with db.write() as session:
        row = test_clocks.attach(session, org_id, body.test_clock, clock.now())
        out = {"organization_id": org_id, "test_clock": row.id, "frozen_time": row.frozen_time}
    test_clocks.invalidate()  # after the commit too: no reload may cache the state before it
    return out


@router.get("/v1/organizations/{org_id}/test-clock", response_model=OrganizationTestClock)
def get_organization_test_clock(org_id: str, caller: Caller, db: DB) -> Any:
    """The clock the organization is billed on and its time (its "now"), or nulls: real time."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    require_operator(caller)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        found = test_clocks.attachment_of(session, org_id)
    row, attached_at = found if found else (None, None)
    return {
        "organization_id": org_id,
        "test_clock": row.id if row else None,
        "frozen_time": row.frozen_time if row else None,
        "attached_at": attached_at,
    }


@router.delete("/v1/organizations/{org_id}/test-clock", response_model=TestClockDetached)
def detach_test_clock(org_id: str, caller: Caller, db: DB) -> Any:
    """Bill the organization on real time again (404 `test_clock_not_attached` when it is on no
    clock). The periods the clock already closed stay closed: real time never closes them twice."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    require_operator(caller)
    with db.write() as session:
        done = test_clocks.detach(session, org_id)
    test_clocks.invalidate()
    return {
        "organization_id": org_id,
        "test_clock": None,
        "detached_from": done.clock.id,
        "frozen_time": done.clock.frozen_time,
        "ahead_of_real_time": done.clock.frozen_time > clock.now(),
    }


@router.delete("/v1/test-clocks/{clock_id}", response_model=TestClockDeleted)
def delete_test_clock(clock_id: str, caller: Caller, db: DB) -> Any:
    """Delete a clock (409 `test_clock_in_use` while organizations are attached: detach them
    first)."""
    require_operator(caller)
    with db.write() as session:
        row = test_clocks.delete(session, clock_id)
    return {"id": row.id, "deleted": True}
