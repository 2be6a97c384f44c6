"""E-mail: who is told of an event, the messages queued for them, and the outbox of messages that
``notify.smtp`` sends.

Design note. :func:`emails_for` runs inside :func:`creditmeter.notify.events.publish`, in the
transaction of the change the event reports, so a message exists exactly when its cause committed.
It writes one ``emails`` row per recipient (bodies rendered now by ``notify.email_render``, with
the event's data as published) and one ``email_send`` job per row, with one statement each.

- **Who.** Events of a type with ``EventType.emailed`` and an organization. ``alert.*`` go to the
  rule's ``recipients`` or, when it names none, to the owners and admins; every other e-mailed type
  to the owners and admins. A member's preferences (``notify.preferences``) can only remove a
  message; an address a rule names that is not a member is always sent (the rule chose it).
- **Once.** ``dedupe_key`` is ``event:<event id>:<address>`` (unique): an event fans out once.
- **Test environment** messages are sent too, their subject starting with ``[test]``.
- **Unsubscribe.** Every message to a member carries their link (``/v1/unsubscribe/<token>``) in
  the body and, when sent, in ``List-Unsubscribe``; a non-member named by a rule has no token: their
  message says which rule names them and who can remove them.
- **Attachments** are stored by reference (``{"kind": "invoice_pdf", "id": …}``) and rendered when
  sent by :data:`ATTACHMENTS`, which the worker fills: notify sits below billing and imports none
  of it.
- **Sending** (:func:`send_email_job`, the worker's ``email_send`` handler; the SMTP side is
  ``notify.smtp``). Statuses: ``queued`` → ``sent``; ``failed`` after the job's last attempt;
  ``held`` when the worker has no SMTP server (kept, listed by the API) until :func:`release_held`
  queues them again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from creditmeter.config import Settings
from creditmeter.errors import NotFound
from creditmeter.kit import clock, outbox
from creditmeter.kit.db import Database
from creditmeter.kit.ids import new_id
from creditmeter.kit.pagination import decode_cursor
from creditmeter.notify import catalog, preferences, smtp
from creditmeter.notify.email_render import ALERT_TYPES, Rendered, one_line, render
from creditmeter.notify.models import AlertRule, Email, NotificationEvent, NotificationPreference
from creditmeter.orgs.models import Member, Organization

EMAIL_SEND = "email_send"
MAX_ATTEMPTS = 8
QUEUED, SENT, FAILED, HELD = "queued", "sent", "failed", "held"
STATUSES = (QUEUED, SENT, FAILED, HELD)
#: Roles sent an organization's e-mails (and an alert's, when its rule names no one).
NOTIFIED_ROLES = ("owner", "admin")
#: The e-mailed types whose message attaches the invoice's PDF (``data["invoice_id"]``).
INVOICE_TYPES = frozenset({"invoice.issued", "invoice.past_due"})

#: Attachment kind -> ``(session, id) -> (filename, bytes)``, called when a message is sent (in a
#: read transaction). Filled by the layer that can render them (the worker registers billing's
#: invoice PDF as ``invoice_pdf``); a message whose kind is missing fails and is retried.
ATTACHMENTS: dict[str, Callable[[Session, str], tuple[str, bytes]]] = {}


class EmailNotFound(NotFound):
    code = "email_not_found"


@dataclass(frozen=True)
class Recipient:
    address: str
    #: None: an address an alert rule names that is no member (no unsubscribe token).
    member_id: str | None
    #: Why they receive it, as the footer says.
    reason: str


def emails_for(session: Session, event: NotificationEvent, now: datetime) -> None:
    """Queue the e-mails of ``event`` for the recipients who want it, in the caller's transaction
    (rows and jobs with one statement each; nothing for a type that is not e-mailed)."""
    kind = catalog.CATALOG.get(event.type)
    if event.organization_id is None or kind is None or not kind.emailed:
        return
    org = session.get(Organization, event.organization_id)
    if org is None:
        return
    rule = _rule(session, event)
    recipients = _recipients(session, event, org.name, rule)
    if not recipients:
        return
    tokens = preferences.tokens_for(session, [r.member_id for r in recipients if r.member_id], now)
    public_url = Settings.from_env().public_url
    attachments = (
        [{"kind": "invoice_pdf", "id": str(event.data["invoice_id"])}]
        if event.type in INVOICE_TYPES
        else []
    )
    rows = []
    for r in recipients:
        token = tokens.get(r.member_id) if r.member_id else None
        unsubscribe = f"{public_url}/v1/unsubscribe/{token}" if token else None
        message = render(event, org.name, r.reason, unsubscribe, public_url)
        rows.append(
            _row(
                event.organization_id,
                event.environment,
                event.id,
                r.address,
                message,
                f"event:{event.id}:{r.address}",
                attachments,
                now,
            )
        )
    _queue(session, rows, now)


def _rule(session: Session, event: NotificationEvent) -> AlertRule | None:
    if event.type not in ALERT_TYPES:
        return None
    rule_id = (event.data.get("alert") or {}).get("id")
    rule = session.get(AlertRule, rule_id) if isinstance(rule_id, str) else None
    return rule if rule is not None and rule.organization_id == event.organization_id else None


def _recipients(
    session: Session, event: NotificationEvent, org_name: str, rule: AlertRule | None
) -> list[Recipient]:
    """Who gets ``event``: the rule's addresses or the owners and admins, filtered by the members'
    preferences; one entry per address."""
    pref = NotificationPreference
    members = {
        m.email: m
        for m in session.execute(
            select(Member.id, Member.email, Member.role, pref.event_types, pref.unsubscribed)
            .outerjoin(pref, pref.member_id == Member.id)
            .where(Member.organization_id == event.organization_id)
            .order_by(Member.id)
        )
    }
    named = sorted({a.strip().lower() for a in (rule.recipients if rule else []) if a.strip()})
    if named:
        assert rule is not None
        label = rule.name or rule.type
        reasons = dict.fromkeys(named, f"the alert rule “{label}” of {org_name} names this address")
    else:
        reasons = {
            m.email: f"you are {'an owner' if m.role == 'owner' else 'an admin'} of {org_name}"
            for m in members.values()
            if m.role in NOTIFIED_ROLES
        }
    found = []
    for address, reason in sorted(reasons.items()):
        member = members.get(address)
        if member is None:
            found.append(Recipient(address, None, reason))
        elif preferences.wants(member.event_types, member.unsubscribed, event.type):
            found.append(Recipient(address, member.id, reason))
    return found


def queue_direct(
    session: Session,
    *,
    organization_id: str | None,
    environment: str | None,
    to: Sequence[str],
    subject: str,
    text: str,
    html: str,
    dedupe_key: str,
    now: datetime,
    attachments: list[dict[str, str]] | None = None,
) -> list[str]:
    """Queue a message that is not a catalog event (a disabled webhook endpoint, …) to ``to``, in
    the caller's transaction. Each row's key is ``<dedupe_key>:<address>``: queuing the same key
    again adds nothing. Members of the organization who unsubscribed are skipped; the others get
    ``List-Unsubscribe`` when sent. The subject and bodies are sent as given. Returns the ids of
    the messages added."""
    addresses = sorted({a.strip().lower() for a in to if a.strip()})
    if organization_id is not None and addresses:
        pref = NotificationPreference
        rows = session.execute(
            select(Member.id, Member.email, pref.unsubscribed)
            .outerjoin(pref, pref.member_id == Member.id)
            .where(Member.organization_id == organization_id, Member.email.in_(addresses))
        ).all()
        quiet = {r.email for r in rows if r.unsubscribed}
        addresses = [a for a in addresses if a not in quiet]
        preferences.tokens_for(session, [r.id for r in rows if r.email not in quiet], now)
    message = Rendered(one_line(subject), text, html)
    return _queue(
        session,
        [
            _row(
                organization_id,
                environment,
                None,
                address,
                message,
                f"{dedupe_key}:{address}",
                attachments or [],
                now,
            )
            for address in addresses
        ],
        now,
    )


def _row(
    organization_id: str | None,
    environment: str | None,
    event_id: str | None,
    address: str,
    message: Rendered,
    dedupe_key: str,
    attachments: list[dict[str, str]],
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": new_id("em"),
        "organization_id": organization_id,
        "environment": environment,
        "event_id": event_id,
        "dedupe_key": dedupe_key[:300],
        "to_address": address[:320],
        "subject": message.subject,
        "text_body": message.text,
        "html_body": message.html,
        "attachments": attachments,
        "status": QUEUED,
        "attempts": 0,
        "last_error": None,
        "created_at": now,
        "sent_at": None,
    }


def _insert(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(Email)


def _queue(session: Session, rows: list[dict[str, Any]], now: datetime) -> list[str]:
    """Insert the rows whose key is new (one statement, in key order) and a job for each."""
    if not rows:
        return []
    rows.sort(key=lambda r: r["dedupe_key"])
    stmt = _insert(session).values(rows).on_conflict_do_nothing(index_elements=["dedupe_key"])
    added = set(session.scalars(stmt.returning(Email.id)))
    new = [r for r in rows if r["id"] in added]
    outbox.enqueue(
        session, [_job(r["id"], r["organization_id"], r["environment"], now) for r in new], now=now
    )
    return [r["id"] for r in new]


def _job(email_id: str, organization_id: str | None, environment: str | None, now: datetime) -> Any:
    return outbox.NewJob(
        EMAIL_SEND,
        run_at=now,
        organization_id=organization_id,
        environment=environment,
        payload={"email_id": email_id},
        dedupe_key=f"email:{email_id}",
        max_attempts=MAX_ATTEMPTS,
    )


def release_held(session: Session, now: datetime, limit: int = 1000) -> int:
    """Queue up to ``limit`` held messages again (one UPDATE and one enqueue), for a worker that
    now has an SMTP server. Returns how many."""
    held = select(Email.id).where(Email.status == HELD).order_by(Email.id).limit(limit)
    rows = session.execute(
        update(Email)
        .where(Email.id.in_(held), Email.status == HELD)
        .values(status=QUEUED)
        .returning(Email.id, Email.organization_id, Email.environment)
    ).all()
    outbox.enqueue(
        session, [_job(r.id, r.organization_id, r.environment, now) for r in rows], now=now
    )
    return len(rows)


def send_email_job(db: Database, settings: Settings, job: outbox.Claimed) -> str:
    """The ``email_send`` handler, run outside any transaction: send the message over SMTP and
    record the outcome in one short write. Already ``sent``: nothing (a job can run twice). No SMTP
    server configured: ``held`` (kept, listed by the API; not an error). A failed send (or
    attachment): ``attempts`` and ``last_error`` recorded, ``failed`` on the job's last attempt,
    and the error raised so the outbox retries with backoff. Returns ``sent``, ``held``,
    ``already sent`` or ``missing``."""
    email_id = str(job.payload.get("email_id", ""))
    with db.read() as session:
        row = session.get(Email, email_id)
        if row is None:
            return "missing"
        if row.status == SENT:
            return "already sent"
    if settings.smtp_host is None:
        with db.write() as session:
            session.execute(
                update(Email).where(Email.id == email_id, Email.status != SENT).values(status=HELD)
            )
        return "held"
    try:
        with db.read() as session:
            outgoing = _outgoing(session, settings, email_id)
        smtp.deliver(settings, smtp.build_message(settings, outgoing))
    except Exception as exc:
        _record_failure(db, email_id, f"{type(exc).__name__}: {exc}", job)
        raise
    with db.write() as session:
        session.execute(
            update(Email)
            .where(Email.id == email_id)
            .values(
                status=SENT,
                sent_at=clock.now(),
                attempts=Email.attempts + 1,
                last_error=None,
            )
        )
    return "sent"


def _record_failure(db: Database, email_id: str, error: str, job: outbox.Claimed) -> None:
    last = job.attempts >= job.max_attempts
    with db.write() as session:
        session.execute(
            update(Email)
            .where(Email.id == email_id, Email.status != SENT)
            .values(
                attempts=Email.attempts + 1,
                last_error=error[:500],
                status=FAILED if last else QUEUED,
            )
        )


def _outgoing(session: Session, settings: Settings, email_id: str) -> smtp.Outgoing:
    row = session.get(Email, email_id)
    assert row is not None
    files = []
    for ref in row.attachments:
        render = ATTACHMENTS.get(ref["kind"])
        if render is None:
            raise LookupError(f"no renderer registered for attachments of kind {ref['kind']!r}")
        files.append(render(session, ref["id"]))
    token = None
    if row.organization_id is not None:
        token = session.scalar(
            select(NotificationPreference.unsubscribe_token)
            .join(Member, Member.id == NotificationPreference.member_id)
            .where(Member.organization_id == row.organization_id, Member.email == row.to_address)
        )
    return smtp.Outgoing(
        row.id,
        row.to_address,
        row.subject,
        row.text_body,
        row.html_body,
        files,
        f"{settings.public_url}/v1/unsubscribe/{token}" if token else None,
    )


def list_emails(
    session: Session,
    *,
    organization_id: str | None,
    environment: str | None,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Email], str | None]:
    """One page of messages, newest first (all organizations' with ``organization_id`` None), and
    the id to continue after."""
    query = select(Email).order_by(Email.id.desc()).limit(limit + 1)
    if organization_id is not None:
        query = query.where(Email.organization_id == organization_id)
    if environment is not None:
        query = query.where(Email.environment == environment)
    if status is not None:
        query = query.where(Email.status == status)
    after = decode_cursor(cursor, "em_")
    if after:
        query = query.where(Email.id < after)
    rows = list(session.scalars(query))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def get_email(session: Session, email_id: str, organization_id: str | None) -> Email:
    """One message; 404 ``email_not_found`` when it is another organization's (or none)."""
    row = session.get(Email, email_id) if 0 < len(email_id) <= 40 else None
    if row is None or (organization_id is not None and row.organization_id != organization_id):
        raise EmailNotFound(f"e-mail {email_id} not found")
    return row
