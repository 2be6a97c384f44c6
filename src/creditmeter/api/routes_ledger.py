"""Grants (lots), balances and the journal of one organization."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.api.deps import (
    ADMIN_SCOPES,
    BALANCE_SCOPES,
    DB,
    READ_SCOPES,
    Caller,
    Cursor,
    Env,
    IdempotencyKey,
    Limit,
    authorize_org,
    environment_for,
    get_settings,
    require_operator,
)
from creditmeter.api.idempotent import run_once
from creditmeter.api.schemas import (
    BalanceOut,
    GrantCreate,
    JournalTransactionOut,
    LotOut,
    Page,
    ReverseRequest,
)
from creditmeter.billing import credit_notes, notices, org_time
from creditmeter.config import Settings
from creditmeter.errors import InvalidRequest, NotFound
from creditmeter.kit.credits import format_credits
from creditmeter.kit.pagination import (
    DEFAULT_LIMIT,
    decode_cursor,
    invalid_cursor,
    page_of,
)
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.models import JournalTransaction, Lot
from creditmeter.ledger.models import Posting as PostingRow
from creditmeter.metering import gate
from creditmeter.orgs import service as orgs

router = APIRouter(prefix="/v1/organizations", tags=["credits"])


def lot_out(lot: Lot) -> dict[str, object]:
    return {
        "id": lot.id,
        "source": lot.source,
        "credits": format_credits(lot.amount_micros),
        "remaining": format_credits(lot.remaining_micros),
        "effective_at": lot.effective_at,
        "expires_at": lot.expires_at,
        "priority": lot.priority,
        "cost_basis": format_credits(lot.cost_basis_micros),
        "currency": lot.currency,
        "reason": lot.reason,
        "created_at": lot.created_at,
    }


def _check_grant(body: GrantCreate, now: datetime) -> None:
    """Rules across fields, answered with field-level errors before anything is written (the ledger
    checks them again)."""
    errors: list[dict[str, Any]] = []
    if body.source == LotSource.PROMO and body.cost_basis:
        errors.append(
            {
                "field": "cost_basis",
                "type": "invalid_cost_basis",
                "message": "promotional credits have a cost basis of zero; omit cost_basis",
            }
        )
    effective_at = body.effective_at or now
    if body.expires_at is not None and body.expires_at <= effective_at:
        errors.append(
            {
                "field": "expires_at",
                "type": "invalid_expiry",
                "message": "expires_at must be later than effective_at (default: now); "
                "send a later time, or omit it for credits that never expire",
            }
        )
    if errors:
        code = errors[0]["type"] if len(errors) == 1 else "validation_failed"
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidRequest(detail, code=code, errors=errors)


@router.post("/{org_id}/grants", status_code=201, response_model=LotOut)
def create_grant(
    org_id: str,
    body: GrantCreate,
    caller: Caller,
    db: DB,
    settings: Annotated[Settings, Depends(get_settings)],
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> object:
    """Grant credits as a new lot. Operator keys only (see docs/api.md, "Who may grant").

    Outstanding arrears are paid from the new credits first. With an `Idempotency-Key`, a retry with
    the same body returns the first result; the same key with a different body is a 409."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    require_operator(caller)
    env = environment_for(caller, environment)
    with db.read() as session:  # a clocked organization is granted at its clock's time
        now = org_time.now_for(session, org_id)
    _check_grant(body, now)

    def create(session: Session) -> dict[str, Any]:
        orgs.get_organization(session, org_id)
        request = ledger.GrantRequest(
            amount_micros=body.credits,
            source=body.source,
            reason=body.reason,
            effective_at=body.effective_at or now,
            expires_at=body.expires_at,
            priority=body.priority,
            cost_basis_micros=body.cost_basis or 0,
            currency=settings.currency,
        )
        lot = session.get(Lot, ledger.grant(session, org_id, env, request, now))
        assert lot is not None
        notices.granted(session, [(org_id, env, lot.id, request)], now)
        return LotOut.model_validate(lot_out(lot)).model_dump(mode="json")

    return run_once(
        db,
        f"grants:{org_id}",
        idempotency_key,
        {"environment": env, **body.model_dump(mode="json")},
        create,
    )


@router.get("/{org_id}/grants", response_model=Page[LotOut])
def list_grants(
    org_id: str,
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    environment: Env = None,
) -> object:
    """Every lot of the organization, oldest first, including spent and expired ones."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    after = decode_cursor(cursor, "lot_")
    with db.read() as session:
        orgs.get_organization(session, org_id)
        query = (
            select(Lot)
            .where(Lot.organization_id == org_id, Lot.environment == env)
            .order_by(Lot.id)
            .limit(limit + 1)
        )
        if after:
            query = query.where(Lot.id > after)
        rows = list(session.scalars(query))
    more = len(rows) > limit
    return page_of([lot_out(lot) for lot in rows[:limit]], rows[limit - 1].id if more else None)


@router.get("/{org_id}/balance", response_model=BalanceOut)
def get_balance(org_id: str, caller: Caller, db: DB, environment: Env = None) -> object:
    """Available credits (usable lots - arrears - held), arrears, held, whether the organization is
    paused (available ≤ 0), and its lots in the order they will pay."""
    authorize_org(caller, org_id, BALANCE_SCOPES)
    env = environment_for(caller, environment)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        now = org_time.now_for(session, org_id)  # a clocked organization's: its clock's time
        view = ledger.get_balance(session, org_id, env, now)
        # A hold whose time is up stops counting at once, before the worker releases it.
        lapsed = gate.lapsed_hold_micros(session, org_id, env, now)
        if lapsed:
            view = replace(
                view,
                available_micros=view.available_micros + lapsed,
                held_micros=view.held_micros - lapsed,
            )
    return {
        "organization_id": org_id,
        "environment": env,
        "available": format_credits(view.available_micros),
        "arrears": format_credits(view.arrears_micros),
        "held": format_credits(view.held_micros),
        "paused": view.paused,
        "lots": [
            {
                "id": lot.id,
                "source": lot.source,
                "remaining": format_credits(lot.remaining_micros),
                "effective_at": lot.effective_at,
                "expires_at": lot.expires_at,
                "priority": lot.priority,
            }
            for lot in view.lots
        ],
    }


_TXN_REF = re.compile(r"txn_[0-9]{1,18}")


def _txn_ref(txn_id: int) -> str:
    return f"txn_{txn_id}"


def _parse_txn_ref(ref: str) -> int:
    digits = ref.removeprefix("txn_")
    if not digits.isdigit() or len(digits) > 18:
        raise NotFound(f"journal transaction {ref} not found")
    return int(digits)


@router.get("/{org_id}/ledger", response_model=Page[JournalTransactionOut])
def list_ledger(
    org_id: str,
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    environment: Env = None,
) -> object:
    """Journal transactions with their postings, newest first. Postings of each transaction sum to
    zero; positive amounts add to an account."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    before = decode_cursor(cursor, "txn_")
    if before and not _TXN_REF.fullmatch(before):
        raise invalid_cursor()
    with db.read() as session:
        orgs.get_organization(session, org_id)
        query = (
            select(JournalTransaction)
            .where(
                JournalTransaction.organization_id == org_id, JournalTransaction.environment == env
            )
            .order_by(JournalTransaction.id.desc())
            .limit(limit + 1)
        )
        if before:
            query = query.where(JournalTransaction.id < _parse_txn_ref(before))
        txns = list(session.scalars(query))
        page = txns[:limit]
        postings: dict[int, list[dict[str, object]]] = defaultdict(list)
        if page:
            for p in session.execute(
                select(
                    PostingRow.transaction_id,
                    PostingRow.account,
                    PostingRow.lot_id,
                    PostingRow.amount_micros,
                )
                .where(PostingRow.transaction_id.in_([t.id for t in page]))
                .order_by(PostingRow.id)
            ):
                postings[p.transaction_id].append(
                    {
                        "account": p.account,
                        "lot_id": p.lot_id,
                        "credits": format_credits(p.amount_micros),
                    }
                )
    more = len(txns) > limit
    data = [
        {
            "id": _txn_ref(t.id),
            "kind": t.kind,
            "description": t.description,
            "environment": t.environment,
            "reverses": _txn_ref(t.reverses_id) if t.reverses_id else None,
            "created_at": t.created_at,
            "postings": postings[t.id],
        }
        for t in page
    ]
    return page_of(data, _txn_ref(page[-1].id) if more else None)


@router.post(
    "/{org_id}/ledger/{transaction_id}/reverse",
    status_code=201,
    response_model=JournalTransactionOut,
)
def reverse_transaction(
    org_id: str,
    transaction_id: str,
    body: ReverseRequest,
    caller: Caller,
    db: DB,
    settings: Annotated[Settings, Depends(get_settings)],
    idempotency_key: IdempotencyKey = None,
) -> object:
    """Reverse a journal transaction with a new one that negates it (operator keys only). Credits
    returning to a lot that has expired go to a new adjustment lot. Each transaction reverses once;
    with an `Idempotency-Key`, a retry returns the first reversal instead of a 409."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    require_operator(caller)

    def create(session: Session) -> dict[str, Any]:
        orgs.get_organization(session, org_id)
        txn_id = _parse_txn_ref(transaction_id)
        now = org_time.now_for(session, org_id)  # a clocked organization: its clock's time
        new_id = ledger.reverse(
            session, org_id, txn_id, body.reason, now, currency=settings.currency
        )
        credit_notes.for_ledger_reversal(session, org_id, new_id, now)
        txn = session.get(JournalTransaction, new_id)
        assert txn is not None
        out = {
            "id": _txn_ref(new_id),
            "kind": txn.kind,
            "description": txn.description,
            "environment": txn.environment,
            "reverses": _txn_ref(txn_id),
            "created_at": txn.created_at,
            "postings": [
                {
                    "account": p.account,
                    "lot_id": p.lot_id,
                    "credits": format_credits(p.amount_micros),
                }
                for p in ledger.transaction_postings(session, new_id)
            ],
        }
        return JournalTransactionOut.model_validate(out).model_dump(mode="json")

    return run_once(
        db,
        f"reversals:{org_id}",
        idempotency_key,
        {"transaction": transaction_id, **body.model_dump(mode="json")},
        create,
    )
