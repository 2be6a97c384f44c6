"""Grants (lots), balances and the journal of one organization."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from creditmeter.api.deps import (
    ADMIN_SCOPES,
    BALANCE_SCOPES,
    DB,
    READ_SCOPES,
    Caller,
    authorize_org,
    environment_for,
    get_settings,
    require_operator,
)
from creditmeter.api.schemas import (
    BalanceOut,
    GrantCreate,
    JournalTransactionOut,
    LotOut,
    Page,
    ReverseRequest,
)
from creditmeter.config import Settings
from creditmeter.errors import NotFound
from creditmeter.kit import clock
from creditmeter.kit import idempotency as idem
from creditmeter.kit.credits import format_credits
from creditmeter.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import JournalTransaction, Lot
from creditmeter.ledger.models import Posting as PostingRow
from creditmeter.orgs import service as orgs

router = APIRouter(prefix="/v1/organizations", tags=["credits"])

Env = Annotated[
    Literal["live", "test"] | None,
    Query(description="Operator keys only: the environment to act on (default: the key's)."),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=200)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Retries with the same key return the first result."),
]


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
    key = idem.check_key(idempotency_key) if idempotency_key is not None else None
    fingerprint = idem.request_fingerprint({"environment": env, **body.model_dump(mode="json")})
    scope = f"grants:{org_id}"
    now = clock.now()
    try:
        with db.write() as session:
            orgs.get_organization(session, org_id)
            if key is not None and (stored := idem.lookup(session, scope, key, fingerprint)):
                return JSONResponse(stored.body, status_code=stored.status_code)
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
            lot_id = ledger.grant(session, org_id, env, request, now)
            lot = session.get(Lot, lot_id)
            assert lot is not None
            out = LotOut.model_validate(lot_out(lot)).model_dump(mode="json")
            if key is not None:
                idem.store(session, scope, key, fingerprint, 201, out, now)
            return JSONResponse(out, status_code=201)
    except IntegrityError:
        if key is None:
            raise
        with db.read() as session:
            stored = idem.lookup(session, scope, key, fingerprint)
        if stored is None:
            raise
        return JSONResponse(stored.body, status_code=stored.status_code)


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
    after = decode_cursor(cursor)
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
    return {
        "data": [lot_out(lot) for lot in rows[:limit]],
        "has_more": more,
        "next_cursor": encode_cursor(rows[limit - 1].id) if more else None,
    }


@router.get("/{org_id}/balance", response_model=BalanceOut)
def get_balance(org_id: str, caller: Caller, db: DB, environment: Env = None) -> object:
    """Available credits (usable lots − arrears − held), arrears, held, whether the organization is
    paused (available ≤ 0), and its lots in the order they will pay."""
    authorize_org(caller, org_id, BALANCE_SCOPES)
    env = environment_for(caller, environment)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        view = ledger.get_balance(session, org_id, env, clock.now())
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
    before = decode_cursor(cursor)
    with db.read() as session:
        orgs.get_organization(session, org_id)
        query = (
            select(JournalTransaction)
            .where(JournalTransaction.organization_id == org_id,
                   JournalTransaction.environment == env)
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
                select(PostingRow.transaction_id, PostingRow.account, PostingRow.lot_id,
                       PostingRow.amount_micros)
                .where(PostingRow.transaction_id.in_([t.id for t in page]))
                .order_by(PostingRow.id)
            ):
                postings[p.transaction_id].append(
                    {"account": p.account, "lot_id": p.lot_id,
                     "credits": format_credits(p.amount_micros)}
                )
    more = len(txns) > limit
    return {
        "data": [
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
        ],
        "has_more": more,
        "next_cursor": encode_cursor(_txn_ref(page[-1].id)) if more else None,
    }


@router.post(
    "/{org_id}/ledger/{transaction_id}/reverse",
    status_code=201,
    response_model=JournalTransactionOut,
)
def reverse_transaction(
    org_id: str, transaction_id: str, body: ReverseRequest, caller: Caller, db: DB
) -> object:
    """Reverse a journal transaction with a new one that negates it (operator keys only). Credits
    returning to a lot that has expired go to a new adjustment lot. Each transaction reverses once."""
    authorize_org(caller, org_id, ADMIN_SCOPES)
    require_operator(caller)
    txn_id = _parse_txn_ref(transaction_id)
    with db.write() as session:
        new_id = ledger.reverse(session, org_id, txn_id, body.reason, clock.now())
        txn = session.get(JournalTransaction, new_id)
        assert txn is not None
        rows = ledger.transaction_postings(session, new_id)
    return {
        "id": _txn_ref(new_id),
        "kind": txn.kind,
        "description": txn.description,
        "environment": txn.environment,
        "reverses": _txn_ref(txn_id),
        "created_at": txn.created_at,
        "postings": [
            {"account": p.account, "lot_id": p.lot_id, "credits": format_credits(p.amount_micros)}
            for p in rows
        ],
    }
