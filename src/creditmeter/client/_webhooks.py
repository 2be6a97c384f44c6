"""Verifying a webhook request from creditmeter (Standard Webhooks signatures), with the standard
library only::

    from creditmeter.client import WebhookVerificationError, verify_webhook

    try:
        event = verify_webhook(request_body_bytes, request.headers, "whsec_…")
    except WebhookVerificationError:
        return 400                      # not from creditmeter, altered, or too old
    if already_handled(event["id"]):    # retries and redeliveries carry the same id
        return 200
    handle(event["type"], event["data"])

A request carries ``webhook-id`` (the event id), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: space-separated ``v1,<base64>`` signatures, each an HMAC-SHA256 of
``"<id>.<timestamp>.<body>"`` keyed with the base64-decoded secret after ``whsec_``. During a secret
rotation two are sent (new and previous secret): one matching is enough. Pass the body exactly as
received (bytes): a re-serialized JSON document does not verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(ValueError):
    """The request is not a valid creditmeter webhook. ``reason`` is one of ``missing_header``,
    ``invalid_timestamp``, ``timestamp_too_old``, ``timestamp_too_new``, ``invalid_secret``,
    ``no_matching_signature``, ``invalid_payload``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _key(secret: str) -> bytes:
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError(
            "invalid_secret", "the secret is not a whsec_… secret (base64 after the prefix)"
        ) from None
    if not key:
        raise WebhookVerificationError("invalid_secret", "the secret is empty")
    return key


def _now(now: datetime | float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now.timestamp()
    return float(now)


def sign(secret: str, msg_id: str, timestamp: int, payload: bytes | str) -> str:
    """The ``v1,<signature>`` of a payload (what creditmeter sends; useful in a receiver's tests)."""
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode("ascii")


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: datetime | float | None = None,
) -> dict[str, Any]:
    """The event envelope (``id``, ``type``, ``version``, ``organization_id``, ``environment``,
    ``occurred_at``, ``created_at``, ``data``) of a request whose signature is valid for ``secret``
    and whose timestamp is within ``tolerance_seconds`` of ``now`` (default: this machine's
    clock), either way. Raises :class:`WebhookVerificationError` otherwise. Signatures are compared
    in constant time."""
    if isinstance(payload, str):
        payload = payload.encode()
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    for name, value in (
        ("webhook-id", msg_id),
        ("webhook-timestamp", stamp),
        ("webhook-signature", signatures),
    ):
        if not value:
            raise WebhookVerificationError("missing_header", f"the {name} header is missing")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise WebhookVerificationError("invalid_timestamp", "webhook-timestamp is not Unix seconds")
    age = _now(now) - int(stamp)
    if age > tolerance_seconds:
        raise WebhookVerificationError(
            "timestamp_too_old", f"the request was signed {int(age)} s ago (replayed?)"
        )
    if age < -tolerance_seconds:
        raise WebhookVerificationError(
            "timestamp_too_new", f"the request is signed {int(-age)} s in the future"
        )
    expected = sign(secret, msg_id, int(stamp), payload).encode()
    if not any(
        hmac.compare_digest(expected, candidate.encode())
        for candidate in signatures.split(" ")
        if candidate.startswith("v1,")
    ):
        raise WebhookVerificationError(
            "no_matching_signature",
            "no signature matches this secret (a wrong secret, or an altered body)",
        )
    try:
        event = json.loads(payload)
    except ValueError:
        raise WebhookVerificationError("invalid_payload", "the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("invalid_payload", "the body is not a JSON object")
    return event
