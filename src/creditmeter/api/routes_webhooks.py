"""Webhook endpoints, their delivery log, and the notification events they are sent.

Two families of paths do the same things: ``/v1/organizations/{org_id}/webhook-endpoints`` (an
org:admin key of that organization, or an operator key) and ``/v1/webhook-endpoints`` (operator keys
only: creating there makes an operator-wide endpoint, sent the events of every organization; the
other operations reach any endpoint). An endpoint lives in one environment, the key's (an operator
key may ask for the other with ``?environment=``). An organization key gets 404 for another
organization's endpoints and for operator-wide ones, as for endpoints that do not exist.

Handlers are plain ``def``: a URL is checked by resolving its host (``notify.destinations``) before
the transaction opens. The secret is in the answers of create and rotate-secret only (and in their
stored Idempotency-Key replays). What each route does is in ``webhook_handlers``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from creditmeter.api import webhook_handlers as h
from creditmeter.api.deps import (
    DB,
    READ_SCOPES,
    Caller,
    Cursor,
    IdempotencyKey,
    Limit,
    SettingsDep,
    authorize_org,
    environment_for,
    require_operator,
)
from creditmeter.api.schemas import Page
from creditmeter.api.schemas_webhooks import (
    DeliveryOut,
    EndpointIn,
    EndpointOut,
    EndpointUpdate,
    EndpointWithSecret,
    NotificationEventOut,
    RotateIn,
    SendTestIn,
)
from creditmeter.kit.pagination import DEFAULT_LIMIT
from creditmeter.notify.webhooks import ANY_ORGANIZATION

router = APIRouter(tags=["webhooks"])

ORG = "/v1/organizations/{org_id}/webhook-endpoints"
OPS = "/v1/webhook-endpoints"
ONE = "/{endpoint_id}"
Env = Annotated[
    Literal["live", "test"] | None,
    Query(description="Operator keys only: the environment to act on (default: the key's)."),
]
DeliveryStatus = Annotated[
    Literal["pending", "succeeded", "failed", "cancelled"] | None,
    Query(description="Only deliveries in this status."),
]
EventTypeFilter = Annotated[
    list[str] | None,
    Query(alias="type", description="Only events of these types (repeat the parameter)."),
]


# --- /v1/organizations/{org_id}/webhook-endpoints ----------------------------------------------


@router.post(ORG, status_code=201, response_model=EndpointWithSecret)
def create_endpoint(
    org_id: str,
    body: EndpointIn,
    caller: Caller,
    db: DB,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """Create an endpoint of the organization in the key's environment. The answer holds the
    signing secret (`whsec_…`): the only time it is shown (store it). The URL must resolve to
    public addresses (`422 webhook_url_not_allowed` otherwise); unknown event types are
    `422 unknown_event_type`."""
    return h.create(db, settings, h.org_access(caller, org_id, environment), body, idempotency_key)


@router.get(ORG, response_model=Page[EndpointOut])
def list_endpoints(
    org_id: str,
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    environment: Env = None,
) -> Any:
    """The organization's endpoints in the environment, oldest first (never their secrets)."""
    access = h.org_access(caller, org_id, environment)
    return h.list_endpoints(db, access, org_id, limit, cursor)


@router.get(ORG + ONE, response_model=EndpointOut)
def get_endpoint(
    org_id: str, endpoint_id: str, caller: Caller, db: DB, environment: Env = None
) -> Any:
    """One endpoint (without its secret)."""
    return h.get(db, h.org_access(caller, org_id, environment), endpoint_id)


@router.patch(ORG + ONE, response_model=EndpointOut)
def update_endpoint(
    org_id: str,
    endpoint_id: str,
    body: EndpointUpdate,
    caller: Caller,
    db: DB,
    settings: SettingsDep,
    environment: Env = None,
) -> Any:
    """Change the URL, description or event types; `status: enabled` re-enables a disabled
    endpoint (its failures forgotten), `status: disabled` stops it (pending deliveries cancelled)."""
    return h.update(db, settings, h.org_access(caller, org_id, environment), endpoint_id, body)


@router.delete(ORG + ONE, response_model=EndpointOut)
def delete_endpoint(
    org_id: str, endpoint_id: str, caller: Caller, db: DB, environment: Env = None
) -> Any:
    """Delete the endpoint with its delivery log; nothing more is sent to it. Answers the endpoint
    as it was."""
    return h.delete(db, h.org_access(caller, org_id, environment), endpoint_id)


@router.post(ORG + ONE + "/rotate-secret", response_model=EndpointWithSecret)
def rotate_secret(
    org_id: str,
    endpoint_id: str,
    caller: Caller,
    db: DB,
    body: RotateIn | None = None,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """A new signing secret, shown in this answer only. The previous one keeps signing (a second
    `v1,` signature in `webhook-signature`) for `overlap_hours` (default 24, at most 168)."""
    access = h.org_access(caller, org_id, environment)
    return h.rotate(db, access, endpoint_id, body or RotateIn(), idempotency_key)


@router.post(ORG + ONE + "/test", status_code=202, response_model=DeliveryOut)
def send_test(
    org_id: str,
    endpoint_id: str,
    caller: Caller,
    db: DB,
    body: SendTestIn | None = None,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """Publish a `webhook.test` event and deliver it to this endpoint only (at once, by the
    worker). Answers the delivery; follow it in the delivery log."""
    access = h.org_access(caller, org_id, environment)
    return h.send_test(db, access, endpoint_id, body or SendTestIn(), idempotency_key)


@router.get(ORG + ONE + "/deliveries", response_model=Page[DeliveryOut])
def list_deliveries(
    org_id: str,
    endpoint_id: str,
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    status: DeliveryStatus = None,
    environment: Env = None,
) -> Any:
    """The endpoint's deliveries, newest first, each with its attempts (status code, latency,
    the start of the response body, error)."""
    access = h.org_access(caller, org_id, environment)
    return h.deliveries(db, access, endpoint_id, limit, cursor, status)


@router.post(
    ORG + ONE + "/deliveries/{delivery_id}/redeliver", status_code=202, response_model=DeliveryOut
)
def redeliver(
    org_id: str,
    endpoint_id: str,
    delivery_id: str,
    caller: Caller,
    db: DB,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """Send the delivery's event again, as a new delivery (kind `redelivery`) with the same
    `webhook-id`, so a receiver that de-duplicates sees it as the same event."""
    access = h.org_access(caller, org_id, environment)
    return h.redeliver(db, access, endpoint_id, delivery_id, idempotency_key)


@router.get(
    "/v1/organizations/{org_id}/notification-events", response_model=Page[NotificationEventOut]
)
def list_org_events(
    org_id: str,
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    types: EventTypeFilter = None,
    environment: Env = None,
) -> Any:
    """The organization's notification events (what webhooks are sent), newest first."""
    authorize_org(caller, org_id, READ_SCOPES)
    env = environment_for(caller, environment)
    return h.list_events(db, org_id, env, limit, cursor, types)


# --- /v1/webhook-endpoints (operator keys) -----------------------------------------------------


@router.post(OPS, status_code=201, response_model=EndpointWithSecret)
def create_operator_endpoint(
    body: EndpointIn,
    caller: Caller,
    db: DB,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """Create an operator-wide endpoint: it is sent the events of every organization in the
    environment. The answer holds the signing secret, shown this once."""
    return h.create(db, settings, h.operator_access(caller, environment), body, idempotency_key)


@router.get(OPS, response_model=Page[EndpointOut])
def list_all_endpoints(
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    organization_id: Annotated[
        str | None, Query(max_length=40, description="Only this organization's endpoints.")
    ] = None,
    environment: Env = None,
) -> Any:
    """Every endpoint of the environment (operator-wide ones have `organization_id: null`),
    oldest first."""
    access = h.operator_access(caller, environment)
    return h.list_endpoints(db, access, organization_id or ANY_ORGANIZATION, limit, cursor)


@router.get(OPS + ONE, response_model=EndpointOut)
def get_any_endpoint(endpoint_id: str, caller: Caller, db: DB, environment: Env = None) -> Any:
    """Any endpoint, by id."""
    return h.get(db, h.operator_access(caller, environment), endpoint_id)


@router.patch(OPS + ONE, response_model=EndpointOut)
def update_any_endpoint(
    endpoint_id: str,
    body: EndpointUpdate,
    caller: Caller,
    db: DB,
    settings: SettingsDep,
    environment: Env = None,
) -> Any:
    """As `PATCH /v1/organizations/{org_id}/webhook-endpoints/{endpoint_id}`, for any endpoint."""
    return h.update(db, settings, h.operator_access(caller, environment), endpoint_id, body)


@router.delete(OPS + ONE, response_model=EndpointOut)
def delete_any_endpoint(endpoint_id: str, caller: Caller, db: DB, environment: Env = None) -> Any:
    """Delete any endpoint with its delivery log."""
    return h.delete(db, h.operator_access(caller, environment), endpoint_id)


@router.post(OPS + ONE + "/rotate-secret", response_model=EndpointWithSecret)
def rotate_any_secret(
    endpoint_id: str,
    caller: Caller,
    db: DB,
    body: RotateIn | None = None,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """A new signing secret for any endpoint (see the organization path)."""
    access = h.operator_access(caller, environment)
    return h.rotate(db, access, endpoint_id, body or RotateIn(), idempotency_key)


@router.post(OPS + ONE + "/test", status_code=202, response_model=DeliveryOut)
def send_any_test(
    endpoint_id: str,
    caller: Caller,
    db: DB,
    body: SendTestIn | None = None,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """A `webhook.test` event delivered to this endpoint only."""
    access = h.operator_access(caller, environment)
    return h.send_test(db, access, endpoint_id, body or SendTestIn(), idempotency_key)


@router.get(OPS + ONE + "/deliveries", response_model=Page[DeliveryOut])
def list_any_deliveries(
    endpoint_id: str,
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    status: DeliveryStatus = None,
    environment: Env = None,
) -> Any:
    """Any endpoint's deliveries, newest first, with their attempts."""
    return h.deliveries(
        db, h.operator_access(caller, environment), endpoint_id, limit, cursor, status
    )


@router.post(
    OPS + ONE + "/deliveries/{delivery_id}/redeliver", status_code=202, response_model=DeliveryOut
)
def redeliver_any(
    endpoint_id: str,
    delivery_id: str,
    caller: Caller,
    db: DB,
    idempotency_key: IdempotencyKey = None,
    environment: Env = None,
) -> Any:
    """Send a delivery's event again (kind `redelivery`, the same `webhook-id`)."""
    access = h.operator_access(caller, environment)
    return h.redeliver(db, access, endpoint_id, delivery_id, idempotency_key)


@router.get("/v1/notification-events", response_model=Page[NotificationEventOut])
def list_all_events(
    caller: Caller,
    db: DB,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    types: EventTypeFilter = None,
    organization_id: Annotated[
        str | None, Query(max_length=40, description="Only this organization's events.")
    ] = None,
    environment: Env = None,
) -> Any:
    """Notification events of every organization (or one), newest first. Operator keys only."""
    require_operator(caller)
    env = environment_for(caller, environment)
    return h.list_events(db, organization_id, env, limit, cursor, types)
