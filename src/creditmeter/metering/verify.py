"""Metering's part of ``creditmeter verify``: usage events agree with the journal transactions that
debited them, and the held balance equals the active holds."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from creditmeter.kit.credits import format_credits
from creditmeter.ledger.models import Balance, JournalTransaction, Posting
from creditmeter.ledger.verify import Check, Mismatch
from creditmeter.metering.models import Hold, UsageEvent


def events_match_journal(session: Session, orgs: list[str]) -> list[Mismatch]:
    """Each usage transaction's consumption postings sum to the credits of the events it carries.
    Two grouped reads, whatever the number of transactions (each row names its organization, so no
    statement ever lists transaction ids)."""
    journal: dict[int, int] = {}
    owners: dict[int, str] = {}
    for txn, org, total in session.execute(
        select(
            JournalTransaction.id,
            JournalTransaction.organization_id,
            func.sum(Posting.amount_micros),
        )
        .join(Posting, Posting.transaction_id == JournalTransaction.id)
        .where(
            JournalTransaction.organization_id.in_(orgs),
            JournalTransaction.kind == "usage",
            Posting.account.like("consumption:%"),
        )
        .group_by(JournalTransaction.id, JournalTransaction.organization_id)
    ):
        journal[int(txn)] = int(total or 0)
        owners[int(txn)] = org
    events: dict[int, int] = {}
    for event_txn, org, total in session.execute(
        select(
            UsageEvent.transaction_id,
            UsageEvent.organization_id,
            func.sum(UsageEvent.credits_micros),
        )
        .where(UsageEvent.organization_id.in_(orgs), UsageEvent.transaction_id.is_not(None))
        .group_by(UsageEvent.transaction_id, UsageEvent.organization_id)
    ):
        if event_txn is not None:
            events[int(event_txn)] = events.get(int(event_txn), 0) + int(total or 0)
            owners.setdefault(int(event_txn), org)
    out = []
    for txn_id in sorted(set(journal) | set(events)):
        want, got = events.get(txn_id, 0), journal.get(txn_id, 0)
        if want != got:
            out.append(
                Mismatch(
                    "usage-events",
                    owners.get(txn_id, "?"),
                    f"journal transaction txn_{txn_id}",
                    f"consumption of {format_credits(want)} (its events)",
                    format_credits(got),
                )
            )
    return out


def held_matches_holds(session: Session, orgs: list[str]) -> list[Mismatch]:
    """Each balance's held credits equal the credits of its active holds."""
    active: dict[tuple[str, str], int] = defaultdict(int)
    for org, env, micros in session.execute(
        select(Hold.organization_id, Hold.environment, func.sum(Hold.credits_micros))
        .where(Hold.organization_id.in_(orgs), Hold.status == "active")
        .group_by(Hold.organization_id, Hold.environment)
    ):
        active[(org, env)] = int(micros)
    out = []
    for org, env, held in session.execute(
        select(Balance.organization_id, Balance.environment, Balance.held_micros).where(
            Balance.organization_id.in_(orgs)
        )
    ):
        if held != active[(org, env)]:
            out.append(
                Mismatch(
                    "holds",
                    org,
                    f"{env} held",
                    format_credits(active[(org, env)]),
                    format_credits(held),
                )
            )
    return out


CHECKS: tuple[Check, ...] = (events_match_journal, held_matches_holds)
