"""One source of the current time, timezone-aware UTC, that tests and operators can set."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

_lock = threading.Lock()
_frozen: datetime | None = None


def now() -> datetime:
    """The current time in UTC (or the time a test froze)."""
    frozen = _frozen
    return frozen if frozen is not None else datetime.now(UTC)


def ensure_utc(value: datetime) -> datetime:
    """Reject naive datetimes; convert aware ones to UTC."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamps must carry a time zone (RFC 3339, e.g. 2026-01-31T00:00:00Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError(f"timestamp {value.isoformat()} is out of range in UTC") from exc


@contextmanager
def frozen_at(moment: datetime) -> Iterator[None]:
    """Make ``now()`` return ``moment`` inside the block (tests, ``--as-of`` runs)."""
    global _frozen  # noqa: PLW0603
    with _lock:
        previous, _frozen = _frozen, ensure_utc(moment)
    try:
        yield
    finally:
        with _lock:
            _frozen = previous
