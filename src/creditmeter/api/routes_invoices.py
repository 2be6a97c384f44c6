"""Invoices: an organization's list, one invoice with its lines and usage summary, and its PDF.

An operator key reads every invoice; an org:admin or org:read key reads its own organization's
invoices in its own environment. Any other invoice is the same 404 as one that does not exist.
An operator or an org:admin key may pay an open or past-due invoice now (``POST …/pay``): the
handler is a plain ``def`` because it calls the payment processor, with no transaction open.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from sqlalchemy.orm import Session

from creditmeter.api.deps import (
    ADMIN_SCOPES,
    DB,
    READ_SCOPES,
    Caller,
    Cursor,
    Env,
    Limit,
    authorize_org,
    environment_for,
    json_body,
    require_operator,
)
from creditmeter.api.routes_billing import Plans
from creditmeter.api.routes_credit_notes import credit_note_json
from creditmeter.api.routes_payments import Provider
from creditmeter.api.schemas_invoices import (
    InvoiceOut,
    InvoicePage,
    InvoicePayIn,
    InvoiceSummaryOut,
    InvoiceVoidIn,
)
from creditmeter.billing import domain, dunning, invoices, org_time, pdf, refunds, statements
from creditmeter.billing.domain import Catalog
from creditmeter.billing.invoices import InvoiceNotFound, InvoiceView
from creditmeter.billing.models import Invoice
from creditmeter.kit.credits import format_credits
from creditmeter.kit.pagination import DEFAULT_LIMIT, page_of
from creditmeter.orgs.service import Principal

router = APIRouter(tags=["invoices"])


def _money(amount_minor: int, currency: str) -> dict[str, Any]:
    return {"amount_minor": amount_minor, "currency": currency}


def summary_json(inv: Invoice, catalog: Catalog) -> dict[str, Any]:
    due = 0 if inv.status in {invoices.PAID, invoices.VOID} else inv.total_minor
    return {
        "id": inv.id,
        "number": inv.number,
        "organization_id": inv.organization_id,
        "environment": inv.environment,
        "status": inv.status,
        "period": {
            "label": domain.period_of(inv.period_start, catalog.zone).label,
            "start": inv.period_start,
            "end": inv.period_end,
        },
        "currency": inv.currency,
        "subtotal": _money(inv.subtotal_minor, inv.currency),
        "total": _money(inv.total_minor, inv.currency),
        "amount_due": _money(due, inv.currency),
        "issued_at": inv.issued_at,
        "due_at": inv.due_at,
        "paid_at": inv.paid_at,
        "voided_at": inv.voided_at,
        "void_reason": inv.void_reason,
        "pdf_url": f"/v1/invoices/{inv.id}/pdf",
    }


def invoice_json(
    view: InvoiceView, catalog: Catalog, session: Session | None = None
) -> dict[str, Any]:
    inv = view.invoice
    body = summary_json(inv, catalog)
    if session is not None:
        body["payment_attempts"], body["next_payment_attempt_at"] = dunning.schedule_of(
            session, inv
        )
        body["refunded_minor"] = refunds.refunded_of_invoice(session, inv.id)
    body["seller"] = inv.seller
    body["customer"] = inv.customer
    body["lines"] = [
        {
            "position": line.position,
            "kind": line.kind,
            "description": line.description,
            "quantity": line.quantity,
            "unit_price": line.unit_price,
            "amount": _money(line.amount_minor, inv.currency),
            "credits": (
                format_credits(line.credits_micros) if line.credits_micros is not None else None
            ),
            "service_start": line.service_start,
            "service_end": line.service_end,
        }
        for line in view.lines
    ]
    body["credit_notes"] = [credit_note_json(note, inv.number) for note in view.credit_notes]
    body["usage_summary"] = {
        "by_operation": [
            {
                "operation": u.key,
                "events": u.event_count,
                "credits": format_credits(u.credits_micros),
                "quantities": u.quantities,
            }
            for u in view.usage
            if u.dimension == statements.OPERATION
        ],
        "by_project": [
            {
                "project_id": u.key or None,
                "project_name": u.label,
                "events": u.event_count,
                "credits": format_credits(u.credits_micros),
                "quantities": u.quantities,
            }
            for u in view.usage
            if u.dimension == statements.PROJECT
        ],
    }
    return InvoiceOut.model_validate(body).model_dump(mode="json")


@router.get("/v1/organizations/{org_id}/invoices", response_model=InvoicePage)
def list_invoices(
    org_id: str,
    caller: Caller,
    db: DB,
    catalog: Plans,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    environment: Env = None,
) -> Any:
    """The organization's invoices, oldest first (one per closed month), without their lines.
    An operator key, or an org:admin or org:read key of this organization."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    with db.read() as session:
        rows, next_id = invoices.list_for(session, org_id, env, cursor, limit)
        data = [InvoiceSummaryOut.model_validate(summary_json(r, catalog)) for r in rows]
    return page_of([d.model_dump(mode="json") for d in data], next_id)


def _readable(caller: Principal, view: InvoiceView, scopes: frozenset[str] = READ_SCOPES) -> None:
    inv = view.invoice
    if not caller.is_operator and (
        caller.organization_id != inv.organization_id or caller.environment != inv.environment
    ):
        raise InvoiceNotFound(f"invoice {inv.id} not found")
    authorize_org(caller, inv.organization_id, scopes)


@router.get("/v1/invoices/{invoice_id}", response_model=InvoiceOut)
def get_invoice(invoice_id: str, caller: Caller, db: DB, catalog: Plans) -> Any:
    """One invoice with its seller, customer, lines, totals and the usage summary of its month."""
    with db.read() as session:
        view = invoices.get(session, invoice_id)
        _readable(caller, view)
        return invoice_json(view, catalog, session)


@router.post(
    "/v1/invoices/{invoice_id}/pay",
    response_model=InvoiceOut,
    dependencies=[Depends(json_body)],
    responses={
        402: {"description": "Declined: the processor's reason is the problem's code."},
        409: {"description": "The invoice is already paid (invoice_paid) or void (invoice_void)."},
    },
)
def pay_invoice(
    invoice_id: str,
    caller: Caller,
    db: DB,
    catalog: Plans,
    provider: Provider,
    body: InvoicePayIn | None = None,
) -> Any:
    """Charge an open or past-due invoice now, with the named payment method or the default one.
    Paid: the invoice is returned, and a suspended organization with no other past-due invoice is
    active again. A decline is a 402 with the processor's reason (the attempt is in the billing
    history). An operator key, or an org:admin key of the invoice's organization."""
    with db.read() as session:
        view = invoices.get(session, invoice_id)
        _readable(caller, view, ADMIN_SCOPES)
        now = org_time.now_for(session, view.invoice.organization_id)  # a test clock's, if any
    method = body.payment_method if body else None
    dunning.pay(db, provider, invoice_id, method, now)
    with db.read() as session:
        return invoice_json(invoices.get(session, invoice_id), catalog, session)


@router.post(
    "/v1/invoices/{invoice_id}/void",
    response_model=InvoiceOut,
    responses={
        409: {
            "description": "The invoice is paid (invoice_paid: refund it) or void (invoice_void)."
        }
    },
)
def void_invoice(
    invoice_id: str, body: InvoiceVoidIn, caller: Caller, db: DB, catalog: Plans
) -> Any:
    """Void an open or past-due invoice (operator keys only): it is no longer collected, the
    credits it billed stay, the money of credit notes deducted on it goes to the next invoice, and
    a suspension that only this invoice caused ends. A paid invoice is refunded, not voided."""
    require_operator(caller)
    with db.write() as session:
        invoice = invoices.get(session, invoice_id).invoice
        now = org_time.now_for(session, invoice.organization_id)  # a test clock's, if any
        dunning.void(session, invoice_id, body.reason, now)
    with db.read() as session:
        return invoice_json(invoices.get(session, invoice_id), catalog, session)


@router.get(
    "/v1/invoices/{invoice_id}/pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}, "description": "The invoice as a PDF."}},
)
def get_invoice_pdf(invoice_id: str, caller: Caller, db: DB, catalog: Plans) -> Response:
    """The invoice as a PDF (A4): seller, customer, number, dates, period, lines, totals, status,
    the credit notes issued against it and deducted on it, and the usage summary."""
    with db.read() as session:
        view = invoices.get(session, invoice_id)
        _readable(caller, view)
        content = pdf.render(view, catalog.zone, pdf.notes_of(session, view))
    filename = f"{view.invoice.number}.pdf"
    return Response(
        content,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{filename}"'},
    )
