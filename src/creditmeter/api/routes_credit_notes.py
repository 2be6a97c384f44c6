"""Credit notes: an organization's list, one note as a PDF (and, in ``routes_invoices``, the notes
of one invoice).

An operator key reads every organization's; an org:admin or org:read key its own, in its own
environment (any other note is the same 404 as one that does not exist)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy import select

from creditmeter.api.deps import (
    DB,
    READ_SCOPES,
    Caller,
    Cursor,
    Env,
    Limit,
    authorize_org,
    environment_for,
)
from creditmeter.api.routes_billing import Plans
from creditmeter.api.schemas_corrections import CreditNoteOut, CreditNotePage
from creditmeter.billing import credit_note_pdf, credit_notes
from creditmeter.billing.models import CreditNote, Invoice
from creditmeter.kit.credits import format_credits
from creditmeter.kit.pagination import DEFAULT_LIMIT, page_of

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
        "credits_returned": format_credits(note.credits_micros - note.billed_micros),
        "credits_billed": format_credits(note.billed_micros),
        "amount": {"amount_minor": note.amount_minor, "currency": note.currency},
        "transaction_id": f"txn_{note.transaction_id}",
        "clawback_transaction_id": (
            f"txn_{note.clawback_transaction_id}" if note.clawback_transaction_id else None
        ),
        "created_at": note.created_at,
        "pdf_url": f"/v1/credit-notes/{note.id}/pdf",
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
    return page_of(data, next_id)


@router.get(
    "/v1/credit-notes/{credit_note_id}/pdf",
    response_class=Response,
    responses={
        200: {"content": {"application/pdf": {}}, "description": "The credit note as a PDF."}
    },
)
def get_credit_note_pdf(credit_note_id: str, caller: Caller, db: DB, catalog: Plans) -> Response:
    """The credit note as a PDF (A4): seller, customer, number, date, the invoice it corrects,
    reason, credits returned, money credited and where it was deducted."""
    with db.read() as session:
        doc = credit_note_pdf.document(session, credit_note_id)
        note = doc.note
        if not caller.is_operator and (
            caller.organization_id != note.organization_id or caller.environment != note.environment
        ):
            raise credit_note_pdf.CreditNoteNotFound(f"credit note {credit_note_id} not found")
        authorize_org(caller, note.organization_id, READ_SCOPES)
        content = credit_note_pdf.render(doc, catalog.zone)
    return Response(
        content,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{note.number}.pdf"'},
    )
