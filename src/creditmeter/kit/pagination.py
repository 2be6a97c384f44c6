"""Cursor pagination: opaque cursors over a strictly ordered key (ids are time-sortable)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from creditmeter.errors import InvalidRequest

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]+")


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def page_of(data: Sequence[object], next_key: str | None) -> dict[str, object]:
    """A page of a list endpoint: its items and, when more follow, the cursor after ``next_key``
    (the key of the page's last item)."""
    return {
        "data": list(data),
        "has_more": next_key is not None,
        "next_cursor": encode_cursor(next_key) if next_key else None,
    }


def decode_cursor(cursor: str | None, prefix: str = "") -> str | None:
    """The key a cursor points after. Anything that ``encode_cursor`` did not produce (not URL-safe
    base64, not a printable ASCII id, or an id of another kind than ``prefix``) is a 422, never a
    silent first page and never a database error."""
    if not cursor:
        return None
    value = None
    if _CURSOR_RE.fullmatch(cursor):
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            value = base64.urlsafe_b64decode(padded.encode()).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            value = None
    if not value or not value.isprintable() or not value.startswith(prefix):
        raise invalid_cursor()
    return value


def invalid_cursor() -> InvalidRequest:
    """The 422 for a cursor that no page handed out."""
    return InvalidRequest(
        "cursor is not valid; pass the next_cursor value of a previous page unchanged",
        code="invalid_cursor",
        errors=[
            {
                "field": "cursor",
                "type": "invalid_cursor",
                "message": "pass the next_cursor value of a previous page unchanged",
            }
        ],
    )


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}", code="invalid_limit")
    return limit
