"""When to try a request again, and how long to wait first.

Retried: connection failures and timeouts (the request may or may not have reached the server), 429
and every 5xx. Nothing else: a 4xx answer will not change by asking again. Because each call fixes
its body and ``Idempotency-Key`` before the first attempt, a retry of a write that did reach the
server returns the first result instead of applying it twice.

The wait before retry ``n`` (0-based) is ``backoff * 2**n`` capped at :data:`MAX_BACKOFF`, with
"equal jitter" (a random point in its upper half) so many clients do not retry in step. A
``Retry-After`` header (seconds or an HTTP date, on a 429 or a 503) is honoured exactly instead;
one asking for more than :data:`MAX_RETRY_AFTER` seconds ends the retries at once.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import httpx

from creditmeter.client._errors import parse_retry_after

log = logging.getLogger("creditmeter.client")

#: The longest computed backoff between two attempts, in seconds.
MAX_BACKOFF = 30.0
#: The longest ``Retry-After`` the client waits for before giving up, in seconds.
MAX_RETRY_AFTER = 60.0

#: Transport failures worth another attempt (a bad URL or a protocol bug on our side is not).
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def retryable_status(status: int) -> bool:
    """429 and every 5xx."""
    return status == 429 or 500 <= status <= 599


@dataclass(frozen=True)
class RetryPolicy:
    """How many retries (``max_retries`` after the first attempt) and the base ``backoff``."""

    max_retries: int = 3
    backoff: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise TypeError("max_retries must be an int")
        if self.max_retries < 0:
            raise ValueError("max_retries cannot be negative")
        if not self.backoff >= 0:
            raise ValueError("backoff must be zero or more seconds")

    def _backoff(self, retry: int) -> float:
        base = min(MAX_BACKOFF, float(self.backoff) * 2.0**retry)
        # Jitter only spreads retries out; it needs no cryptographic randomness.
        return base / 2 + random.uniform(0, base / 2)  # noqa: S311

    def after_response(self, response: httpx.Response, retry: int) -> float | None:
        """Seconds to wait before retry number ``retry``, or None when the answer is final."""
        if retry >= self.max_retries or not retryable_status(response.status_code):
            return None
        retry_after = parse_retry_after(response)
        if retry_after is not None:
            if retry_after > MAX_RETRY_AFTER:
                return None
            delay = retry_after
        else:
            delay = self._backoff(retry)
        log.info(
            "HTTP %s from %s %s; retry %d of %d in %.2fs",
            response.status_code,
            response.request.method,
            response.request.url.path,
            retry + 1,
            self.max_retries,
            delay,
        )
        return delay

    def after_error(self, error: httpx.TransportError, retry: int) -> float | None:
        """Seconds to wait before retry number ``retry`` after a transport failure, or None."""
        if retry >= self.max_retries or not isinstance(error, _RETRYABLE_ERRORS):
            return None
        delay = self._backoff(retry)
        log.info(
            "%s: %s; retry %d of %d in %.2fs",
            type(error).__name__,
            error,
            retry + 1,
            self.max_retries,
            delay,
        )
        return delay
