"""The creditmeter Python SDK: meter AI operations against a creditmeter server.

It needs only the standard library and httpx (it imports nothing else from creditmeter), so an AI
engine can install it without the server's dependencies::

    from creditmeter.client import Client

    with Client("https://credits.example.com", "cm_live_…") as credits:
        with credits.metered("org_42", "training", estimate={"gpu_seconds": 3600},
                             measure="gpu_seconds") as m:
            run_training()      # raises? the hold is released and nothing is charged
        print(m.result.credits) # the actual cost, settled against the hold: a Decimal

``metered`` raises :class:`InsufficientCredits` before the block runs when the hold is refused.

Design in four rules:

- **Exact amounts.** Credits go out as decimal strings and come back as ``Decimal``; a ``float``
  credits argument is a ``TypeError``. Quantities may be floats (measurements), sent exactly.
- **Never charge twice.** Each call fixes its body and ``Idempotency-Key`` before the first attempt
  (a usage event's key is its id); connection failures, timeouts, 429 (``Retry-After`` honoured)
  and 5xx are retried with jittered exponential backoff, resending exactly the same request.
- **Typed errors.** Every failure is a :class:`CreditmeterError` subclass chosen by the problem
  ``code`` (then by HTTP status); the tree is documented in ``_errors.py``.
- **Sync and async alike.** :class:`Client` and :class:`AsyncClient` have the same methods:
  ``authorize``, ``estimate``, ``record``, ``record_batch``, ``hold``, ``extend``, ``settle``,
  ``release`` and ``metered``.

:func:`verify_webhook` checks a webhook request from creditmeter (its Standard Webhooks signature and
timestamp) and returns the event; it raises :class:`WebhookVerificationError` otherwise.
"""

from creditmeter.client._async import AsyncClient
from creditmeter.client._calls import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE
from creditmeter.client._client import Client
from creditmeter.client._errors import (
    AuthenticationError,
    Conflict,
    ConnectionFailed,
    CreditmeterError,
    HoldNotActive,
    InsufficientCredits,
    NotFound,
    OrganizationSuspended,
    PermissionDenied,
    Problem,
    ProjectBudgetExceeded,
    RateLimited,
    RequestTimedOut,
    ServerError,
    UnexpectedResponse,
    ValidationFailed,
)
from creditmeter.client._metered import Meter
from creditmeter.client._models import (
    Authorization,
    Balance,
    BatchItem,
    BatchProgress,
    BatchResult,
    BreakdownLine,
    Estimate,
    Hold,
    UsageEvent,
    UsageResult,
)
from creditmeter.client._values import Credits, Quantity
from creditmeter.client._webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "AsyncClient",
    "AuthenticationError",
    "Authorization",
    "Balance",
    "BatchItem",
    "BatchProgress",
    "BatchResult",
    "BreakdownLine",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "CreditmeterError",
    "Credits",
    "Estimate",
    "Hold",
    "HoldNotActive",
    "InsufficientCredits",
    "Meter",
    "NotFound",
    "OrganizationSuspended",
    "PermissionDenied",
    "Problem",
    "ProjectBudgetExceeded",
    "Quantity",
    "RateLimited",
    "RequestTimedOut",
    "ServerError",
    "UnexpectedResponse",
    "UsageEvent",
    "UsageResult",
    "ValidationFailed",
    "WebhookVerificationError",
    "verify_webhook",
]
