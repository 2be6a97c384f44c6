"""Prefixed, time-sortable identifiers (``org_01JD...``): a ULID after a noun prefix.

Sorting ids sorts by creation time (to the millisecond), which makes them good pagination cursors.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid() -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, idx = divmod(value, 32)
        chars.append(_ALPHABET[idx])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    return f"{prefix}_{ulid()}"
