"""Credit notes: an organization's list (and, in ``routes_invoices``, the notes of one invoice).

An operator key reads every organization's; an org:admin or org:read key its own, in its own
environment."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from creditmeter.api.deps import (
    DB,
    READ_SCOPES,
    Caller,
    Cursor,
    Limit,
    authorize_org,
    environment_for,
)
from creditmeter.api.routes_billing import Env
from creditmeter.api.schemas_corrections import CreditNoteOut, CreditNotePage
from creditmeter.billing import credit_notes
from creditmeter.billing.models import CreditNote, Invoice
from creditmeter.kit.credits import format_credits
from creditmeter.kit.pagination import DEFAULT_LIMIT, encode_cursor

router = APIRouter(tags=["invoices"])


def credit_note_json(note: CreditNote, invoice_number: str) -> dict[str, Any]:
    body = {
        "id": note.id,
        "number": note.number,
        "organization_id": note.organization_id,
        "environment": note.environment,
        "invoice_id": note.invoice_id,
        "invoice_number": invoice_number,
        "source": note.source,
        "reference": note.reference,
        "reason": note.reason,
        "credits": format_credits(note.credits_micros),
        "amount": {"amount_minor": note.amount_minor, "currency": note.currency},
        "transaction_id": f"txn_{note.transaction_id}",
        "created_at": note.created_at,
    }
    return CreditNoteOut.model_validate(body).model_dump(mode="json")


@router.get("/v1/organizations/{org_id}/credit-notes", response_model=CreditNotePage)
def list_credit_notes(
    org_id: str,
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    environment: Env = None,
) -> Any:
    """The organization's credit notes, oldest first."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    with db.read() as session:
        rows, next_id = credit_notes.list_for(session, org_id, env, cursor, limit)
        ids = {r.invoice_id for r in rows}
        numbers = {
            row.id: row.number
            for row in session.execute(
                select(Invoice.id, Invoice.number).where(Invoice.id.in_(ids))
            )
        }
        data = [credit_note_json(r, numbers[r.invoice_id]) for r in rows]
    return {
        "data": data,
        "has_more": next_id is not None,
        "next_cursor": encode_cursor(next_id) if next_id else None,
    }
