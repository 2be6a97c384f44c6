"""Payment methods of an organization: the processor's customer, cards attached to it, one default.

Calls to the processor happen outside any database transaction of ours (a network call never holds
a lock); what the processor answered is then recorded in a short write transaction. The ``record_*``
and listing functions take the caller's ``Session`` and never commit; :func:`add` and :func:`detach`
run the whole exchange and own their transactions. Writes of one organization's methods serialize
on its ledger balance row (the organization's write lock), so there is never more than one default
(a partial unique index backs that up).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from creditmeter.billing.payments.models import PaymentCustomer, PaymentMethod
from creditmeter.billing.payments.provider import AttachedMethod, CardSource, PaymentProvider
from creditmeter.errors import NotFound
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id
from creditmeter.ledger import service as ledger
from creditmeter.orgs import service as orgs


class PaymentMethodNotFound(NotFound):
    code = "payment_method_not_found"


def active_methods(session: Session, organization_id: str, environment: str) -> list[PaymentMethod]:
    """Attached methods, the default first, then newest first."""
    return list(
        session.scalars(
            select(PaymentMethod)
            .where(
                PaymentMethod.organization_id == organization_id,
                PaymentMethod.environment == environment,
                PaymentMethod.detached_at.is_(None),
            )
            .order_by(PaymentMethod.is_default.desc(), PaymentMethod.id.desc())
        )
    )


def get_method(
    session: Session, organization_id: str, environment: str, method_id: str
) -> PaymentMethod:
    """An attached method of this organization and environment, else 404."""
    method = session.get(PaymentMethod, method_id)
    if (
        method is None
        or (method.organization_id, method.environment) != (organization_id, environment)
        or method.detached_at is not None
    ):
        raise PaymentMethodNotFound(f"payment method {method_id} not found")
    return method


def default_method(
    session: Session, organization_id: str, environment: str
) -> PaymentMethod | None:
    return session.scalars(
        select(PaymentMethod).where(
            PaymentMethod.organization_id == organization_id,
            PaymentMethod.environment == environment,
            PaymentMethod.detached_at.is_(None),
            PaymentMethod.is_default.is_(True),
        )
    ).first()


def _customer_query(provider_name: str, organization_id: str, environment: str) -> Any:
    return select(PaymentCustomer.provider_customer_id).where(
        PaymentCustomer.organization_id == organization_id,
        PaymentCustomer.environment == environment,
        PaymentCustomer.provider == provider_name,
    )


def customer_for(
    db: Database, provider: PaymentProvider, organization_id: str, environment: str
) -> tuple[str, bool]:
    """The processor's customer of the organization and whether it is new (not yet recorded here:
    :func:`record_customer` stores it with the first method). Creating it is idempotent by key, so
    two concurrent first uses get one customer at the processor."""
    with db.read() as session:
        orgs.get_organization(session, organization_id)
        found = session.scalar(_customer_query(provider.name, organization_id, environment))
    if found:
        return found, False
    customer_id = provider.create_customer(
        organization_id,
        f"creditmeter organization {organization_id} ({environment})",
        f"customer:{organization_id}:{environment}",
    )
    return customer_id, True


def record_customer(
    session: Session,
    provider_name: str,
    organization_id: str,
    environment: str,
    customer_id: str,
    now: datetime,
) -> None:
    """Store the processor's customer unless a concurrent first use already did (under the
    organization's write lock, taken by the caller)."""
    if session.scalar(_customer_query(provider_name, organization_id, environment)):
        return
    session.add(
        PaymentCustomer(
            id=new_id("pcus"),
            organization_id=organization_id,
            environment=environment,
            provider=provider_name,
            provider_customer_id=customer_id,
            created_at=now,
        )
    )
    session.flush()


def add(
    db: Database,
    provider: PaymentProvider,
    organization_id: str,
    environment: str,
    source: CardSource,
    make_default: bool,
    now: datetime,
    remember: Callable[[Session, PaymentMethod], None] | None = None,
) -> PaymentMethod:
    """Attach a card at the processor, then record what may be stored about it. ``remember`` runs
    in the recording transaction (the API stores its idempotent answer there)."""
    customer_id, new = customer_for(db, provider, organization_id, environment)
    attached = provider.attach(customer_id, source)
    with db.write() as session:
        ledger.lock_balance(session, organization_id, environment)
        if new:
            record_customer(session, provider.name, organization_id, environment, customer_id, now)
        method = record_method(
            session, organization_id, environment, provider.name, attached, make_default, now
        )
        if remember is not None:
            remember(session, method)
        return method


def record_method(
    session: Session,
    organization_id: str,
    environment: str,
    provider_name: str,
    attached: AttachedMethod,
    make_default: bool,
    now: datetime,
) -> PaymentMethod:
    """Store an attached method: token, brand, last four digits, expiry. The organization's first
    method becomes its default; ``make_default`` makes any new one the default."""
    ledger.lock_balance(session, organization_id, environment)
    current = default_method(session, organization_id, environment)
    is_default = make_default or current is None
    if is_default and current is not None:
        current.is_default = False
        session.flush()
    method = PaymentMethod(
        id=new_id("pmt"),
        organization_id=organization_id,
        environment=environment,
        provider=provider_name,
        token=attached.token,
        brand=attached.brand,
        last4=attached.last4,
        exp_month=attached.exp_month,
        exp_year=attached.exp_year,
        is_default=is_default,
        created_at=now,
        detached_at=None,
    )
    session.add(method)
    session.flush()
    return method


def set_default(
    session: Session, organization_id: str, environment: str, method_id: str
) -> PaymentMethod:
    """Make an attached method the default (the previous default stops being one)."""
    ledger.lock_balance(session, organization_id, environment)
    method = get_method(session, organization_id, environment, method_id)
    if not method.is_default:
        session.execute(
            update(PaymentMethod)
            .where(
                PaymentMethod.organization_id == organization_id,
                PaymentMethod.environment == environment,
                PaymentMethod.is_default.is_(True),
            )
            .values(is_default=False)
            .execution_options(synchronize_session="fetch")
        )
        method.is_default = True
        session.flush()
    return method


def detach(
    db: Database,
    provider: PaymentProvider,
    organization_id: str,
    environment: str,
    method_id: str,
    now: datetime,
) -> PaymentMethod:
    """Detach at the processor, then mark the method detached (kept for the billing history). If it
    was the default, the newest remaining method becomes the default."""
    with db.read() as session:
        orgs.get_organization(session, organization_id)
        token = get_method(session, organization_id, environment, method_id).token
    provider.detach(token)
    with db.write() as session:
        ledger.lock_balance(session, organization_id, environment)
        method = get_method(session, organization_id, environment, method_id)
        was_default = method.is_default
        method.is_default = False
        method.detached_at = now
        session.flush()
        if was_default:
            rest = active_methods(session, organization_id, environment)
            if rest:
                rest[0].is_default = True
                session.flush()
        return method
