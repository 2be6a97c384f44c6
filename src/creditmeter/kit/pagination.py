"""Cursor pagination: opaque cursors over a strictly ordered key (ids are time-sortable)."""

from __future__ import annotations

import base64
import binascii

from creditmeter.errors import InvalidRequest

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(
            "cursor is not valid; pass the next_cursor value of a previous page unchanged",
            code="invalid_cursor",
        ) from exc


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}", code="invalid_limit")
    return limit
