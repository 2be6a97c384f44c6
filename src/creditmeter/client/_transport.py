"""What both clients set up the same way: headers and constructor checks."""

from __future__ import annotations

from importlib import metadata

import httpx

from creditmeter.client._retry import RetryPolicy

#: Seconds an attempt may take (connect, write, wait, read) unless told otherwise.
DEFAULT_TIMEOUT = 10.0


def _version() -> str:
    try:
        return metadata.version("creditmeter")
    except metadata.PackageNotFoundError:
        return "0"


def default_headers(api_key: str) -> dict[str, str]:
    """Authentication and content negotiation sent with every request."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key must be a non-empty string, e.g. 'cm_live_…'")
    return {
        "Authorization": f"Bearer {api_key.strip()}",
        "Accept": "application/json, application/problem+json",
        "User-Agent": f"creditmeter-python/{_version()}",
    }


def settings(
    base_url: str, timeout: float | httpx.Timeout, max_retries: int, backoff: float
) -> tuple[httpx.Timeout, RetryPolicy]:
    """Check the shared constructor arguments; a float timeout is converted, not rejected."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(
            f"base_url must be an http(s) URL, e.g. 'https://credits.example.com', not {base_url!r}"
        )
    return (
        timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
        RetryPolicy(max_retries, backoff),
    )
