"""Webhook endpoints and the fan-out of events to them.

An endpoint belongs to one organization and one environment (``live``/``test``), or, with no
organization, to the operator: an operator-wide endpoint receives the events of every organization
of its environment. Its ``event_types`` filter holds exact catalog names or ``prefix.*`` patterns
(empty: every type).

Invariants kept here:

- **Fan-out in the event's transaction.** :func:`deliveries_for` runs inside
  :func:`creditmeter.notify.events.publish`: one ``webhook_deliveries`` row per matching enabled
  endpoint and one ``webhook_delivery`` job each (``kit.outbox``), so a delivery exists exactly
  when its event committed. ``webhook.test`` is never fanned out: a test goes to the endpoint tested
  only (``notify.webhook_log.send_test``).
- **One pending job per delivery.** Every job of a delivery has the dedupe key
  ``webhook:<delivery>`` and names the attempt it makes (``payload["attempt"]``), so a job run
  twice neither schedules two next attempts nor records one attempt twice.
- **Secrets are shown once.** ``whsec_`` + base64 of 32 random bytes (the Standard Webhooks
  format); only :func:`create_endpoint` and :func:`rotate_secret` return one. After a rotation the
  previous secret keeps signing (a second signature) until ``previous_secret_until``.
- **Disabled endpoints get nothing.** Disabling one (by request, after ``410 Gone``, or after 5 days
  of failures, ``notify.delivery``) ends its pending deliveries; re-enabling clears
  ``failing_since``. Deleting one deletes its deliveries and their attempts with it (a job left
  for them finds nothing and ends).

Services never commit; URL checks that resolve names (``notify.destinations``) belong to the caller,
before its transaction.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import ColumnElement, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from creditmeter.errors import Conflict, InvalidRequest, NotFound
from creditmeter.kit import outbox
from creditmeter.kit.ids import new_id
from creditmeter.notify import catalog
from creditmeter.notify.models import (
    NotificationEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

WEBHOOK_DELIVERY: Final = "webhook_delivery"
TEST_EVENT: Final = "webhook.test"
ENABLED, DISABLED = "enabled", "disabled"
PENDING, SUCCEEDED, FAILED, CANCELLED = "pending", "succeeded", "failed", "cancelled"
AUTOMATIC, REDELIVERY, TEST = "automatic", "redelivery", "test"
#: How long the previous secret keeps signing after a rotation, by default and at most.
DEFAULT_OVERLAP: Final = timedelta(hours=24)
MAX_OVERLAP: Final = timedelta(hours=168)
MAX_EVENT_TYPES: Final = 100
#: A delivery's job runs again only after a crash (the retry schedule is ``notify.delivery``'s).
JOB_MAX_ATTEMPTS: Final = 5
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES: Final = 32


class _AnyOrganization:
    def __repr__(self) -> str:
        return "ANY_ORGANIZATION"


#: For operator paths: endpoints of any organization and operator-wide ones.
ANY_ORGANIZATION: Final = _AnyOrganization()
Owner = str | None | _AnyOrganization


class EndpointNotFound(NotFound):
    code = "webhook_endpoint_not_found"


class DeliveryNotFound(NotFound):
    code = "webhook_delivery_not_found"


class EndpointDisabled(Conflict):
    code = "webhook_endpoint_disabled"


def new_secret() -> str:
    """A signing secret in the Standard Webhooks format (``whsec_`` + base64 of the key bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def check_event_types(patterns: list[str]) -> list[str]:
    """The filter as stored (duplicates dropped, order kept), or a 422 ``unknown_event_type`` naming
    each pattern that is neither a catalog type nor a ``prefix.*`` of one."""
    errors = [
        {
            "field": f"event_types.{i}",
            "type": "unknown_event_type",
            "message": f"{p!r} is not an event type; use a name of the catalog (e.g. "
            f"'invoice.paid') or a prefix pattern (e.g. 'invoice.*')",
        }
        for i, p in enumerate(patterns)
        if not catalog.valid_filter(p)
    ]
    if errors:
        raise InvalidRequest(
            "event_types: " + "; ".join(e["message"] for e in errors),
            code="unknown_event_type",
            errors=errors,
        )
    if len(patterns) > MAX_EVENT_TYPES:
        raise InvalidRequest(
            f"event_types: at most {MAX_EVENT_TYPES} patterns (use 'prefix.*' patterns)",
            code="validation_failed",
            errors=[{"field": "event_types", "type": "too_long", "message": "too many patterns"}],
        )
    return list(dict.fromkeys(patterns))


def create_endpoint(
    session: Session,
    *,
    organization_id: str | None,
    environment: str,
    url: str,
    description: str,
    event_types: list[str],
    now: datetime,
) -> tuple[WebhookEndpoint, str]:
    """A new enabled endpoint and its secret (returned this once). ``url`` must have been checked by
    ``destinations.check_url`` already; the organization must exist."""
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=new_id("we"),
        organization_id=organization_id,
        environment=environment,
        url=url,
        description=description,
        event_types=check_event_types(event_types),
        secret=secret,
        previous_secret=None,
        previous_secret_until=None,
        status=ENABLED,
        disabled_reason=None,
        disabled_at=None,
        failing_since=None,
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def _owned(owner: Owner) -> ColumnElement[bool] | None:
    if isinstance(owner, _AnyOrganization):
        return None
    if owner is None:
        return WebhookEndpoint.organization_id.is_(None)
    return WebhookEndpoint.organization_id == owner


def get_endpoint(
    session: Session,
    endpoint_id: str,
    *,
    environment: str | None,
    owner: Owner,
    lock: bool = False,
) -> WebhookEndpoint:
    """The endpoint, if it belongs to ``owner`` (an organization, None for operator-wide ones, or
    :data:`ANY_ORGANIZATION`) in ``environment`` (None: either, for the CLI); else 404
    ``webhook_endpoint_not_found``, the same for another organization's endpoint as for none
    (existence never leaks)."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if environment is not None:
        query = query.where(WebhookEndpoint.environment == environment)
    owned = _owned(owner)
    if owned is not None:
        query = query.where(owned)
    if lock:
        query = query.with_for_update()
    endpoint = session.scalar(query)
    if endpoint is None:
        raise EndpointNotFound(f"webhook endpoint {endpoint_id} not found")
    return endpoint


def list_endpoints(
    session: Session,
    *,
    environment: str,
    owner: Owner,
    limit: int,
    after: str | None = None,
) -> list[WebhookEndpoint]:
    """Endpoints of ``owner`` in ``environment``, oldest first, after the id ``after``."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.environment == environment)
    owned = _owned(owner)
    if owned is not None:
        query = query.where(owned)
    if after is not None:
        query = query.where(WebhookEndpoint.id > after)
    return list(session.scalars(query.order_by(WebhookEndpoint.id).limit(limit)))


@dataclass(frozen=True)
class EndpointChanges:
    """A PATCH: the fields given (None: unchanged). ``url`` must have been checked already."""

    url: str | None = None
    description: str | None = None
    event_types: list[str] | None = None
    status: str | None = None


def update_endpoint(
    session: Session, endpoint: WebhookEndpoint, changes: EndpointChanges, now: datetime
) -> WebhookEndpoint:
    """Apply a PATCH. ``status: enabled`` re-enables (clearing ``failing_since`` and the reason);
    ``status: disabled`` disables and cancels the pending deliveries."""
    if changes.url is not None:
        endpoint.url = changes.url
    if changes.description is not None:
        endpoint.description = changes.description
    if changes.event_types is not None:
        endpoint.event_types = check_event_types(changes.event_types)
    if changes.status == ENABLED and endpoint.status != ENABLED:
        endpoint.status = ENABLED
        endpoint.disabled_reason = None
        endpoint.disabled_at = None
        endpoint.failing_since = None
    elif changes.status == DISABLED and endpoint.status != DISABLED:
        disable(session, endpoint, "disabled through the API", now, ending=CANCELLED)
    endpoint.updated_at = now
    session.flush()
    return endpoint


def disable(
    session: Session, endpoint: WebhookEndpoint, reason: str, now: datetime, *, ending: str
) -> int:
    """Disable the endpoint and end its pending deliveries with status ``ending`` (``cancelled`` by
    request, ``failed`` when the endpoint failed). Returns how many deliveries it ended."""
    endpoint.status = DISABLED
    endpoint.disabled_reason = reason[:300]
    endpoint.disabled_at = now
    endpoint.updated_at = now
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == PENDING)
        .values(status=ending, next_attempt_at=None, updated_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def rotate_secret(
    session: Session, endpoint: WebhookEndpoint, overlap: timedelta, now: datetime
) -> str:
    """A new secret (returned this once). The current one becomes the previous secret and keeps
    signing, as a second signature, for ``overlap`` (0: not at all); a secret from an earlier
    rotation is dropped."""
    if not timedelta(0) <= overlap <= MAX_OVERLAP:
        raise InvalidRequest(
            f"overlap must be between 0 and {MAX_OVERLAP.days * 24} hours", code="invalid_overlap"
        )
    secret = new_secret()
    if overlap > timedelta(0):
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_until = now + overlap
    else:
        endpoint.previous_secret = None
        endpoint.previous_secret_until = None
    endpoint.secret = secret
    endpoint.updated_at = now
    session.flush()
    return secret


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets a request sent at ``now`` is signed with: the current one, then the previous
    one while its overlap lasts."""
    found = [endpoint.secret]
    until = endpoint.previous_secret_until
    if endpoint.previous_secret and until is not None and now < until:
        found.append(endpoint.previous_secret)
    return found


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint with its deliveries and their attempts (their jobs find nothing)."""
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint.id)
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)
    session.flush()


def delivery_job(
    delivery_id: str,
    attempt: int,
    run_at: datetime,
    organization_id: str | None,
    environment: str,
) -> outbox.NewJob:
    """The job that makes attempt number ``attempt`` of a delivery at ``run_at``."""
    return outbox.NewJob(
        kind=WEBHOOK_DELIVERY,
        run_at=run_at,
        organization_id=organization_id,
        environment=environment,
        payload={"delivery_id": delivery_id, "attempt": attempt},
        dedupe_key=f"webhook:{delivery_id}",
        max_attempts=JOB_MAX_ATTEMPTS,
    )


def _delivery_row(
    endpoint_id: str, event_id: str, kind: str, dedupe_key: str, now: datetime
) -> dict[str, Any]:
    return {
        "id": new_id("wd"),
        "endpoint_id": endpoint_id,
        "event_id": event_id,
        "dedupe_key": dedupe_key,
        "kind": kind,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "last_status_code": None,
        "created_at": now,
        "updated_at": now,
    }


def deliveries_for(session: Session, event: NotificationEvent, now: datetime) -> None:
    """Queue one delivery of ``event`` per enabled endpoint of its environment that is its
    organization's or operator-wide and whose filter matches its type, in the caller's
    transaction: one INSERT for the deliveries, one for their jobs (due now). ``webhook.test`` is
    never fanned out."""
    if event.type == TEST_EVENT:
        return
    owners: ColumnElement[bool] = WebhookEndpoint.organization_id.is_(None)
    if event.organization_id is not None:
        owners = or_(owners, WebhookEndpoint.organization_id == event.organization_id)
    candidates = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
            WebhookEndpoint.environment == event.environment,
            WebhookEndpoint.status == ENABLED,
            owners,
        )
    ).all()
    rows = [
        _delivery_row(endpoint_id, event.id, AUTOMATIC, f"auto:{endpoint_id}:{event.id}", now)
        for endpoint_id, types in candidates
        if catalog.matches(list(types or []), event.type)
    ]
    if not rows:
        return
    session.execute(insert(WebhookDelivery).values(rows))
    outbox.enqueue(
        session,
        [delivery_job(r["id"], 1, now, event.organization_id, event.environment) for r in rows],
        now=now,
    )


def require_enabled(endpoint: WebhookEndpoint) -> None:
    """409 ``webhook_endpoint_disabled`` for a disabled endpoint, saying how to re-enable it."""
    if endpoint.status != ENABLED:
        raise EndpointDisabled(
            f"webhook endpoint {endpoint.id} is disabled ({endpoint.disabled_reason}); enable it "
            "first (PATCH it with status 'enabled')"
        )


def queue_delivery(
    session: Session, endpoint: WebhookEndpoint, event: NotificationEvent, kind: str, now: datetime
) -> WebhookDelivery:
    """A new delivery of ``event`` to ``endpoint`` (a redelivery or a test), due now. The endpoint
    must be enabled (:func:`require_enabled`)."""
    require_enabled(endpoint)
    row = _delivery_row(endpoint.id, event.id, kind, "", now)
    row["dedupe_key"] = f"{kind}:{row['id']}"
    session.execute(insert(WebhookDelivery).values(row))
    outbox.enqueue(
        session,
        [delivery_job(row["id"], 1, now, event.organization_id, event.environment)],
        now=now,
    )
    delivery = session.get(WebhookDelivery, row["id"])
    assert delivery is not None
    return delivery
