"""What the two families of webhook paths do (``routes_webhooks`` declares them): reach an endpoint
within the caller's access, and answer endpoints, deliveries and events as JSON.

An organization path reaches that organization's endpoints in the key's environment; an operator
path reaches any endpoint (:data:`~creditmeter.notify.webhooks.ANY_ORGANIZATION`). Access is always
checked before an Idempotency-Key's stored answer is replayed: a rotation's answer holds the
secret."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from creditmeter.api.deps import ADMIN_SCOPES, authorize_org, environment_for, require_operator
from creditmeter.api.idempotent import run_once
from creditmeter.api.schemas_webhooks import (
    AttemptOut,
    DeliveryOut,
    EndpointIn,
    EndpointOut,
    EndpointUpdate,
    EndpointWithSecret,
    NotificationEventOut,
    RotateIn,
    SendTestIn,
)
from creditmeter.config import Settings
from creditmeter.errors import InvalidRequest
from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.kit.pagination import decode_cursor, page_of
from creditmeter.notify import catalog, destinations, events, webhook_log, webhooks
from creditmeter.notify.models import WebhookEndpoint
from creditmeter.notify.webhooks import ANY_ORGANIZATION, EndpointChanges, Owner
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Principal


@dataclass(frozen=True)
class Access:
    """Which endpoints a request may reach: an environment and an owner (an organization, or
    :data:`ANY_ORGANIZATION` on the operator paths)."""

    environment: str
    owner: Owner
    organization_id: str | None

    def endpoint(self, session: Session, endpoint_id: str, lock: bool = False) -> WebhookEndpoint:
        if self.organization_id is not None:
            orgs.get_organization(session, self.organization_id)
        return webhooks.get_endpoint(
            session, endpoint_id, environment=self.environment, owner=self.owner, lock=lock
        )


def org_access(caller: Principal, org_id: str, environment: str | None) -> Access:
    authorize_org(caller, org_id, ADMIN_SCOPES)
    return Access(environment_for(caller, environment), org_id, org_id)


def operator_access(caller: Principal, environment: str | None) -> Access:
    require_operator(caller)
    return Access(environment_for(caller, environment), ANY_ORGANIZATION, None)


def endpoint_json(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    until = endpoint.previous_secret_until
    shown = {
        "id": endpoint.id,
        "organization_id": endpoint.organization_id,
        "environment": endpoint.environment,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": list(endpoint.event_types or []),
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": endpoint.disabled_at,
        "failing_since": endpoint.failing_since,
        "previous_secret_expires_at": until
        if endpoint.previous_secret and until and until > clock.now()
        else None,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }
    if secret is None:
        return EndpointOut.model_validate(shown).model_dump(mode="json")
    return EndpointWithSecret.model_validate({**shown, "secret": secret}).model_dump(mode="json")


def delivery_json(view: webhook_log.DeliveryView) -> dict[str, Any]:
    d = view.delivery
    return DeliveryOut(
        id=d.id,
        endpoint_id=d.endpoint_id,
        event_id=d.event_id,
        event_type=view.event_type,
        kind=d.kind,
        status=d.status,
        next_attempt_at=d.next_attempt_at,
        last_status_code=d.last_status_code,
        attempts=[AttemptOut.model_validate(a, from_attributes=True) for a in view.attempts],
        created_at=d.created_at,
        updated_at=d.updated_at,
    ).model_dump(mode="json")


# --- what both families of paths do ------------------------------------------------------------


def create(
    db: Database, settings: Settings, access: Access, body: EndpointIn, key: str | None
) -> Any:
    destinations.check_url(body.url, allow_private=settings.webhook_allow_private)
    webhooks.check_event_types(body.event_types)
    organization_id = access.organization_id

    def make(session: Session) -> dict[str, Any]:
        if organization_id is not None:
            orgs.get_organization(session, organization_id)
        endpoint, secret = webhooks.create_endpoint(
            session,
            organization_id=organization_id,
            environment=access.environment,
            url=body.url,
            description=body.description,
            event_types=body.event_types,
            now=clock.now(),
        )
        return endpoint_json(endpoint, secret)

    scope = f"webhook-endpoints:{organization_id or 'operator'}"
    request = {"environment": access.environment, **body.model_dump(mode="json")}
    return run_once(db, scope, key, request, make)


def list_endpoints(
    db: Database, access: Access, owner: Owner, limit: int, cursor: str | None
) -> dict[str, object]:
    after = decode_cursor(cursor, "we_")
    with db.read() as session:
        if access.organization_id is not None:
            orgs.get_organization(session, access.organization_id)
        rows = webhooks.list_endpoints(
            session, environment=access.environment, owner=owner, limit=limit + 1, after=after
        )
    more = len(rows) > limit
    return page_of([endpoint_json(e) for e in rows[:limit]], rows[limit - 1].id if more else None)


def get(db: Database, access: Access, endpoint_id: str) -> dict[str, Any]:
    with db.read() as session:
        return endpoint_json(access.endpoint(session, endpoint_id))


def update(
    db: Database, settings: Settings, access: Access, endpoint_id: str, body: EndpointUpdate
) -> dict[str, Any]:
    if body.url is not None:
        with db.read() as session:  # 404 before resolving anything
            access.endpoint(session, endpoint_id)
        destinations.check_url(body.url, allow_private=settings.webhook_allow_private)
    changes = EndpointChanges(
        url=body.url, description=body.description, event_types=body.event_types, status=body.status
    )
    with db.write() as session:
        endpoint = access.endpoint(session, endpoint_id, lock=True)
        return endpoint_json(webhooks.update_endpoint(session, endpoint, changes, clock.now()))


def delete(db: Database, access: Access, endpoint_id: str) -> dict[str, Any]:
    with db.write() as session:
        endpoint = access.endpoint(session, endpoint_id, lock=True)
        shown = endpoint_json(endpoint)
        webhooks.delete_endpoint(session, endpoint)
    return shown


def _on_endpoint(
    db: Database,
    access: Access,
    endpoint_id: str,
    action: str,
    key: str | None,
    request: dict[str, Any],
    do: Callable[[Session, WebhookEndpoint], dict[str, Any]],
    status_code: int,
) -> Any:
    """Run ``do`` on the endpoint once per Idempotency-Key; access is checked before a stored
    answer is replayed (a rotation's answer holds the secret)."""
    with db.read() as session:
        access.endpoint(session, endpoint_id)

    def make(session: Session) -> dict[str, Any]:
        return do(session, access.endpoint(session, endpoint_id, lock=True))

    scope = f"webhook-{action}:{endpoint_id}"
    return run_once(db, scope, key, request, make, status_code=status_code)


def rotate(db: Database, access: Access, endpoint_id: str, body: RotateIn, key: str | None) -> Any:
    def rotated(session: Session, endpoint: WebhookEndpoint) -> dict[str, Any]:
        overlap = timedelta(hours=body.overlap_hours)
        secret = webhooks.rotate_secret(session, endpoint, overlap, clock.now())
        return endpoint_json(endpoint, secret)

    request = body.model_dump(mode="json")
    return _on_endpoint(db, access, endpoint_id, "rotate", key, request, rotated, 200)


def send_test(
    db: Database, access: Access, endpoint_id: str, body: SendTestIn, key: str | None
) -> Any:
    def test(session: Session, endpoint: WebhookEndpoint) -> dict[str, Any]:
        delivery = webhook_log.send_test(session, endpoint, body.message, clock.now())
        return delivery_json(webhook_log.view(session, delivery))

    request = body.model_dump(mode="json")
    return _on_endpoint(db, access, endpoint_id, "test", key, request, test, 202)


def deliveries(
    db: Database,
    access: Access,
    endpoint_id: str,
    limit: int,
    cursor: str | None,
    status: str | None,
) -> dict[str, object]:
    after = decode_cursor(cursor, "wd_")
    with db.read() as session:
        endpoint = access.endpoint(session, endpoint_id)
        views = webhook_log.list_deliveries(
            session, endpoint.id, limit=limit + 1, after=after, status=status
        )
    more = len(views) > limit
    last = views[limit - 1].delivery.id if more else None
    return page_of([delivery_json(v) for v in views[:limit]], last)


def redeliver(
    db: Database, access: Access, endpoint_id: str, delivery_id: str, key: str | None
) -> Any:
    with db.read() as session:
        webhook_log.get_delivery(session, delivery_id, access.endpoint(session, endpoint_id).id)

    def again(session: Session, endpoint: WebhookEndpoint) -> dict[str, Any]:
        original = webhook_log.get_delivery(session, delivery_id, endpoint.id)
        delivery = webhook_log.redeliver(session, endpoint, original, clock.now())
        return delivery_json(webhook_log.view(session, delivery))

    action = f"redeliver:{delivery_id}"
    return _on_endpoint(db, access, endpoint_id, action, key, {}, again, 202)


def list_events(
    db: Database,
    organization_id: str | None,
    environment: str,
    limit: int,
    cursor: str | None,
    types: list[str] | None,
) -> dict[str, object]:
    unknown = [t for t in types or [] if t not in catalog.CATALOG]
    if unknown:
        raise InvalidRequest(
            f"type: unknown event type(s) {', '.join(map(repr, unknown))}; see the catalog in "
            "docs/webhooks.md",
            code="unknown_event_type",
            errors=[
                {"field": "type", "type": "unknown_event_type", "message": repr(t)} for t in unknown
            ],
        )
    after = decode_cursor(cursor, "evt_")
    with db.read() as session:
        if organization_id is not None:
            orgs.get_organization(session, organization_id)
        rows = events.recent(
            session, organization_id, environment, limit=limit + 1, after=after, types=types
        )
    more = len(rows) > limit
    data = [NotificationEventOut.model_validate(events.envelope(e)) for e in rows[:limit]]
    return page_of([d.model_dump(mode="json") for d in data], rows[limit - 1].id if more else None)
