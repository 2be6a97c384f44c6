"""Members' choice of e-mails: which event types of the e-mailed ones, or none at all.

A member without a row (or with ``event_types`` None) gets the defaults: every type of the catalog
with ``EventType.emailed``. Preferences only ever *remove* messages: they filter what the member's
place would bring them (an owner or admin's messages, or an alert rule that names them); they never
add a type that is not e-mailed or a message their role is not sent.

Every member e-mailed gets an unsubscribe link: a random token (``secrets.token_urlsafe``), created
with the member's row the first time a message is queued for them (:func:`tokens_for`), so the link
works without signing in. Following it sets ``unsubscribed``; nothing else is e-mailed to them by
events or :func:`creditmeter.notify.email.queue_direct` until an admin turns it off again.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.errors import InvalidRequest, NotFound
from creditmeter.notify import catalog
from creditmeter.notify.models import NotificationPreference
from creditmeter.orgs.models import Member

#: The longest token :func:`new_token` makes is 43 characters; anything longer names nothing.
_TOKEN_MAX = 64


class MemberNotFound(NotFound):
    code = "member_not_found"


class UnknownUnsubscribeToken(NotFound):
    code = "unknown_unsubscribe_token"


def emailed_types() -> list[str]:
    """The event types members may choose (and get by default), in catalog order."""
    return [name for name, kind in catalog.CATALOG.items() if kind.emailed]


def wants(event_types: list[str] | None, unsubscribed: bool | None, type_: str) -> bool:
    """Whether a member with these preferences (None: no row, the defaults) is sent ``type_``."""
    if unsubscribed:
        return False
    chosen = emailed_types() if event_types is None else event_types
    return type_ in chosen


def check_event_types(values: Iterable[str]) -> list[str]:
    """The chosen types without duplicates, in catalog order; a name that is not an e-mailed type
    of the catalog is a 422 ``unknown_event_type`` naming each bad entry."""
    values = list(values)
    allowed = emailed_types()
    errors = [
        {
            "field": f"event_types[{i}]",
            "type": "unknown_event_type",
            "message": f"{value!r} is not an e-mailed event type; choose among {', '.join(allowed)}",
        }
        for i, value in enumerate(values)
        if value not in allowed
    ]
    if errors:
        raise InvalidRequest(
            "; ".join(e["message"] for e in errors), code="unknown_event_type", errors=errors
        )
    return [name for name in allowed if name in values]


@dataclass(frozen=True)
class PreferenceView:
    member_id: str
    email: str
    role: str
    #: As set; None: the defaults.
    event_types: list[str] | None
    #: What the member is sent now: ``event_types`` or the defaults, empty when unsubscribed.
    effective_event_types: list[str]
    unsubscribed: bool
    updated_at: datetime | None


def _member(session: Session, org_id: str, member_id: str) -> Member:
    member = session.get(Member, member_id) if 0 < len(member_id) <= 40 else None
    if member is None or member.organization_id != org_id:
        raise MemberNotFound(f"member {member_id} not found")
    return member


def _view(member: Member, row: NotificationPreference | None) -> PreferenceView:
    event_types = row.event_types if row else None
    unsubscribed = bool(row and row.unsubscribed)
    effective = [t for t in emailed_types() if wants(event_types, unsubscribed, t)]
    return PreferenceView(
        member.id,
        member.email,
        member.role,
        event_types,
        effective,
        unsubscribed,
        row.updated_at if row else None,
    )


def get(session: Session, org_id: str, member_id: str) -> PreferenceView:
    """A member's preferences (the defaults when never set); 404 ``member_not_found`` for a member
    of another organization. Reads only: the token is not created here."""
    member = _member(session, org_id, member_id)
    return _view(member, session.get(NotificationPreference, member.id))


def _insert(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(NotificationPreference)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def set_preferences(
    session: Session,
    org_id: str,
    member_id: str,
    *,
    event_types: list[str] | None,
    unsubscribed: bool,
    now: datetime,
) -> PreferenceView:
    """Replace a member's preferences (one upsert; the token, once made, never changes)."""
    member = _member(session, org_id, member_id)
    chosen = None if event_types is None else check_event_types(event_types)
    stmt = _insert(session).values(
        member_id=member.id,
        event_types=chosen,
        unsubscribed=unsubscribed,
        unsubscribe_token=new_token(),
        updated_at=now,
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["member_id"],
            set_={"event_types": chosen, "unsubscribed": unsubscribed, "updated_at": now},
        )
    )
    row = session.get(NotificationPreference, member.id, populate_existing=True)
    return _view(member, row)


def tokens_for(session: Session, member_ids: Iterable[str], now: datetime) -> dict[str, str]:
    """The unsubscribe token of each member, creating the rows (defaults) of those without one in
    one statement. Two transactions creating the same row keep the first (``ON CONFLICT``)."""
    wanted = sorted(set(member_ids))
    if not wanted:
        return {}
    pref = NotificationPreference

    def known() -> dict[str, str]:
        rows = session.execute(
            select(pref.member_id, pref.unsubscribe_token).where(pref.member_id.in_(wanted))
        )
        return {r.member_id: r.unsubscribe_token for r in rows}

    tokens = known()
    missing = [m for m in wanted if m not in tokens]
    if missing:
        rows = [
            {
                "member_id": m,
                "event_types": None,
                "unsubscribed": False,
                "unsubscribe_token": new_token(),
                "updated_at": now,
            }
            for m in missing
        ]
        session.execute(_insert(session).values(rows).on_conflict_do_nothing())
        tokens = known()
    return tokens


def unsubscribe(session: Session, token: str, now: datetime) -> Member:
    """Unsubscribe the member whose link carries ``token`` from every e-mail (idempotent); 404
    ``unknown_unsubscribe_token`` for a token that names no one."""
    row = None
    if 0 < len(token) <= _TOKEN_MAX and token.isascii() and token.isprintable():
        row = session.scalars(
            select(NotificationPreference).where(NotificationPreference.unsubscribe_token == token)
        ).first()
    member = session.get(Member, row.member_id) if row else None
    if row is None or member is None:
        raise UnknownUnsubscribeToken(
            "this unsubscribe link is not valid (it may have been copied incompletely)"
        )
    if not row.unsubscribed:
        row.unsubscribed = True
        row.updated_at = now
        session.flush()
    return member
