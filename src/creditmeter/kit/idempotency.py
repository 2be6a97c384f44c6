"""Idempotency keys for creating requests: the first result is stored in the same transaction as the
change it describes, behind a unique constraint; a retry with the same key and body replays it; the same
key with a different body is a conflict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, UniqueConstraint, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from creditmeter.errors import Conflict, InvalidRequest
from creditmeter.kit.db import Base, BigIntPK, UTCDateTime

MAX_KEY_LENGTH = 255


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: dict[str, Any]


def request_fingerprint(payload: Any) -> str:
    """A stable digest of a request body (key order does not matter)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters, e.g. a UUID",
            code="invalid_idempotency_key",
        )
    return key


def lookup(session: Session, scope: str, key: str, fingerprint: str) -> StoredResponse | None:
    """The stored response for this key, or None. A different body under the same key is a 409."""
    row = session.execute(
        select(
            IdempotencyRecord.request_hash,
            IdempotencyRecord.status_code,
            IdempotencyRecord.response,
        ).where(IdempotencyRecord.scope == scope, IdempotencyRecord.key == key)
    ).first()
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise Conflict(
            "this Idempotency-Key was already used with a different request body; "
            "use a new key for a new request",
            code="idempotency_key_reused",
        )
    return StoredResponse(row.status_code, row.response)


def store(
    session: Session,
    scope: str,
    key: str,
    fingerprint: str,
    status_code: int,
    body: dict[str, Any],
    at: datetime,
) -> None:
    """Record the response in the caller's transaction (a concurrent twin fails on the unique key)."""
    session.execute(
        insert(IdempotencyRecord).values(
            scope=scope,
            key=key,
            request_hash=fingerprint,
            status_code=status_code,
            response=body,
            created_at=at,
        )
    )
